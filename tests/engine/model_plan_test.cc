#include "engine/model_plan.h"

#include <gtest/gtest.h>

#include <cmath>
#include <fstream>

#include "engine/speed_bounds.h"
#include "layout/checkpoint.h"
#include "layout/repack.h"
#include "layout/synth.h"
#include "storage/read_probe.h"
#include "tests/test_util.h"

namespace flashlm::engine {
namespace {

namespace fs = std::filesystem;

SessionOptions AtBudget(uint64_t budget) {
  SessionOptions o;
  o.threads = 2;
  o.budgeted = budget != 0;
  o.budget_bytes = budget;
  return o;
}

// The brief's arithmetic, reproduced for LLaMA-2-7B's shape: 3.5 GB of 4-bit weights, a KV
// cache of 2 x b x s x d x l bytes (2 GiB at int8 for 8K positions, 8 GiB for 32K), and
// 58 GB/s over weights + KV, about 10.5 tokens/s.
TEST(ModelPlanTest, ReproducesTheBriefsArithmeticFor7B) {
  ModelPlanOptions o;
  o.shape = "7b";
  o.repack.dtype = layout::DType::kQ4_0;
  auto m = PlanModel("", o);
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  EXPECT_EQ(m->config.dim, 4096u);
  EXPECT_EQ(m->config.n_layers, 32u);
  // 6.74 G parameters: 3.37 GB at the brief's 4 bits; q4_0 adds an f16 scale per 32 values.
  EXPECT_NEAR(m->parameters / 1e9, 6.74, 0.01);
  EXPECT_NEAR(m->parameters * 0.5 / 1e9, 3.5, 0.15);
  uint64_t norms = 0;
  for (const WeightGroup& g : m->groups) {
    if (g.name == "norms") norms = g.bytes;
  }
  EXPECT_EQ(m->weight_bytes - norms, (m->parameters - norms / 4) / 32 * 18);

  EXPECT_EQ(KvCacheBytes(m->config, 8192, 1.0), double(uint64_t{2} << 30));   // 2 GiB
  EXPECT_EQ(KvCacheBytes(m->config, 32768, 1.0), double(uint64_t{8} << 30));  // 8 GiB
  EXPECT_DOUBLE_EQ(KvCacheBytes(m->config, 8192, KvValueBytes(layout::DType::kQ8_0)),
                   double(uint64_t{2} << 30) * 34 / 32);
  // The brief's ceiling: 58 GB/s over 3.5 GB + 2 GB.
  const double brief = 58e9 / (m->parameters * 0.5 + KvCacheBytes(m->config, 8192, 1.0));
  EXPECT_NEAR(brief, 10.5, 0.1);

  // The engine's bound counts what a token touches: every matrix but the embedding (one row),
  // with q4_0's scales, and the KV cache.
  m->config.max_seq_len = 8192;
  CostOptions co;
  co.context = 8192;
  co.kv_value_bytes = 1.0;
  SessionOptions so = AtBudget(0);
  so.transformer.max_context = 8192;
  auto p = Predict(*m, so, 2, co, 58, nullptr);
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  uint64_t embedding = 0;
  for (const WeightGroup& g : m->groups) {
    if (g.name == "embedding") embedding = g.bytes;
  }
  EXPECT_NEAR(p->cost.weight_bytes, double(m->weight_bytes - embedding - norms), 64 * 1024);
  EXPECT_EQ(p->cost.kv_bytes, double(uint64_t{2} << 30));
  EXPECT_DOUBLE_EQ(p->bounds.dram_tok_s, 58e9 / (p->cost.weight_bytes + p->cost.kv_bytes));
  EXPECT_NEAR(p->bounds.dram_tok_s, 9.9, 0.1);
  EXPECT_EQ(p->bounds.binding, "DRAM bandwidth");
  EXPECT_TRUE(p->cost.streams.empty());
}

struct Case {
  const char* shape;
  layout::DType dtype;
  layout::BundleKind kind;
  uint64_t alignment;
};

class EstimateTest : public ::testing::TestWithParam<Case> {};

// What plan estimates for a checkpoint is what the store repacked from it measures.
TEST_P(EstimateTest, EstimateOfACheckpointMatchesItsStore) {
  const Case& c = GetParam();
  flashlm::testing::ScratchDir dir;
  layout::SynthOptions so;
  auto config = layout::SynthShape(c.shape);
  ASSERT_TRUE(config.ok());
  so.config = *config;
  so.dtype = c.dtype;
  so.out_path = (dir / "m.gguf").string();
  ASSERT_TRUE(layout::SynthesizeGguf(so).ok());
  ModelPlanOptions o;
  o.repack.bundle_kind = c.kind;
  o.repack.alignment_bytes = c.alignment;
  auto est = PlanModel(so.out_path, o);
  ASSERT_TRUE(est.ok()) << est.status().ToString();
  EXPECT_FALSE(est->measured);
  {
    auto src = layout::OpenCheckpoint(so.out_path);
    ASSERT_TRUE(src.ok());
    auto r = layout::Repack(**src, (dir / "store").string(), o.repack);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
  }
  auto got = PlanModel((dir / "store").string(), o);
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  EXPECT_TRUE(got->measured);

  EXPECT_EQ(est->parameters, got->parameters);
  EXPECT_EQ(est->weight_bytes, got->weight_bytes);
  ASSERT_EQ(est->groups.size(), got->groups.size());
  for (size_t i = 0; i < est->groups.size(); ++i) {
    EXPECT_EQ(est->groups[i].name, got->groups[i].name);
    EXPECT_EQ(est->groups[i].dtype, got->groups[i].dtype);
    EXPECT_EQ(est->groups[i].bytes, got->groups[i].bytes) << est->groups[i].name;
  }
  EXPECT_EQ(est->flash_bytes, got->flash_bytes);
  const ResidencyInputs& a = est->needs.inputs;
  const ResidencyInputs& b = got->needs.inputs;
  EXPECT_EQ(a.dense_layer_bytes, b.dense_layer_bytes);
  EXPECT_EQ(a.layer_bundles, b.layer_bundles);
  EXPECT_EQ(a.bundle_spacing_bytes, b.bundle_spacing_bytes);
  EXPECT_EQ(a.chunk_buffer_bytes, b.chunk_buffer_bytes);
  EXPECT_EQ(a.embedding_bytes, b.embedding_bytes);
  EXPECT_EQ(a.embedding_demand_bytes, b.embedding_demand_bytes);
  EXPECT_EQ(a.classifier_bytes, b.classifier_bytes);
  EXPECT_NEAR(double(a.classifier_demand_bytes), double(b.classifier_demand_bytes),
              0.01 * double(b.classifier_demand_bytes) + 8192);
  EXPECT_NEAR(double(a.dense_stream_bytes_max), double(b.dense_stream_bytes_max),
              0.01 * double(b.dense_stream_bytes_max) + 8192);
  EXPECT_NEAR(double(a.fixed_bytes), double(b.fixed_bytes), 0.02 * double(b.fixed_bytes));

  // The plans agree: the minimum, everything resident, and what is pinned at a budget between.
  auto full_est = PlanSession(est->needs, est->config, AtBudget(0), 2, est->tokenizer_bytes);
  auto full_got = PlanSession(got->needs, got->config, AtBudget(0), 2, got->tokenizer_bytes);
  ASSERT_TRUE(full_est.ok() && full_got.ok());
  const double min_got = double(full_got->plan.minimum_bytes);
  EXPECT_NEAR(double(full_est->plan.minimum_bytes), min_got, 0.02 * min_got);
  const double all_got = double(full_got->plan.total_bytes());
  EXPECT_NEAR(double(full_est->plan.total_bytes()), all_got, 0.02 * all_got);
  const uint64_t mid = (full_got->plan.minimum_bytes + full_got->plan.total_bytes()) / 2;
  auto mid_est = PlanSession(est->needs, est->config, AtBudget(mid), 2, est->tokenizer_bytes);
  auto mid_got = PlanSession(got->needs, got->config, AtBudget(mid), 2, got->tokenizer_bytes);
  ASSERT_TRUE(mid_est.ok()) << mid_est.status().ToString();
  ASSERT_TRUE(mid_got.ok()) << mid_got.status().ToString();
  uint64_t pinned_est = 0, pinned_got = 0, all_bundles = 0;
  for (uint32_t n : mid_est->plan.pinned_bundles) pinned_est += n;
  for (uint32_t n : mid_got->plan.pinned_bundles) pinned_got += n;
  for (uint32_t n : b.layer_bundles) all_bundles += n;
  EXPECT_NEAR(double(pinned_est), double(pinned_got), 0.03 * double(all_bundles));
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, EstimateTest,
    ::testing::Values(Case{"tiny", layout::DType::kF32, layout::BundleKind::kGateUpDown, 4096},
                      Case{"tiny", layout::DType::kQ8_0, layout::BundleKind::kGateSeparate, 512},
                      Case{"15m", layout::DType::kQ8_0, layout::BundleKind::kGateUpDown, 4096}),
    [](const ::testing::TestParamInfo<Case>& info) {
      return std::string(info.param.shape) + "_" +
             std::string(layout::DTypeName(info.param.dtype)) +
             (info.param.kind == layout::BundleKind::kGateSeparate ? "_gate_separate" : "") +
             "_align" + std::to_string(info.param.alignment);
    });

TEST(ModelPlanTest, CostFollowsThePlanAndTheFireRate) {
  ModelPlanOptions o;
  o.shape = "15m";
  o.repack.dtype = layout::DType::kQ8_0;
  auto m = PlanModel("", o);
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  auto full = PlanSession(m->needs, m->config, AtBudget(0), 2, 0);
  ASSERT_TRUE(full.ok());
  const uint64_t budget = full->plan.minimum_bytes + (full->plan.total_bytes() - full->plan.minimum_bytes) / 3;
  storage::FlashProfile flash;
  storage::FlashCurve shallow, deep;
  shallow.depth = 1;
  shallow.random = {{4096, 20}, {65536, 100}, {1 << 20, 400}};
  deep.depth = 32;
  deep.random = {{4096, 100}, {65536, 400}, {1 << 20, 800}};
  deep.sequential = {{4096, 300}, {65536, 900}, {1 << 20, 1000}};
  flash.curves = {shallow, deep};
  CostOptions co;
  co.context = 256;
  auto dense = Predict(*m, AtBudget(budget), 2, co, 20, &flash);
  ASSERT_TRUE(dense.ok()) << dense.status().ToString();
  const ResidencyPlan& plan = dense->session.plan;
  uint64_t streamed = 0;
  for (size_t l = 0; l < plan.pinned_bundles.size(); ++l) {
    streamed += m->config.hidden_dim - plan.pinned_bundles[l];
  }
  ASSERT_GT(streamed, 0u);
  double ffn = 0, total = 0, time = 0;
  for (const FlashStream& s : dense->cost.streams) {
    if (s.what == "FFN bundles") ffn = s.bytes;
    total += s.bytes;
    EXPECT_EQ(s.mib_per_s, flash.MiBPerSecondAt(s.read_bytes, s.sequential, s.depth));
    EXPECT_GE(s.depth, 1.0);
    if (s.what == "FFN bundles") {  // chunk buffers x reads per chunk
      EXPECT_EQ(s.depth, plan.chunk_buffers * std::ceil(plan.chunk_bundles *
                                                        double(m->needs.bundles.stride_bytes) /
                                                        s.read_bytes));
    }
    time += s.bytes / (s.mib_per_s * 1048576.0);
  }
  EXPECT_EQ(ffn, double(streamed * m->needs.bundles.stride_bytes));
  EXPECT_EQ(dense->cost.flash_bytes, total);
  EXPECT_DOUBLE_EQ(dense->bounds.flash_tok_s, 1.0 / time);
  // Dense streams are read ahead; an embedding row only when the token gets there.
  double serial = 0;
  for (const FlashStream& s : dense->cost.streams) {
    EXPECT_EQ(s.overlapped, s.what != "embedding rows") << s.what;
    if (!s.overlapped) serial += s.bytes / (s.mib_per_s * 1048576.0);
  }
  EXPECT_DOUBLE_EQ(dense->bounds.flash_serial_seconds, serial);
  EXPECT_DOUBLE_EQ(dense->bounds.tok_s,
                   1.0 / (std::max(dense->bounds.dram_seconds,
                                   dense->bounds.flash_overlapped_seconds) +
                          serial));
  EXPECT_LE(dense->bounds.tok_s, std::min(dense->bounds.flash_tok_s, dense->bounds.dram_tok_s));
  EXPECT_LE(dense->bounds.serial_tok_s, dense->bounds.tok_s);

  co.fire_fraction = 0.25;
  auto sparse = Predict(*m, AtBudget(budget), 2, co, 20, &flash);
  ASSERT_TRUE(sparse.ok());
  for (const FlashStream& s : sparse->cost.streams) {
    if (s.what != "FFN bundles") continue;
    EXPECT_DOUBLE_EQ(s.bytes, ffn * 0.25);
    // Runs of 1 / (1 - 0.25) bundles, scattered: the random rate.
    EXPECT_DOUBLE_EQ(s.read_bytes, m->needs.bundles.stride_bytes / 0.75);
    EXPECT_FALSE(s.sequential);
    EXPECT_FALSE(s.overlapped);  // known only once the layer's gate is computed
    EXPECT_EQ(s.mib_per_s, flash.MiBPerSecondAt(s.read_bytes, false, s.depth));
  }
  EXPECT_LT(sparse->cost.weight_bytes, dense->cost.weight_bytes);
}

// The measurement runs its pool over the whole buffer and reports a rate (its value is the
// machine's: benchmarks, not tests, judge it).
TEST(ModelPlanTest, MeasuresADramReadRateWithOneAndTwoThreads) {
  for (uint32_t threads : {1u, 2u}) {
    const double gbps = MeasureDramReadGBps(threads, 8ull << 20);
    EXPECT_GT(gbps, 0.0) << threads;
    EXPECT_TRUE(std::isfinite(gbps)) << threads;
  }
}

TEST(ModelPlanTest, BadInputIsNamed) {
  ModelPlanOptions o;
  o.shape = "13b";
  EXPECT_EQ(PlanModel("", o).status().code(), StatusCode::kNotFound);
  o.shape.clear();
  EXPECT_EQ(PlanModel("/no/such/model.gguf", o).status().code(), StatusCode::kNotFound);
  o.shape = "tiny";
  o.repack.alignment_bytes = 3000;
  EXPECT_EQ(PlanModel("", o).status().code(), StatusCode::kInvalidArgument);
}

TEST(FlashProfileTest, LoadsIobenchJsonAndInterpolatesInLogSize) {
  flashlm::testing::ScratchDir dir;
  const fs::path p = dir / "profile.json";
  std::ofstream(p) << R"({"file": "x", "points": [
    {"pattern": "random", "direct": true, "block_bytes": 4096, "queue_depth": 1, "mib_per_s": 50},
    {"pattern": "random", "direct": true, "block_bytes": 4096, "queue_depth": 32, "mib_per_s": 400},
    {"pattern": "random", "direct": true, "block_bytes": 65536, "queue_depth": 32, "mib_per_s": 1200},
    {"pattern": "sequential", "direct": true, "block_bytes": 65536, "queue_depth": 32, "mib_per_s": 9999},
    {"pattern": "random", "direct": false, "block_bytes": 65536, "queue_depth": 32, "mib_per_s": 9999}]})";
  auto f = storage::FlashProfile::Load(p.string());
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  ASSERT_EQ(f->curves.size(), 2u);
  EXPECT_EQ(f->curves[0].depth, 1u);
  EXPECT_EQ(f->depth_max(), 32u);
  ASSERT_EQ(f->curves[1].random.size(), 2u);
  ASSERT_EQ(f->curves[1].sequential.size(), 1u);
  EXPECT_DOUBLE_EQ(f->MiBPerSecondAt(65536, true, 32), 9999);
  EXPECT_DOUBLE_EQ(f->MiBPerSecondAt(4096, true, 32), 9999);
  EXPECT_DOUBLE_EQ(f->MiBPerSecondAt(4096, true, 1), 50);  // no sequential curve at QD 1
  EXPECT_DOUBLE_EQ(f->MiBPerSecondAt(4096, false, 32), 400);
  EXPECT_DOUBLE_EQ(f->MiBPerSecondAt(16384, false, 32), 800);  // halfway in log2: 12 -> 14 -> 16
  EXPECT_DOUBLE_EQ(f->MiBPerSecondAt(1024, false, 64), 400);
  EXPECT_DOUBLE_EQ(f->MiBPerSecondAt(1 << 20, false, 32), 1200);
  // Between depths, linear in log(depth): QD ~5.66 is halfway from 1 to 32.
  EXPECT_NEAR(f->MiBPerSecondAt(4096, false, std::sqrt(32.0)), 225, 1e-9);
  EXPECT_EQ(ReadBytesReaching(*f, 0.9), 65536u);  // the deepest sequential curve: one point
  f->curves[1].sequential.clear();
  EXPECT_EQ(ReadBytesReaching(*f, 0.9), 65536u);  // its random one

  std::ofstream(dir / "bad.json") << "{\"points\": 3}";
  EXPECT_EQ(storage::FlashProfile::Load((dir / "bad.json").string()).status().code(),
            StatusCode::kCorruption);
  EXPECT_EQ(storage::FlashProfile::Load((dir / "none.json").string()).status().code(),
            StatusCode::kNotFound);
}

}  // namespace
}  // namespace flashlm::engine
