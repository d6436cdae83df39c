#include "engine/transformer.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <fstream>

#include "engine/paged_kv_cache.h"
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
      const bool q8_activations = p.dtype != DType::kF32 && p.dtype != DType::kF16;
      EXPECT_LT(max_err, q8_activations ? tol * scale : tol)
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
                      Param{DType::kQ4_0, false, true, layout::Activation::kSilu, 3, 2},
                      Param{DType::kQ4_K, true, false, layout::Activation::kSilu, 2, 3},
                      Param{DType::kQ6_K, false, true, layout::Activation::kSilu, 3, 4}));

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


// Logits of `tokens` run alone at positions 0.. in a fresh single-sequence model.
std::vector<float> AloneLogits(WeightStore& store, ThreadPool& pool, std::vector<int32_t> tokens) {
  TransformerOptions opt;
  opt.max_context = 16;
  auto model = std::move(Transformer::Create(store, pool, opt)).value();
  auto logits = model->Forward(tokens, 0);
  EXPECT_TRUE(logits.ok()) << logits.status().ToString();
  return logits.ok() ? std::vector<float>(logits->begin(), logits->end()) : std::vector<float>();
}

double MaxDiff(std::span<const float> a, std::span<const float> b) {
  EXPECT_EQ(a.size(), b.size());
  double d = 0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) {
    d = std::max(d, std::fabs(double(a[i]) - double(b[i])));
  }
  return d;
}

// One Forward carries tokens of several sequences at their own positions (a server's decode
// step): each token's logits are those of its sequence run alone.
TEST(TransformerTest, TokensOfSeveralSequencesInOneBatch) {
  auto w = RandomWeights(SmallConfig(true, false, layout::Activation::kSilu), 21);
  auto ck = ToCheckpoint(w, DType::kF32);
  auto store = std::move(DramWeightStore::Load(*ck)).value();
  ThreadPool pool(2);
  TransformerOptions opt;
  opt.max_context = 16;
  opt.max_sequences = 3;
  auto model = std::move(Transformer::Create(*store, pool, opt)).value();
  const std::vector<int32_t> a = {1, 5, 17, 66, 0}, b = {1, 33, 8}, c = {1, 2};
  ASSERT_TRUE(model->Forward(a, 0, 0).ok());
  ASSERT_TRUE(model->Forward(b, 0, 2).ok());
  ASSERT_TRUE(model->Forward(c, 0, 1).ok());
  EXPECT_EQ(model->kv_cache().length(0), 5u);
  EXPECT_EQ(model->kv_cache().length(2), 3u);
  // Decode step: the next token of each sequence, interleaved, two of sequence 1.
  const int32_t toks[] = {9, 40, 21, 22};
  const uint32_t pos[] = {5, 2, 3, 3};
  const uint32_t seq[] = {0, 1, 2, 1};
  const uint32_t want_rows[] = {0, 2, 3};
  TokenBatch batch{toks, pos, seq, want_rows};
  auto logits = model->Forward(batch);
  ASSERT_TRUE(logits.ok()) << logits.status().ToString();
  const uint32_t vocab = w.c.vocab_size;
  ASSERT_EQ(logits->size(), 3u * vocab);
  std::vector<int32_t> a2 = a, b2 = b, c2 = c;
  a2.push_back(9);
  b2.push_back(21);
  c2.push_back(40);
  c2.push_back(22);
  const std::vector<float> la = AloneLogits(*store, pool, a2), lb = AloneLogits(*store, pool, b2),
                           lc = AloneLogits(*store, pool, c2);
  EXPECT_LT(MaxDiff(logits->subspan(0, vocab), la), 1e-4);
  EXPECT_LT(MaxDiff(logits->subspan(vocab, vocab), lb), 1e-4);
  EXPECT_LT(MaxDiff(logits->subspan(2 * vocab, vocab), lc), 1e-4);
  EXPECT_EQ(model->kv_cache().length(0), 6u);
  EXPECT_EQ(model->kv_cache().length(1), 4u);
  EXPECT_EQ(model->kv_cache().length(2), 4u);
  // A position below the length rewinds the sequence: as if the later tokens never ran.
  const std::vector<int32_t> other = {7, 7};
  auto rewound = model->Forward(other, 1, 2);
  ASSERT_TRUE(rewound.ok());
  EXPECT_LT(MaxDiff(*rewound, AloneLogits(*store, pool, {1, 7, 7})), 1e-4);
  EXPECT_EQ(model->kv_cache().length(2), 3u);
}

