// GateCalibrator: the per-layer quantile of |act(gate x)| from its histogram (unit), and end to
// end: thresholds calibrated at a target sparsity S over a text skip about S of the neurons when
// the same text is then run token by token with --sparsity threshold.
#include "engine/gate_calibrator.h"

#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <numeric>

#include "engine/activation_counter.h"
#include "engine/session.h"
#include "layout/checkpoint.h"
#include "layout/ffn_thresholds.h"
#include "layout/repack.h"
#include "layout/store_reader.h"
#include "layout/synth.h"
#include "tests/test_util.h"

namespace flashlm::engine {
namespace {

float Silu(float g) { return g / (1.0f + std::exp(-g)); }

TEST(GateCalibratorTest, RejectsBadShapesTargetsAndEmptyLayers) {
  EXPECT_EQ(GateCalibrator::Create(0, 4, false).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(GateCalibrator::Create(2, 0, false).status().code(), StatusCode::kInvalidArgument);
  auto c = GateCalibrator::Create(2, 4, false);
  ASSERT_TRUE(c.ok());
  for (double bad : {-0.1, 1.0, 1.5, std::nan("")}) {
    EXPECT_EQ((*c)->Thresholds(bad).status().code(), StatusCode::kInvalidArgument) << bad;
  }
  std::vector<float> g = {1, 2, 3, 4};
  (*c)->OnFfnGate(0, g, 1);
  auto cuts = (*c)->Thresholds(0.5);  // layer 1 saw nothing
  EXPECT_EQ(cuts.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(cuts.status().message().find("layer 1"), std::string::npos);
}

// ReLU magnitudes 1..1000 (plus 500 negatives, exact zeros): the cut at S is the S-quantile of
// all 1500 values within one bin (2^(1/128)), at or above it, and the reported sparsity is the
// fraction actually at or below the cut.
TEST(GateCalibratorTest, CutIsTheQuantileWithinOneBin) {
  constexpr uint32_t kHidden = 1500;
  auto c = GateCalibrator::Create(1, kHidden, true);
  ASSERT_TRUE(c.ok());
  std::vector<float> g(kHidden);
  for (uint32_t i = 0; i < 1000; ++i) g[i] = static_cast<float>(i + 1);
  for (uint32_t i = 1000; i < kHidden; ++i) g[i] = -static_cast<float>(i);
  (*c)->OnFfnGate(0, g, 1);
  EXPECT_EQ((*c)->tokens(0), 1u);
  const double bin = std::exp2(1.0 / GateCalibrator::kBinsPerOctave);
  // Target 0: only exact zeros (here the 500 negatives).
  auto zero = (*c)->Thresholds(0.0);
  ASSERT_TRUE(zero.ok());
  EXPECT_EQ((*zero)[0].threshold, 0.0f);
  EXPECT_NEAR((*zero)[0].sparsity, 500.0 / 1500, 1e-12);
  float last = 0;
  for (double target : {0.4, 0.5, 0.7, 0.9}) {
    auto cuts = (*c)->Thresholds(target);
    ASSERT_TRUE(cuts.ok());
    const GateCalibrator::Cut cut = (*cuts)[0];
    // The k-th smallest value, k = ceil(target * 1500): zeros first, then 1, 2, ...
    const double k = std::ceil(target * kHidden);
    const double quantile = k - 500;
    EXPECT_GE(cut.threshold, quantile) << target;
    EXPECT_LE(cut.threshold, quantile * bin * bin) << target;
    double below = 0;
    for (float v : g) below += std::max(v, 0.0f) <= cut.threshold;
    EXPECT_NEAR(cut.sparsity, below / kHidden, 1e-12) << target;
    EXPECT_GE(cut.sparsity, target);
    EXPECT_GT(cut.threshold, last);
    last = cut.threshold;
  }
}

// SiLU: the magnitude is |silu(g)|, so large negative gates (silu -> 0) count as small.
TEST(GateCalibratorTest, SiluUsesTheActivationsMagnitude) {
  auto c = GateCalibrator::Create(1, 4, false);
  ASSERT_TRUE(c.ok());
  std::vector<float> g = {-20.0f, 0.5f, 2.0f, 6.0f};
  (*c)->OnFfnGate(0, g, 1);
  auto cuts = (*c)->Thresholds(0.25);
  ASSERT_TRUE(cuts.ok());
  // The smallest magnitude is |silu(-20)| ~ 4e-8, not 0.5.
  EXPECT_GE((*cuts)[0].threshold, std::fabs(Silu(-20.0f)));
  EXPECT_LT((*cuts)[0].threshold, Silu(0.5f));
  EXPECT_NEAR((*cuts)[0].sparsity, 0.25, 1e-12);
}

// Calibrates `store` over `tokens` at `target`, writes the thresholds, then runs the same tokens
// one at a time (decode: the computed fraction is per token) with --sparsity threshold; returns
// {mean calibrated sparsity, measured skipped fraction}.
std::pair<double, double> CalibrateAndMeasure(const std::string& store,
                                              const std::vector<int32_t>& tokens, double target) {
  SessionOptions o;
  o.threads = 2;
  o.budgeted = true;
  o.budget_bytes = 0;
  o.transformer.max_context = static_cast<uint32_t>(tokens.size());
  o.transformer.max_batch = 16;
  o.transformer.sparsity = FfnSparsity::kDense;
  o.transformer.observe_ffn = true;
  auto dense = Session::Open(store, o);
  EXPECT_TRUE(dense.ok()) << dense.status().ToString();
  if (!dense.ok()) return {-1, -1};
  Transformer& model = (*dense)->model();
  auto cal = GateCalibrator::Create(model.config().n_layers, model.config().hidden_dim,
                                    model.config().activation == layout::Activation::kRelu);
  EXPECT_TRUE(cal.ok());
  EXPECT_TRUE(model.set_ffn_observer(cal->get()).ok());
  EXPECT_TRUE(ForwardInWindows(model, tokens, model.max_context()).ok());
  EXPECT_TRUE(model.set_ffn_observer(nullptr).ok());
  auto cuts = (*cal)->Thresholds(target);
  EXPECT_TRUE(cuts.ok());
  if (!cuts.ok()) return {-1, -1};
  layout::FfnThresholds t;
  t.store_identity = (*dense)->store()->reader().identity();
  t.hidden_dim = model.config().hidden_dim;
  t.target_sparsity = target;
  t.tokens = tokens.size();
  double calibrated = 0;
  for (const auto& cut : *cuts) {
    t.thresholds.push_back(cut.threshold);
    t.calibrated_sparsity.push_back(cut.sparsity);
    calibrated += cut.sparsity / static_cast<double>(cuts->size());
  }
  const std::string file = store + "/cal.json";
  EXPECT_TRUE(layout::SaveFfnThresholds(t, file).ok());
  dense->reset();

  o.transformer.sparsity = FfnSparsity::kThreshold;
  o.transformer.observe_ffn = false;
  o.transformer.max_batch = 1;
  o.ffn_thresholds_path = file;
  auto sparse = Session::Open(store, o);
  EXPECT_TRUE(sparse.ok()) << sparse.status().ToString();
  if (!sparse.ok()) return {-1, -1};
  for (uint32_t p = 0; p < tokens.size(); ++p) {
    EXPECT_TRUE((*sparse)->model().Forward(std::span<const int32_t>(&tokens[p], 1), p).ok());
  }
  return {calibrated, 1.0 - (*sparse)->stats().ffn_computed_fraction()};
}

void RepackSeparate(const std::string& src_path, const std::string& out) {
  auto src = layout::OpenCheckpoint(src_path);
  ASSERT_TRUE(src.ok()) << src.status().ToString();
  layout::RepackOptions ro;
  ro.bundle_kind = layout::BundleKind::kGateSeparate;
  ro.alignment_bytes = 512;
  ASSERT_TRUE(layout::Repack(**src, out, ro).ok());
}

// Layer 0 sees exactly the calibration activations; later layers see inputs the earlier cuts
// moved a little, so the whole model's skipped fraction is close to, not equal to, the target.
TEST(GateCalibratorTest, CalibratedSparsityMatchesMeasuredOnSynth) {
  testing::ScratchDir dir;
  layout::SynthOptions so;
  so.config = *layout::SynthShape("tiny");
  so.config.activation = layout::Activation::kSilu;
  so.dtype = layout::DType::kQ8_0;
  so.seed = 9;
  so.out_path = (dir / "silu.gguf").string();
  ASSERT_TRUE(layout::SynthesizeGguf(so).ok());
  const std::string store = (dir / "store").string();
  RepackSeparate(so.out_path, store);
  std::vector<int32_t> tokens(96);
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<int32_t>((i * 37 + 1) % 250);
  for (double target : {0.3, 0.7}) {
    auto [calibrated, measured] = CalibrateAndMeasure(store, tokens, target);
    EXPECT_GE(calibrated, target) << target;
    EXPECT_LT(calibrated, target + 0.02) << target;
    EXPECT_NEAR(measured, calibrated, 0.05) << target;
  }
}

TEST(GateCalibratorTest, CalibratedSparsityMatchesMeasuredOnStories260K) {
  FLASHLM_REQUIRE_SHARED_MODEL(gguf, "stories260K-gguf/stories260K.gguf");
  FLASHLM_REQUIRE_SHARED_MODEL(ids_file, "stories260K/golden_greedy_t0_256steps.ids");
  testing::ScratchDir dir;
  const std::string store = (dir / "store").string();
  RepackSeparate(gguf.string(), store);
  std::ifstream in(ids_file);
  std::vector<int32_t> tokens;
  for (int32_t id; in >> id && tokens.size() < 200;) tokens.push_back(id);
  ASSERT_GT(tokens.size(), 100u);
  for (double target : {0.5, 0.8}) {
    auto [calibrated, measured] = CalibrateAndMeasure(store, tokens, target);
    EXPECT_GE(calibrated, target) << target;
    EXPECT_LT(calibrated, target + 0.02) << target;
    EXPECT_NEAR(measured, calibrated, 0.05) << target;
  }
}

}  // namespace
}  // namespace flashlm::engine
