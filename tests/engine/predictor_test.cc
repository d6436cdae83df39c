// The predictor sparsity end to end through Transformer (`--sparsity predictor`), and
// PredictorTrainer: a cut that selects every neuron is bit-identical to the dense bundle path (in
// DRAM and streamed at the minimum budget); a higher cut computes fewer neurons and counts its
// precision; a damaged or foreign predictor file is refused; a damaged bundle is Corruption naming
// the layer; a predictor trained on a ReLU synth model predicts firing neurons far better than
// chance on held-out tokens.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>

#include "engine/activation_counter.h"
#include "engine/generator.h"
#include "engine/predictor_trainer.h"
#include "engine/session.h"
#include "layout/checkpoint.h"
#include "layout/ffn_predictor.h"
#include "layout/repack.h"
#include "layout/store_reader.h"
#include "layout/synth.h"
#include "tests/test_util.h"

namespace flashlm::engine {
namespace {

namespace fs = std::filesystem;

std::string MakeStore(const testing::ScratchDir& dir, layout::Activation act,
                      layout::BundleKind kind, const std::string& name, float fire_rate = 0) {
  layout::SynthOptions so;
  so.config = *layout::SynthShape("tiny");
  so.config.activation = act;
  so.dtype = layout::DType::kQ8_0;
  so.seed = 5;
  so.fire_rate = fire_rate;
  so.out_path = (dir / (name + ".gguf")).string();
  EXPECT_TRUE(layout::SynthesizeGguf(so).ok());
  auto src = layout::OpenCheckpoint(so.out_path);
  EXPECT_TRUE(src.ok());
  layout::RepackOptions ro;
  ro.bundle_kind = kind;
  ro.alignment_bytes = 512;
  const std::string store = (dir / name).string();
  EXPECT_TRUE(layout::Repack(**src, store, ro).ok());
  return store;
}

// A predictor of random weights for `store` (every score finite), written to its default place.
void WriteRandomPredictor(const std::string& store, uint32_t rank) {
  auto reader = layout::StoreReader::Open(store);
  ASSERT_TRUE(reader.ok()) << reader.status().ToString();
  const layout::ModelConfig c = (*reader)->config();
  layout::FfnPredictor p;
  p.store_identity = (*reader)->identity();
  p.dim = c.dim;
  p.hidden = c.hidden_dim;
  p.rank = rank;
  p.relu = c.activation == layout::Activation::kRelu;
  p.fire_fraction = p.relu ? 0 : 0.1f;
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0, 1);
  for (uint32_t l = 0; l < c.n_layers; ++l) {
    layout::FfnPredictorLayer pl;
    pl.fire_cut = p.relu ? 0 : 0.01f;
    for (uint64_t i = 0; i < uint64_t{rank} * c.dim; ++i) pl.a.push_back(normal(rng) * 0.2f);
    for (uint64_t i = 0; i < uint64_t{c.hidden_dim} * rank; ++i) pl.b.push_back(normal(rng) * 0.5f);
    for (uint32_t i = 0; i < c.hidden_dim; ++i) pl.bias.push_back(normal(rng));
    p.layers.push_back(std::move(pl));
  }
  ASSERT_TRUE(
      layout::SaveFfnPredictor(p, store + "/" + std::string(layout::kFfnPredictorFileName)).ok());
}

struct Trace {
  std::vector<int32_t> ids;
  std::vector<float> logits;
  double computed = 0;
  PredictorStats predictor;
};

Result<Trace> Greedy(const std::string& store, FfnSparsity sparsity, uint32_t steps,
                     uint64_t budget = 0, float cut = 0.0f) {
  SessionOptions o;
  o.threads = 2;
  o.budgeted = true;
  o.budget_bytes = budget;
  o.transformer.max_context = 64;
  o.transformer.sparsity = sparsity;
  o.transformer.predictor_cut = cut;
  o.streaming.chunk_bundles = 16;
  ASSIGN_OR_RETURN(std::unique_ptr<Session> s, Session::Open(store, o));
  Trace t;
  std::vector<int32_t> ids = {1, 7, 42, 99, 5, 300, 12};
  std::span<const float> logits;
  ASSIGN_OR_RETURN(logits, Prefill(s->model(), ids, 0));
  s->ResetStats();
  for (uint32_t i = 0; i < steps; ++i) {
    t.logits.insert(t.logits.end(), logits.begin(), logits.end());
    ids.push_back(
        static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin()));
    ASSIGN_OR_RETURN(logits, s->model().Forward(std::span<const int32_t>(&ids.back(), 1),
                                                static_cast<uint32_t>(ids.size() - 1)));
  }
  t.logits.insert(t.logits.end(), logits.begin(), logits.end());
  t.ids = ids;
  t.computed = s->stats().ffn_computed_fraction();
  t.predictor = s->stats().predictor;
  return t;
}