TEST(TransformerTest, RejectsMalformedBatches) {
  auto w = RandomWeights(SmallConfig(true, true, layout::Activation::kSilu), 4);
  auto ck = ToCheckpoint(w, DType::kF32);
  auto store = std::move(DramWeightStore::Load(*ck)).value();
  ThreadPool pool(1);
  TransformerOptions opt;
  opt.max_context = 8;
  opt.max_sequences = 2;
  auto model = std::move(Transformer::Create(*store, pool, opt)).value();
  const int32_t t2[] = {1, 2};
  auto check = [&](std::span<const uint32_t> pos, std::span<const uint32_t> seq,
                   std::span<const uint32_t> rows) {
    TokenBatch b{t2, pos, seq, rows};
    return model->Forward(b).status().code();
  };
  const uint32_t p01[] = {0, 1}, p02[] = {0, 2}, p00[] = {0, 0}, p1[] = {1}, s00[] = {0, 0},
                 s01[] = {0, 1}, s02[] = {0, 2}, r10[] = {1, 0}, r2[] = {2};
  EXPECT_EQ(check(p02, s00, {}), StatusCode::kInvalidArgument);  // a gap within a sequence
  EXPECT_EQ(check(p00, s00, {}), StatusCode::kInvalidArgument);  // the same position twice
  EXPECT_EQ(check(p01, s02, {}), StatusCode::kInvalidArgument);  // sequence out of range
  EXPECT_EQ(check(p1, s00, {}), StatusCode::kInvalidArgument);   // sizes disagree
  EXPECT_EQ(check(p01, s00, r10), StatusCode::kInvalidArgument);  // logits rows not increasing
  EXPECT_EQ(check(p01, s00, r2), StatusCode::kInvalidArgument);   // row beyond the batch
  EXPECT_EQ(check(p00, s01, s01), StatusCode::kOk);  // one token each of two sequences
  EXPECT_EQ(check(p1, {}, {}), StatusCode::kInvalidArgument);
}

// Keeps the top `n` positions by probability (all when n is 0).
class TopN final : public AttentionPolicy {
 public:
  explicit TopN(uint32_t n) : n_(n) {}
  uint32_t Select(uint32_t, uint32_t, std::span<const float> probs,
                  std::span<uint32_t> selected) const override {
    const uint32_t len = static_cast<uint32_t>(probs.size());
    const uint32_t keep = n_ == 0 ? len : std::min(n_, len);
    std::vector<uint32_t> order(len);
    for (uint32_t i = 0; i < len; ++i) order[i] = i;
    std::stable_sort(order.begin(), order.end(),
                     [&](uint32_t a, uint32_t b) { return probs[a] > probs[b]; });
    std::sort(order.begin(), order.begin() + keep);
    std::copy_n(order.begin(), keep, selected.begin());
    return keep;
  }

 private:
  uint32_t n_;
};

// The selection phase: a policy that keeps every position changes nothing (bit for bit); one
// that keeps fewer changes the output, and keeping the top 1 weighs one V row only.
TEST(TransformerTest, AttentionPolicyChoosesWhichValuesAreRead) {
  auto w = RandomWeights(SmallConfig(false, false, layout::Activation::kSilu), 8);
  auto ck = ToCheckpoint(w, DType::kF32);
  auto store = std::move(DramWeightStore::Load(*ck)).value();
  ThreadPool pool(2);
  TransformerOptions opt;
  opt.max_context = 16;
  const std::vector<int32_t> tokens = {1, 5, 17, 66, 0, 33, 33, 8};
  auto run = [&](const AttentionPolicy* policy) {
    auto model = std::move(Transformer::Create(*store, pool, opt)).value();
    model->set_attention_policy(policy);
    auto l = model->Forward(tokens, 0);
    EXPECT_TRUE(l.ok());
    return std::vector<float>(l->begin(), l->end());
  };
  const TopN all(0), top1(1), top4(4);
  const std::vector<float> dense = run(nullptr);
  EXPECT_EQ(run(&all), dense);
  EXPECT_GT(MaxDiff(run(&top1), dense), 1e-3);
  EXPECT_GT(MaxDiff(run(&top4), dense), 1e-6);
  EXPECT_LT(MaxDiff(run(&top4), dense), MaxDiff(run(&top1), dense));
}

