// FfnObserver (engine/transformer.h) and ActivationCounter: the observer sees the FFN hidden
// vectors the scalar reference computes; the firing rules count what a direct count gives.
#include "engine/activation_counter.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "engine/weights.h"
#include "tests/engine/test_models.h"

namespace flashlm::engine {
namespace {

using engine::testing::RandomWeights;
using engine::testing::ReferenceModel;
using engine::testing::ToCheckpoint;

layout::ModelConfig TinyConfig(layout::Activation act) {
  layout::ModelConfig c;
  c.dim = 32;
  c.hidden_dim = 50;
  c.n_layers = 3;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.head_dim = 8;
  c.vocab_size = 40;
  c.max_seq_len = 32;
  c.tied_embeddings = true;
  c.activation = act;
  return c;
}

// Records every call: (layer, n_tokens, h).
struct Recorder : FfnObserver {
  struct Call {
    uint32_t layer, n_tokens;
    std::vector<float> h;
  };
  std::vector<Call> calls;
  void OnFfnActivations(uint32_t layer, std::span<const float> h, uint32_t n_tokens) override {
    calls.push_back({layer, n_tokens, std::vector<float>(h.begin(), h.end())});
  }
};

class ObserverTest : public ::testing::TestWithParam<layout::Activation> {};

// A batch of 5 tokens then one more: per Forward one call per layer, in layer order, with
// n_tokens x hidden_dim values equal to the scalar reference's act(gate x) * (up x).
TEST_P(ObserverTest, SeesTheReferenceHiddenVectors) {
  const layout::ModelConfig c = TinyConfig(GetParam());
  auto w = RandomWeights(c, 5);
  auto ck = ToCheckpoint(w, layout::DType::kF32);
  auto store = DramWeightStore::Load(*ck);
  ASSERT_TRUE(store.ok()) << store.status().ToString();
  ThreadPool pool(2);
  TransformerOptions opt;
  opt.max_batch = 8;
  auto model = std::move(Transformer::Create(**store, pool, opt)).value();
  Recorder rec;
  model->set_ffn_observer(&rec);

  const std::vector<int32_t> tokens = {1, 7, 39, 0, 22, 13};
  ASSERT_TRUE(model->Forward(std::span(tokens).first(5), 0).ok());
  ASSERT_TRUE(model->Forward(std::span(tokens).subspan(5, 1), 5).ok());
  ASSERT_EQ(rec.calls.size(), 2u * c.n_layers);
  for (uint32_t i = 0; i < rec.calls.size(); ++i) {
    EXPECT_EQ(rec.calls[i].layer, i % c.n_layers);
    const uint32_t n = i < c.n_layers ? 5 : 1;
    EXPECT_EQ(rec.calls[i].n_tokens, n);
    EXPECT_EQ(rec.calls[i].h.size(), uint64_t{n} * c.hidden_dim);
  }

  ReferenceModel ref(w);
  std::vector<std::vector<float>> ref_h(c.n_layers);
  ref.on_ffn = [&](uint32_t layer, const std::vector<float>& h) { ref_h[layer] = h; };
  size_t zeros = 0;
  for (uint32_t t = 0; t < tokens.size(); ++t) {
    ref.Forward(tokens[t], static_cast<int>(t));
    for (uint32_t l = 0; l < c.n_layers; ++l) {
      const Recorder::Call& call = t < 5 ? rec.calls[l] : rec.calls[c.n_layers + l];
      const uint32_t row = t < 5 ? t : 0;
      for (uint32_t i = 0; i < c.hidden_dim; ++i) {
        const float got = call.h[uint64_t{row} * c.hidden_dim + i];
        ASSERT_NEAR(got, ref_h[l][i], 1e-4f + 1e-4f * std::fabs(ref_h[l][i]))
            << "token " << t << " layer " << l << " neuron " << i;
        // ReLU zeros are exact in both (relu(g) * u with g < 0).
        if (ref_h[l][i] == 0.0f) {
          EXPECT_EQ(got, 0.0f);
          ++zeros;
        }
      }
    }
  }
  if (GetParam() == layout::Activation::kRelu) EXPECT_GT(zeros, 0u);

  // Unset: no more calls.
  model->set_ffn_observer(nullptr);
  ASSERT_TRUE(model->Forward(std::span(tokens).first(2), 0).ok());
  EXPECT_EQ(rec.calls.size(), 2u * c.n_layers);
}

INSTANTIATE_TEST_SUITE_P(Activations, ObserverTest,
                         ::testing::Values(layout::Activation::kSilu, layout::Activation::kRelu));

std::unique_ptr<ActivationCounter> Counter(uint32_t layers, uint32_t hidden, FiringOptions o) {
  auto c = ActivationCounter::Create(layers, hidden, o);
  EXPECT_TRUE(c.ok()) << c.status().ToString();
  return c.ok() ? std::move(*c) : nullptr;
}

std::vector<uint64_t> Counts(const ActivationCounter& c, uint32_t layer) {
  auto s = c.counts(layer);
  return std::vector<uint64_t>(s.begin(), s.end());
}

TEST(ActivationCounterTest, NonZeroRule) {
  FiringOptions o;
  o.rule = FiringRule::kNonZero;
  auto c = Counter(2, 4, o);
  ASSERT_NE(c, nullptr);
  const std::vector<float> h = {0,      1, -2, 0,  //
                                0,      0, 3,  0,  //
                                1e-30f, 0, 0,  0};
  c->OnFfnActivations(1, h, 3);
  EXPECT_EQ(Counts(*c, 1), (std::vector<uint64_t>{1, 1, 2, 0}));
  EXPECT_EQ(Counts(*c, 0), (std::vector<uint64_t>{0, 0, 0, 0}));
  EXPECT_EQ(c->tokens(1), 3u);
  EXPECT_EQ(c->tokens(0), 0u);
  // Layer 0 saw nothing: no frequencies to give.
  EXPECT_EQ(c->Frequencies().status().code(), StatusCode::kFailedPrecondition);
  c->OnFfnActivations(0, std::span(h).first(4), 1);
  auto f = c->Frequencies();
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  ASSERT_EQ(f->layers.size(), 2u);
  EXPECT_EQ(f->layers[0], (std::vector<float>{0, 1, 1, 0}));
  EXPECT_EQ(f->layers[1], (std::vector<float>{1.0f / 3, 1.0f / 3, 2.0f / 3, 0}));
}

TEST(ActivationCounterTest, ThresholdRuleIsStrictOnMagnitude) {
  FiringOptions o;
  o.rule = FiringRule::kThreshold;
  o.threshold = 1.0f;
  auto c = Counter(1, 4, o);
  ASSERT_NE(c, nullptr);
  const std::vector<float> h = {1, -1.5f, 0.5f, 2, -1, 0, -3, 1.0001f};
  c->OnFfnActivations(0, h, 2);
  EXPECT_EQ(Counts(*c, 0), (std::vector<uint64_t>{0, 1, 1, 2}));
}

TEST(ActivationCounterTest, TopFractionPicksLargestMagnitudesLowerIndexOnTies) {
  FiringOptions o;
  o.rule = FiringRule::kTopFraction;
  o.top_fraction = 0.5;
  auto c = Counter(1, 4, o);
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(c->top_k(), 2u);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const std::vector<float> h = {0.1f, -5, 3,  2,   // {1, 2}
                                1,    1,  1,  1,   // ties: {0, 1}
                                nan,  0,  0,  0,   // NaN never fires; zeros by index: {1, 2}
                                0,    0,  -1, 0};  // {2, 0}
  c->OnFfnActivations(0, h, 4);
  EXPECT_EQ(Counts(*c, 0), (std::vector<uint64_t>{2, 3, 3, 0}));
  auto f = c->Frequencies();
  ASSERT_TRUE(f.ok());
  EXPECT_EQ(f->layers[0], (std::vector<float>{0.5f, 0.75f, 0.75f, 0}));
}

TEST(ActivationCounterTest, TopFractionRoundsToWholeNeurons) {
  auto k = [](uint32_t hidden, double fraction) {
    FiringOptions o;
    o.top_fraction = fraction;
    auto c = ActivationCounter::Create(1, hidden, o);
    return c.ok() ? (*c)->top_k() : 0u;
  };
  EXPECT_EQ(k(172, 0.2), 34u);  // 34.4
  EXPECT_EQ(k(100, 0.2), 20u);
  EXPECT_EQ(k(10, 0.25), 3u);    // 2.5 rounds away from zero
  EXPECT_EQ(k(100, 0.001), 1u);  // at least one
  EXPECT_EQ(k(100, 1.0), 100u);
}

// Random vectors, several layers and batch sizes: counts equal a direct count by sorting.
TEST(ActivationCounterTest, TopFractionMatchesDirectCount) {
  const uint32_t layers = 3, hidden = 37;
  FiringOptions o;
  o.top_fraction = 0.3;  // k = 11
  auto c = Counter(layers, hidden, o);
  ASSERT_NE(c, nullptr);
  ASSERT_EQ(c->top_k(), 11u);
  std::mt19937 rng(3);
  std::normal_distribution<float> nd;
  std::vector<uint64_t> want(uint64_t{layers} * hidden, 0);
  for (int call = 0; call < 30; ++call) {
    const uint32_t layer = call % layers, n = 1 + call % 4;
    std::vector<float> h(uint64_t{n} * hidden);
    for (float& v : h) v = nd(rng);
    if (call % 5 == 0) h[3] = h[4] = 0.5f;  // a tie now and then
    c->OnFfnActivations(layer, h, n);
    for (uint32_t t = 0; t < n; ++t) {
      std::vector<uint32_t> idx(hidden);
      std::iota(idx.begin(), idx.end(), 0u);
      const float* row = h.data() + uint64_t{t} * hidden;
      std::stable_sort(idx.begin(), idx.end(), [row](uint32_t a, uint32_t b) {
        return std::fabs(row[a]) > std::fabs(row[b]);
      });
      for (uint32_t j = 0; j < 11; ++j) ++want[uint64_t{layer} * hidden + idx[j]];
    }
  }
  for (uint32_t l = 0; l < layers; ++l) {
    std::vector<uint64_t> w(want.begin() + l * hidden, want.begin() + (l + 1) * hidden);
    EXPECT_EQ(Counts(*c, l), w) << "layer " << l;
    // Exactly k neurons fire per token.
    EXPECT_EQ(std::accumulate(w.begin(), w.end(), uint64_t{0}), 11 * c->tokens(l));
  }
  auto f = c->Frequencies();
  ASSERT_TRUE(f.ok());
  for (const auto& layer : f->layers) {
    ASSERT_EQ(layer.size(), hidden);
    for (float v : layer) {
      EXPECT_GE(v, 0.0f);
      EXPECT_LE(v, 1.0f);
    }
  }
}

TEST(ActivationCounterTest, BadOptionsAreRefused) {
  auto code = [](uint32_t layers, uint32_t hidden, FiringOptions o) {
    return ActivationCounter::Create(layers, hidden, o).status().code();
  };
  FiringOptions top;
  EXPECT_EQ(code(0, 4, top), StatusCode::kInvalidArgument);
  EXPECT_EQ(code(1, 0, top), StatusCode::kInvalidArgument);
  for (double f : {0.0, -0.1, 1.01, std::nan("")}) {
    top.top_fraction = f;
    EXPECT_EQ(code(1, 4, top), StatusCode::kInvalidArgument) << f;
  }
  FiringOptions thr;
  thr.rule = FiringRule::kThreshold;
  for (float t : {-1.0f, std::numeric_limits<float>::infinity(), std::nanf("")}) {
    thr.threshold = t;
    EXPECT_EQ(code(1, 4, thr), StatusCode::kInvalidArgument) << t;
  }
  thr.threshold = 0.0f;
  EXPECT_TRUE(ActivationCounter::Create(1, 4, thr).ok());
}

TEST(ActivationCounterTest, DefaultRuleFollowsTheModelsActivation) {
  layout::ModelConfig c = TinyConfig(layout::Activation::kRelu);
  EXPECT_EQ(DefaultFiringOptions(c).rule, FiringRule::kNonZero);
  c.activation = layout::Activation::kSilu;
  EXPECT_EQ(DefaultFiringOptions(c).rule, FiringRule::kTopFraction);
  EXPECT_EQ(DefaultFiringOptions(c).top_fraction, 0.2);
}

// ForwardInWindows runs each window from position 0 and every token once: what the observer sees
// equals running the windows by hand, token by token (batching changes only rounding).
TEST(ForwardInWindowsTest, WindowsRestartAtPositionZero) {
  const layout::ModelConfig c = TinyConfig(layout::Activation::kSilu);
  auto w = RandomWeights(c, 9);
  auto ck = ToCheckpoint(w, layout::DType::kF32);
  auto store = DramWeightStore::Load(*ck);
  ASSERT_TRUE(store.ok());
  ThreadPool pool(1);
  TransformerOptions opt;
  opt.max_batch = 3;
  opt.max_context = 16;
  auto model = std::move(Transformer::Create(**store, pool, opt)).value();
  std::vector<int32_t> tokens(23);
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<int32_t>((i * 11 + 1) % 40);

  Recorder windows;
  model->set_ffn_observer(&windows);
  ASSERT_TRUE(ForwardInWindows(*model, tokens, 8).ok());
  Recorder by_hand;
  model->set_ffn_observer(&by_hand);
  for (size_t i = 0; i < tokens.size(); ++i) {
    ASSERT_TRUE(model->Forward(std::span(tokens).subspan(i, 1), static_cast<uint32_t>(i % 8)).ok());
  }
  // Flatten each into (layer -> token rows in order).
  auto rows = [&](const Recorder& r) {
    std::vector<std::vector<float>> out(c.n_layers);
    for (const auto& call : r.calls) {
      out[call.layer].insert(out[call.layer].end(), call.h.begin(), call.h.end());
    }
    return out;
  };
  auto a = rows(windows), b = rows(by_hand);
  for (uint32_t l = 0; l < c.n_layers; ++l) {
    ASSERT_EQ(a[l].size(), tokens.size() * c.hidden_dim);
    ASSERT_EQ(b[l].size(), a[l].size());
    for (size_t i = 0; i < a[l].size(); ++i) {
      ASSERT_NEAR(a[l][i], b[l][i], 1e-4f + 1e-4f * std::fabs(b[l][i]))
          << "layer " << l << " " << i;
    }
  }
  // Batches of at most max_batch within a window: 8 = 3 + 3 + 2, then 8, then 7 = 3 + 3 + 1.
  std::vector<uint32_t> sizes;
  for (const auto& call : windows.calls) {
    if (call.layer == 0) sizes.push_back(call.n_tokens);
  }
  EXPECT_EQ(sizes, (std::vector<uint32_t>{3, 3, 2, 3, 3, 2, 3, 3, 1}));

  EXPECT_EQ(ForwardInWindows(*model, {}, 8).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(ForwardInWindows(*model, tokens, 0).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(ForwardInWindows(*model, tokens, 17).code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace flashlm::engine
