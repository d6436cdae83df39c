#include "engine/weights.h"

#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <string>
#include <utility>
#include <vector>

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

// What one decode step reads: every tensor as the checkpoint holds it (q8_0 is kept as it is),
// but of the embedding one row, unless the classifier is the embedding (tied).
TEST(WeightStoreTest, DecodeBytesPerTokenCountOneEmbeddingRow) {
  for (bool tied : {false, true}) {
    auto w = RandomWeights(SmallConfig(true, tied, layout::Activation::kSilu), 3);
    auto ck = ToCheckpoint(w, DType::kQ8_0);
    auto store = DramWeightStore::Load(*ck);
    ASSERT_TRUE(store.ok()) << store.status().ToString();
    uint64_t all = 0;
    for (const layout::TensorInfo& t : ck->tensors()) all += t.size_bytes();
    const layout::TensorInfo* embd = ck->FindTensor("token_embd.weight");
    ASSERT_NE(embd, nullptr);
    ASSERT_EQ(ck->FindTensor("output.weight") == nullptr, tied);
    const uint64_t want =
        tied ? all : all - embd->size_bytes() + layout::RowBytes(embd->dtype, embd->cols());
    EXPECT_EQ((*store)->decode_bytes_per_token(), want) << "tied " << tied;
    EXPECT_LE((*store)->decode_bytes_per_token(), (*store)->resident_bytes());
  }
}

TEST(WeightStoreTest, MatricesAreCacheLineAlignedAndKeepTheirDtype) {
  auto w = RandomWeights(SmallConfig(true, false, layout::Activation::kSilu), 2);
  for (DType dtype : {DType::kQ8_0, DType::kBF16}) {
    auto ck = ToCheckpoint(w, dtype);
    auto store = DramWeightStore::Load(*ck);
    ASSERT_TRUE(store.ok()) << store.status().ToString();
    const DType kept = dtype;  // bf16 too: MatMul widens it as it reads (no f32 copy)
    std::vector<MatrixView> all = {(*store)->token_embedding(), (*store)->classifier()};
    for (uint32_t l = 0; l < 2; ++l) {
      auto lw = (*store)->AcquireLayer(l);
      ASSERT_TRUE(lw.ok());
      for (const MatrixView& m : {lw->wq, lw->wk, lw->wv, lw->wo, lw->gate, lw->up, lw->down}) {
        all.push_back(m);
      }
      (*store)->ReleaseLayer(l);
    }
    for (const MatrixView& m : all) {
      EXPECT_EQ(m.dtype, kept);
      EXPECT_EQ(reinterpret_cast<uintptr_t>(m.bytes.data()) % 64, 0u);
      EXPECT_EQ(m.bytes.size(), uint64_t{m.rows} * layout::RowBytes(kept, m.cols));
    }
    // Row 3 of layer 1's down matrix holds the checkpoint's values.
    const layout::TensorInfo* info = ck->FindTensor("blk.1.ffn_down.weight");
    ASSERT_NE(info, nullptr);
    std::vector<float> expect(info->num_values());
    ASSERT_TRUE(ck->ReadTensorF32(*info, expect).ok());
    auto lw = (*store)->AcquireLayer(1);
    ASSERT_TRUE(lw.ok());
    std::vector<float> row(lw->down.cols);
    ASSERT_TRUE(layout::DequantizeRow(kept, lw->down.row(3), row).ok());
    for (uint32_t c = 0; c < lw->down.cols; ++c) {
      ASSERT_EQ(row[c], expect[3 * uint64_t{lw->down.cols} + c]) << c;
    }
    (*store)->ReleaseLayer(1);
  }
}

// An f32, q8_0, q4_0, q4_K or q6_K checkpoint's matrices that only MatMul reads are kept in
// 16-row strips where this build's kernels take them (f32 rows 256 columns wide, hence the
// widths here); the embedding (looked up by row) is not. Each multiplies bit for bit as the
// checkpoint's row-major tensor does.
class WeightStoreStripsTest : public ::testing::TestWithParam<DType> {};

TEST_P(WeightStoreStripsTest, MatricesInStripsMultiplyAsTheCheckpointsRows) {
  const DType dtype = GetParam();
  layout::ModelConfig c = SmallConfig(true, false, layout::Activation::kSilu);
  c.dim = 256;
  c.hidden_dim = 512;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.head_dim = 64;
  c.vocab_size = 80;
  c.n_layers = 2;
  auto w = RandomWeights(c, 2);
  auto ck = ToCheckpoint(w, dtype);
  auto store = DramWeightStore::Load(*ck);
  ASSERT_TRUE(store.ok()) << store.status().ToString();
  EXPECT_FALSE((*store)->token_embedding().strips);
  const bool strips = CanInterleaveStrips(dtype, 16, 256);
  std::vector<std::pair<std::string, MatrixView>> all = {{"output.weight", (*store)->classifier()}};
  for (uint32_t l = 0; l < 2; ++l) {
    auto lw = (*store)->AcquireLayer(l);
    ASSERT_TRUE(lw.ok());
    const std::string p = "blk." + std::to_string(l) + ".";
    all.insert(all.end(), {{p + "attn_q.weight", lw->wq},
                           {p + "attn_k.weight", lw->wk},
                           {p + "attn_v.weight", lw->wv},
                           {p + "attn_output.weight", lw->wo},
                           {p + "ffn_gate.weight", lw->gate},
                           {p + "ffn_up.weight", lw->up},
                           {p + "ffn_down.weight", lw->down}});
    (*store)->ReleaseLayer(l);
  }
  std::mt19937 rng(5);
  ThreadPool pool(2);
  for (const auto& [name, m] : all) {
    SCOPED_TRACE(name);
    EXPECT_EQ(m.dtype, dtype);
    EXPECT_EQ(m.strips, strips);
    const layout::TensorInfo* info = ck->FindTensor(name);
    ASSERT_NE(info, nullptr);
    std::vector<std::byte> raw(info->size_bytes());
    ASSERT_TRUE(ck->ReadTensor(*info, raw).ok());
    const MatrixView plain{dtype, m.rows, m.cols, raw};
    EXPECT_EQ(testing::ProductsDiffer(m, plain, rng, pool), "");
  }
}

INSTANTIATE_TEST_SUITE_P(InterleavedDtypes, WeightStoreStripsTest,
                         ::testing::Values(DType::kF32, DType::kQ8_0, DType::kQ4_0, DType::kQ4_K,
                                           DType::kQ6_K),
                         [](const ::testing::TestParamInfo<DType>& i) {
                           return std::string(layout::DTypeName(i.param));
                         });

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