// Grouped-query heads: exact attention reads each K and V row once for the heads sharing it
// (Transformer::AttentionGroup, blocks of 64 rows), a policy keeping every position goes head by
// head. Both give the same logits bit for bit, over prompts that cross several blocks, with
// flat and paged (f16) caches, at 1 and 2 threads, in a batch and one token at a time.
TEST(TransformerTest, GroupedQueryHeadsTogetherEqualHeadByHead) {
  layout::ModelConfig config = SmallConfig(/*gqa=*/true, false, layout::Activation::kSilu);
  config.max_seq_len = 160;
  auto w = RandomWeights(config, 21);
  ASSERT_GT(w.c.n_heads / w.c.n_kv_heads, 1u);
  auto ck = ToCheckpoint(w, DType::kF32);
  auto store = std::move(DramWeightStore::Load(*ck)).value();
  std::vector<int32_t> tokens(150);
  for (uint32_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<int32_t>((i * 37 + 5) % 64);
  const TopN all(0);
  for (uint32_t threads : {1u, 2u}) {
    ThreadPool pool(threads);
    for (bool paged : {false, true}) {
      TransformerOptions opt;
      opt.max_context = 160;
      opt.max_batch = 64;
      opt.all_logits = true;
      flashlm::testing::ScratchDir dir;
      KvOptions ko;  // pages of 16 f16 rows, V spilled and read back: runs of 16 positions
      ko.paged = true;
      ko.page_tokens = 16;
      ko.dtype = DType::kF16;
      ko.spill_dir = dir.path().string();
      auto run = [&](const AttentionPolicy* policy, uint32_t batch) {
        std::unique_ptr<PagedKvCache> kv;
        if (paged) {
          auto layout = PagedKvCache::Layout(w.c, opt.max_context, 1, ko);
          EXPECT_TRUE(layout.ok());
          kv = std::move(PagedKvCache::Create(w.c, opt.max_context, 1, ko,
                                              cache::KvPageCache::MinimumPoolBytes(*layout),
                                              storage::BackendKind::kAuto, true))
                   .value();
        }
        auto model = std::move(Transformer::Create(*store, pool, opt, kv.get())).value();
        model->set_attention_policy(policy);
        std::vector<float> out;
        for (uint32_t pos = 0; pos < tokens.size();) {
          const uint32_t n = std::min<uint32_t>(batch, tokens.size() - pos);
          auto l = model->Forward(std::span<const int32_t>(tokens).subspan(pos, n), pos);
          EXPECT_TRUE(l.ok()) << l.status().ToString();
          if (!l.ok()) return out;
          out.insert(out.end(), l->begin(), l->end());
          pos += n;
        }
        return out;
      };
      SCOPED_TRACE(::testing::Message() << threads << " threads, paged " << paged);
      const std::vector<float> grouped = run(nullptr, 64);
      ASSERT_EQ(grouped.size(), tokens.size() * w.c.vocab_size);
      EXPECT_EQ(run(&all, 64), grouped);
      EXPECT_EQ(run(nullptr, 1), run(&all, 1));
    }
  }
}

// What Create allocates is what BytesNeeded says, for every option that changes the buffers.
TEST(TransformerTest, BytesNeededIsWhatCreateAllocates) {
  auto w = RandomWeights(SmallConfig(true, false, layout::Activation::kSilu), 2);
  auto ck = ToCheckpoint(w, DType::kQ8_0);
  auto store = std::move(DramWeightStore::Load(*ck)).value();
  for (uint32_t threads : {1u, 3u}) {
    ThreadPool pool(threads);
    for (bool all_logits : {false, true}) {
      TransformerOptions opt;
      opt.max_context = 20;
      opt.max_batch = 7;
      opt.max_sequences = 3;
      opt.all_logits = all_logits;
      auto model = Transformer::Create(*store, pool, opt);
      ASSERT_TRUE(model.ok());
      EXPECT_EQ((*model)->resident_bytes(),
                Transformer::BytesNeeded(w.c, opt, threads, WeightsShape::Of(*store)));
    }
  }
}

}  // namespace
}  // namespace flashlm::engine