void ExpectIdentical(const Trace& a, const Trace& b, const std::string& what) {
  EXPECT_EQ(a.ids, b.ids) << what;
  ASSERT_EQ(a.logits.size(), b.logits.size()) << what;
  EXPECT_EQ(0, std::memcmp(a.logits.data(), b.logits.data(), a.logits.size() * sizeof(float)))
      << what << ": logits differ";
}

uint64_t MinimumBudget(const std::string& store, FfnSparsity sparsity) {
  SessionOptions probe;
  probe.threads = 2;
  probe.transformer.max_context = 64;
  probe.transformer.sparsity = sparsity;
  probe.streaming.chunk_bundles = 16;
  probe.budgeted = true;
  probe.budget_bytes = 1;
  auto refused = Session::Open(store, probe);
  EXPECT_FALSE(refused.ok());
  const std::string msg(refused.status().message());
  const size_t at = msg.find("minimum of ");
  EXPECT_NE(at, std::string::npos) << msg;
  return at == std::string::npos ? 0 : std::stoull(msg.substr(at + 11));
}

// Cut 0: every neuron is selected for every token, and the bundles are accumulated in the same
// position order as the dense path: bit-identical, for both bundle kinds, in DRAM and streamed.
TEST(PredictorSparsityTest, CutZeroIsBitIdenticalToDense) {
  testing::ScratchDir dir;
  for (layout::BundleKind kind :
       {layout::BundleKind::kGateUpDown, layout::BundleKind::kGateSeparate}) {
    const std::string name = kind == layout::BundleKind::kGateUpDown ? "together" : "separate";
    const std::string store = MakeStore(dir, layout::Activation::kSilu, kind, name);
    WriteRandomPredictor(store, 8);
    auto dense = Greedy(store, FfnSparsity::kDense, 16);
    auto all = Greedy(store, FfnSparsity::kPredictor, 16, 0, 0.0f);
    ASSERT_TRUE(dense.ok()) << dense.status().ToString();
    ASSERT_TRUE(all.ok()) << all.status().ToString();
    ExpectIdentical(*dense, *all, name + ", unlimited");
    EXPECT_EQ(all->computed, 1.0);
    EXPECT_GT(all->predictor.flops, 0u);
    const uint64_t minimum = MinimumBudget(store, FfnSparsity::kPredictor);
    ASSERT_GT(minimum, 0u);
    auto all_min = Greedy(store, FfnSparsity::kPredictor, 16, minimum, 0.0f);
    ASSERT_TRUE(all_min.ok()) << all_min.status().ToString();
    ExpectIdentical(*dense, *all_min, name + ", minimum budget");
  }
}

// A higher cut reads fewer neurons, moves the output, and counts the predictor's cost and
// precision.
TEST(PredictorSparsityTest, HigherCutComputesFewerNeurons) {
  testing::ScratchDir dir;
  const std::string store =
      MakeStore(dir, layout::Activation::kSilu, layout::BundleKind::kGateUpDown, "m");
  WriteRandomPredictor(store, 8);
  auto dense = Greedy(store, FfnSparsity::kDense, 8);
  auto cut = Greedy(store, FfnSparsity::kPredictor, 8, 0, 0.6f);
  ASSERT_TRUE(dense.ok());
  ASSERT_TRUE(cut.ok()) << cut.status().ToString();
  EXPECT_LT(cut->computed, 0.9);
  EXPECT_GT(cut->computed, 0.05);
  EXPECT_NE(0, std::memcmp(dense->logits.data(), cut->logits.data(),
                           dense->logits.size() * sizeof(float)));
  const PredictorStats& p = cut->predictor;
  EXPECT_GT(p.pairs_computed, 0u);
  EXPECT_LE(p.pairs_fired, p.pairs_computed);
  EXPECT_GT(p.flops_share(), 0.0);
  EXPECT_LT(p.flops_share(), 1.0);
  EXPECT_GT(p.bytes, 0u);
  // Cut 1: nothing is read.
  auto none = Greedy(store, FfnSparsity::kPredictor, 2, 0, 1.0f);
  ASSERT_TRUE(none.ok());
  EXPECT_EQ(none->computed, 0.0);
}

