#include "engine/transformer.h"

#include <gtest/gtest.h>

#include <cmath>
#include <fstream>

#include "engine/weights.h"
#include "tests/engine/test_models.h"
#include "tests/test_util.h"

namespace flashlm::engine {
namespace {

using engine::testing::RandomWeights;
using engine::testing::ReferenceModel;
using engine::testing::SmallConfig;
using engine::testing::ToCheckpoint;
using layout::DType;

struct Param {
  DType dtype;
  bool gqa, tied;
  layout::Activation act;
  uint32_t threads, batch;
};

class TransformerVsReference : public ::testing::TestWithParam<Param> {};

// Prefill in batches then decode; every position's logits must match the scalar reference
// (to f32 rounding for f32, within quantisation error for f16/q8_0/q4_0, where the reference
// runs on the dequantised weights).
TEST_P(TransformerVsReference, LogitsMatch) {
  const Param p = GetParam();
  auto w = RandomWeights(SmallConfig(p.gqa, p.tied, p.act), 11);
  auto ck = ToCheckpoint(w, p.dtype);
  // The reference sees exactly the weights the engine has (dequantised).
  auto deq = [&](std::vector<float>& v, uint64_t cols) {
    std::vector<std::byte> tmp(layout::RowBytes(p.dtype, cols));
    for (uint64_t r = 0; r < v.size() / cols; ++r) {
      std::span<float> row(v.data() + r * cols, cols);
      ASSERT_TRUE(layout::QuantizeRow(p.dtype, row, tmp).ok());
      ASSERT_TRUE(layout::DequantizeRow(p.dtype, tmp, row).ok());
    }
  };
  const auto& c = w.c;
  deq(w.emb, c.dim);
  deq(w.wq, c.dim), deq(w.wk, c.dim), deq(w.wv, c.dim), deq(w.wo, c.n_heads * c.head_dim);
  deq(w.w1, c.dim), deq(w.w3, c.dim), deq(w.w2, c.hidden_dim);
  deq(w.wcls, c.dim);
  if (c.tied_embeddings) w.wcls = w.emb;

  auto store = DramWeightStore::Load(*ck);
  ASSERT_TRUE(store.ok()) << store.status().ToString();
  ThreadPool pool(p.threads);
  TransformerOptions opt;
  opt.max_batch = p.batch;
  opt.all_logits = true;
  auto model = std::move(Transformer::Create(**store, pool, opt)).value();
  ReferenceModel ref(w);
  std::vector<int32_t> tokens = {1, 5, 17, 66, 0, 33, 33, 8, 21, 2, 40, 9};
  const double tol = p.dtype == DType::kF32 ? 2e-4 : p.dtype == DType::kF16 ? 2e-2 : 0.04;
  uint32_t pos = 0;
  const uint32_t prefill = 7;
  while (pos < tokens.size()) {
    const uint32_t n = pos < prefill ? std::min(p.batch, prefill - pos) : 1;
    auto logits = model->Forward(std::span<const int32_t>(tokens).subspan(pos, n), pos);
    ASSERT_TRUE(logits.ok()) << logits.status().ToString();
    ASSERT_EQ(logits->size(), uint64_t{n} * c.vocab_size);
    for (uint32_t t = 0; t < n; ++t) {
      std::vector<float> want = ref.Forward(tokens[pos + t], pos + t);
      double max_err = 0, scale = 0;
      for (uint32_t v = 0; v < c.vocab_size; ++v) {
        max_err = std::max(max_err, std::fabs(double((*logits)[t * c.vocab_size + v]) - want[v]));
        scale = std::max(scale, std::fabs(double(want[v])));
      }
      // Block types also round the activations to 8 bits (q8) before each product: bound the
      // error relative to the logits' magnitude.
      EXPECT_LT(max_err, p.dtype == DType::kQ8_0 || p.dtype == DType::kQ4_0 ? tol * scale : tol)
          << "position " << pos + t << ", logit scale " << scale;
    }
    pos += n;
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, TransformerVsReference,
    ::testing::Values(Param{DType::kF32, false, false, layout::Activation::kSilu, 1, 4},
                      Param{DType::kF32, true, true, layout::Activation::kSilu, 2, 3},
                      Param{DType::kF32, true, false, layout::Activation::kRelu, 2, 7},
                      Param{DType::kF16, true, true, layout::Activation::kSilu, 2, 4},
                      Param{DType::kQ8_0, true, false, layout::Activation::kSilu, 2, 5},
                      Param{DType::kQ4_0, false, true, layout::Activation::kSilu, 3, 2}));

TEST(TransformerTest, RejectsBadInput) {
  auto w = RandomWeights(SmallConfig(true, true, layout::Activation::kSilu), 3);
  auto ck = ToCheckpoint(w, DType::kF32);
  auto store = std::move(DramWeightStore::Load(*ck)).value();
  ThreadPool pool(1);
  TransformerOptions opt;
  opt.max_context = 1000;
  EXPECT_EQ(Transformer::Create(*store, pool, opt).status().code(), StatusCode::kInvalidArgument);
  opt.max_context = 8;
  opt.max_batch = 4;
  auto model = std::move(Transformer::Create(*store, pool, opt)).value();
  std::vector<int32_t> five = {1, 2, 3, 4, 5}, bad = {67}, one = {1};
  EXPECT_FALSE(model->Forward(five, 0).ok());  // batch too large
  EXPECT_FALSE(model->Forward(bad, 0).ok());   // token out of range
  EXPECT_FALSE(model->Forward(one, 8).ok());   // beyond the context
  EXPECT_FALSE(model->Forward(std::span<const int32_t>(), 0).ok());
  EXPECT_FALSE(model->Forward(one, 1).ok());  // a gap: position 0 was never run
  std::vector<int32_t> seven = {1, 2, 3, 4};
  EXPECT_TRUE(model->Forward(seven, 0).ok());
  EXPECT_TRUE(model->Forward(std::span<const int32_t>(seven).first(3), 4).ok());
  EXPECT_TRUE(model->Forward(one, 7).ok());  // the last position of the context
}

}  // namespace
}  // namespace flashlm::engine
