#include "engine/weights.h"

#include <gtest/gtest.h>

#include "tests/engine/test_models.h"

namespace flashlm::engine {
namespace {

using engine::testing::RandomWeights;
using engine::testing::SmallConfig;
using engine::testing::ToCheckpoint;
using layout::DType;

TEST(WeightStoreTest, ServesEveryLayerInItsOwnDtype) {
  auto w = RandomWeights(SmallConfig(true, false, layout::Activation::kSilu), 3);
  auto ck = ToCheckpoint(w, DType::kQ8_0);
  auto store = DramWeightStore::Load(*ck);
  ASSERT_TRUE(store.ok()) << store.status().ToString();
  for (uint32_t l = 0; l < 3; ++l) {
    auto lw = (*store)->AcquireLayer(l);
    ASSERT_TRUE(lw.ok());
    EXPECT_EQ(lw->gate.dtype, DType::kQ8_0);
    EXPECT_EQ(lw->down.rows, 48u);
    EXPECT_EQ(lw->down.cols, 100u);
    EXPECT_EQ(lw->down.bytes.size(), 48u * layout::RowBytes(DType::kQ8_0, 100));
    EXPECT_EQ(lw->wk.rows, 16u);  // 2 kv heads x 8
    EXPECT_FLOAT_EQ(lw->attn_norm[5], w.rms_att[l * 48 + 5]);
    (*store)->ReleaseLayer(l);
  }
  EXPECT_FALSE((*store)->AcquireLayer(3).ok());
  EXPECT_NE((*store)->classifier().bytes.data(), (*store)->token_embedding().bytes.data());
}

TEST(WeightStoreTest, MissingTensorAndBadShapeAreErrors) {
  auto w = RandomWeights(SmallConfig(true, false, layout::Activation::kSilu), 3);
  auto ck = ToCheckpoint(w, DType::kF32);
  ck->infos_.erase(ck->infos_.begin() + 2);  // output.weight
  EXPECT_EQ(DramWeightStore::Load(*ck).status().code(), StatusCode::kNotFound);
  auto ck2 = ToCheckpoint(w, DType::kF32);
  ck2->config_.hidden_dim = 99;
  EXPECT_EQ(DramWeightStore::Load(*ck2).status().code(), StatusCode::kCorruption);
}

}  // namespace
}  // namespace flashlm::engine