TEST(PredictorSparsityTest, DamagedOrForeignPredictorIsRefused) {
  testing::ScratchDir dir;
  const std::string store =
      MakeStore(dir, layout::Activation::kSilu, layout::BundleKind::kGateUpDown, "a");
  auto missing = Greedy(store, FfnSparsity::kPredictor, 1);
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  WriteRandomPredictor(store, 4);
  const fs::path file = fs::path(store) / std::string(layout::kFfnPredictorFileName);
  testing::FlipByte(file, 200, 0x04);
  auto damaged = Greedy(store, FfnSparsity::kPredictor, 1);
  ASSERT_FALSE(damaged.ok());
  EXPECT_EQ(damaged.status().code(), StatusCode::kCorruption) << damaged.status().ToString();
  // Another store of the same shape (another seed is another catalog).
  WriteRandomPredictor(store, 4);
  layout::SynthOptions so;
  so.config = *layout::SynthShape("tiny");
  so.config.activation = layout::Activation::kSilu;
  so.dtype = layout::DType::kQ8_0;
  so.seed = 6;
  so.out_path = (dir / "b.gguf").string();
  ASSERT_TRUE(layout::SynthesizeGguf(so).ok());
  auto src = layout::OpenCheckpoint(so.out_path);
  ASSERT_TRUE(src.ok());
  const std::string other = (dir / "b").string();
  ASSERT_TRUE(layout::Repack(**src, other, layout::RepackOptions()).ok());
  fs::copy_file(file, fs::path(other) / std::string(layout::kFfnPredictorFileName));
  auto foreign = Greedy(other, FfnSparsity::kPredictor, 1);
  ASSERT_FALSE(foreign.ok());
  EXPECT_EQ(foreign.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(foreign.status().message().find("another store"), std::string::npos);
}

// A damaged bundle read in predictor mode is Corruption naming the layer.
TEST(PredictorSparsityTest, CorruptBundleIsNamed) {
  testing::ScratchDir dir;
  const std::string store =
      MakeStore(dir, layout::Activation::kSilu, layout::BundleKind::kGateUpDown, "m");
  WriteRandomPredictor(store, 4);
  uint64_t offset = 0;
  {
    auto reader = layout::StoreReader::Open(store);
    ASSERT_TRUE(reader.ok());
    auto ext = (*reader)->BundleExtents(1, 5, 1);
    ASSERT_TRUE(ext.ok());
    offset = (*ext)[0].offset_bytes + 3;
  }
  testing::FlipByte(fs::path(store) / "data-00000.bin", offset, 0x40);
  SessionOptions o;
  o.threads = 2;
  o.transformer.max_context = 64;
  o.transformer.sparsity = FfnSparsity::kPredictor;
  o.transformer.predictor_cut = 0.0f;  // every bundle, bundle 5 of layer 1 included
  o.streaming.chunk_bundles = 16;
  o.budgeted = true;
  o.budget_bytes = MinimumBudget(store, FfnSparsity::kPredictor);
  auto s = Session::Open(store, o);
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  auto r = (*s)->model().Forward(std::vector<int32_t>{1}, 0);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kCorruption) << r.status().ToString();
  EXPECT_NE(r.status().ToString().find("FFN layer 1"), std::string::npos) << r.status().ToString();
}

// Trained on a ReLU synth model (fires = gate x > 0, a linear rule of x), a full-rank predictor
// finds the firing neurons on held-out tokens far better than chance.
TEST(PredictorTrainerTest, LearnsReluFiringBetterThanChance) {
  testing::ScratchDir dir;
  const std::string store =
      MakeStore(dir, layout::Activation::kRelu, layout::BundleKind::kGateUpDown, "r", 0.2f);
  SessionOptions o;
  o.threads = 2;
  o.transformer.max_context = 128;
  o.transformer.sparsity = FfnSparsity::kDense;
  o.transformer.observe_ffn = true;
  auto s = Session::Open(store, o);
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  const layout::ModelConfig c = (*s)->model().config();
  auto trainer = PredictorTrainer::Create(c.n_layers, c.dim, c.hidden_dim, true, 100000);
  ASSERT_TRUE(trainer.ok());
  std::mt19937 rng(3);
  std::vector<int32_t> tokens(512);
  for (int32_t& t : tokens) t = static_cast<int32_t>(rng() % c.vocab_size);
  ASSERT_TRUE((*s)->model().set_ffn_observer(trainer->get()).ok());
  ASSERT_TRUE(ForwardInWindows((*s)->model(), tokens, 128).ok());
  ASSERT_EQ((*trainer)->tokens(), 512u);
  PredictorTrainOptions to;
  to.rank = c.dim;
  to.epochs = 60;
  to.learning_rate = 5e-3f;
  PredictorTrainer::Report report;
  auto p = (*trainer)->Train(to, (*s)->pool(), &report);
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  ASSERT_EQ(p->layers.size(), c.n_layers);
  for (uint32_t l = 0; l < c.n_layers; ++l) {
    const PredictorQuality& q = report.layers[l].back();  // cut 0.5
    ASSERT_EQ(q.cut, 0.5f);
    // Chance: precision = the fire rate (about 0.2) at any recall.
    EXPECT_GT(q.recall, 0.6) << "layer " << l;
    EXPECT_GT(q.precision, 0.6) << "layer " << l;
  }
  // Too little data is refused.
  auto few = PredictorTrainer::Create(c.n_layers, c.dim, c.hidden_dim, true, 2);
  ASSERT_TRUE(few.ok());
  ASSERT_TRUE((*s)->model().set_ffn_observer(few->get()).ok());
  ASSERT_TRUE(ForwardInWindows((*s)->model(), tokens, 128).ok());
  EXPECT_EQ((*few)->Train(to, (*s)->pool(), nullptr).status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace flashlm::engine
