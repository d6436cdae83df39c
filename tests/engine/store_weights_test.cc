#include "engine/store_weights.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <optional>
#include <random>
#include <regex>

#include "engine/generator.h"
#include "engine/kernels.h"
#include "engine/residency_plan.h"
#include "engine/session.h"
#include "engine/thread_pool.h"
#include "layout/checkpoint.h"
#include "layout/repack.h"
#include "layout/synth.h"
#include "tests/engine/test_models.h"
#include "tests/test_util.h"

namespace flashlm::engine {
namespace {

namespace fs = std::filesystem;
namespace testing = ::flashlm::testing;  // test_util.h's (test_models.h has engine::testing)

std::vector<int32_t> ReadIds(const fs::path& p) {
  std::ifstream in(p);
  std::vector<int32_t> ids;
  for (int32_t id; in >> id;) ids.push_back(id);
  return ids;
}

// Repacks stories260K (GGUF) into `out` with the given dtype and bundle kind.
void MakeStore(const fs::path& gguf, const fs::path& out, layout::DType dtype,
               layout::BundleKind kind, uint64_t alignment = 512,
               uint64_t dense_extent_bytes = 4u << 20) {
  auto src = layout::OpenCheckpoint(gguf.string());
  ASSERT_TRUE(src.ok()) << src.status().ToString();
  layout::RepackOptions o;
  o.dtype = dtype;
  o.bundle_kind = kind;
  // 512: f32 bundles of stories260K (768 bytes) then sit in 1 KiB strides, so FFN chunks are
  // read as contiguous ranges (the direct path) where the disk allows 512-byte O_DIRECT.
  o.alignment_bytes = alignment;
  o.dense_extent_bytes_max = dense_extent_bytes;
  auto s = layout::Repack(**src, out.string(), o);
  ASSERT_TRUE(s.ok()) << s.status().ToString();
}

struct Run {
  std::vector<int32_t> ids;
  ResidencyPlan plan;
  EngineStats stats;
  bool coalesced = false;
  bool attention_prefetched = false;
  bool embedding_on_demand = false;
};

// A session on `store` at `budget` (0: unlimited) with the given streaming options.
Result<std::unique_ptr<Session>> OpenAt(const fs::path& store, uint64_t budget, uint32_t threads,
                                        const TransformerOptions& to, uint32_t chunk = 256,
                                        bool coalesce = true, bool pipeline = true) {
  SessionOptions o;
  o.threads = threads;
  o.budgeted = true;
  o.budget_bytes = budget;
  o.transformer = to;
  o.streaming.chunk_bundles = chunk;
  o.streaming.coalesce = coalesce;
  o.streaming.pipeline = pipeline;
  return Session::Open(store.string(), o);
}

// The smallest budget `store` runs at, from the error a 1-byte budget gets.
uint64_t MinimumBudget(const fs::path& store, uint32_t threads, const TransformerOptions& to,
                       bool pipeline = true, bool coalesce = true) {
  auto refused = OpenAt(store, 1, threads, to, 256, coalesce, pipeline);
  EXPECT_EQ(refused.status().code(), StatusCode::kInvalidArgument);
  std::smatch m;
  const std::string msg(refused.status().message());
  EXPECT_TRUE(std::regex_search(msg, m, std::regex("minimum of ([0-9]+) bytes"))) << msg;
  return m.empty() ? 0 : std::stoull(m[1].str());
}

// Greedy generation of `n` tokens from a short prompt with a session at `budget`.
Result<Run> Generate(const fs::path& store, uint64_t budget, uint32_t threads, uint32_t n,
                     uint32_t chunk = 256, bool coalesce = true, bool pipeline = true) {
  TransformerOptions to;
  to.max_context = 128;
  to.max_batch = 16;
  ASSIGN_OR_RETURN(auto session, OpenAt(store, budget, threads, to, chunk, coalesce, pipeline));
  SamplerOptions sam;
  sam.temperature = 0;
  ASSIGN_OR_RETURN(auto sampler, Sampler::Create(session->config().vocab_size, sam));
  Generator gen(session->model(), session->tokenizer());
  // A multi-token prompt exercises the batched (prefill) path too.
  std::vector<int32_t> prompt = session->tokenizer().Encode("Once upon a time", true);
  ASSIGN_OR_RETURN(GenerationStats st, gen.Generate(prompt, n, *sampler, {}, nullptr));
  (void)st;
  Run r;
  r.coalesced = session->store()->coalesced();
  r.attention_prefetched = session->store()->attention_prefetched();
  r.embedding_on_demand = session->store()->embedding_on_demand();
  r.ids = gen.ids();
  r.plan = *session->plan();
  r.stats = session->stats();
  return r;
}

// Greedy generation of 60 tokens after the golden file's first id through `session` equals the
// golden ids.
void ExpectGoldenContinuation(Session& session, const fs::path& golden) {
  const std::vector<int32_t> gold = ReadIds(golden);
  ASSERT_GT(gold.size(), 61u);
  SamplerOptions sam;
  sam.temperature = 0;
  auto sampler = Sampler::Create(session.config().vocab_size, sam);
  ASSERT_TRUE(sampler.ok());
  Generator gen(session.model(), session.tokenizer());
  ASSERT_TRUE(gen.Generate(std::vector<int32_t>{gold[0]}, 60, **sampler, {}, nullptr).ok());
  EXPECT_EQ(gen.ids(), std::vector<int32_t>(gold.begin(), gold.begin() + 61));
}

struct StoreCase {
  layout::DType dtype;
  layout::BundleKind kind;
};

class StoreWeightsBudgetTest : public ::testing::TestWithParam<StoreCase> {};

// Greedy output is identical at every budget, from unlimited down to the planner's minimum,
// and small budgets really stream (bytes read from flash, bundles streamed).
TEST_P(StoreWeightsBudgetTest, GreedyOutputIdenticalAtEveryBudget) {
  FLASHLM_REQUIRE_SHARED_MODEL(gguf, "stories260K-gguf/stories260K.gguf");
  testing::ScratchDir dir;
  const fs::path store = dir / "store";
  MakeStore(gguf, store, GetParam().dtype, GetParam().kind);
  std::vector<int32_t> reference;
  // The always-resident part depends on the thread count (per-thread scratch) and on the read
  // options (read tables, chunk buffers): plan per combination. Chunks of 256 (a whole layer of
  // stories260K) are read as merged reads with the next chunk in flight (pipelined), of 64 merged
  // one at a time, and of 7 bundles (many partial chunks) one read per bundle.
  for (uint32_t threads : {1u, 2u}) {
    for (uint32_t chunk : {256u, 64u, 7u}) {
      const bool coalesce = chunk != 7, pipeline = chunk == 256;
      auto full = Generate(store, 0, threads, 48, chunk, coalesce, pipeline);
      ASSERT_TRUE(full.ok()) << full.status().ToString();
      EXPECT_FALSE(full->plan.streams());
      EXPECT_FALSE(full->embedding_on_demand);
      EXPECT_EQ(full->stats.bundles_streamed, 0u);
      EXPECT_GT(full->stats.bundles_resident, 0u);
      if (reference.empty()) reference = full->ids;
      EXPECT_EQ(full->ids, reference) << "threads " << threads;
      const uint64_t minimum = full->plan.minimum_bytes;
      const uint64_t all = full->plan.total_bytes();
      ASSERT_LT(minimum, all);
      std::vector<uint64_t> budgets = {all, all - 1, minimum};
      for (int k = 1; k < 4; ++k) budgets.push_back(minimum + (all - minimum) * k / 4);
      for (uint64_t budget : budgets) {
        auto r = Generate(store, budget, threads, 48, chunk, coalesce, pipeline);
        ASSERT_TRUE(r.ok()) << "budget " << budget << ": " << r.status().ToString();
        EXPECT_EQ(r->ids, reference) << "budget " << budget << " threads " << threads;
        EXPECT_LE(r->plan.total_bytes(), budget);
        EXPECT_EQ(r->coalesced, coalesce);
        // Below `all` something is read from flash: embedding rows on demand (which may free
        // enough for every layer just below `all`) and, at the smaller budgets, bundles.
        if (budget < all) {
          // Untied (output.weight is its own); the f32 embedding (128 KiB) spans two 64 KiB
          // extents, q8_0's (34 KiB) one, which on demand would save nothing.
          if (GetParam().dtype == layout::DType::kF32) EXPECT_TRUE(r->embedding_on_demand);
          EXPECT_GT(r->stats.bytes_read, 0u) << budget;
          EXPECT_GT(r->stats.reads, 0u) << budget;
        }
        if (budget <= minimum + (all - minimum) * 3 / 4) {
          EXPECT_TRUE(r->plan.streams()) << budget << "\n" << r->plan.Describe();
          EXPECT_GT(r->stats.bundles_streamed, 0u) << budget;
          EXPECT_LT(r->stats.hit_rate(), 1.0) << budget;
          if (coalesce) {
            EXPECT_LT(r->stats.reads, r->stats.bundles_streamed) << "reads not coalesced";
          } else {
            EXPECT_GE(r->stats.reads, r->stats.bundles_streamed) << "one read per bundle";
          }
          // At the minimum every layer's attention streams: pipelined, it is read ahead into
          // its buffer (the store's dense extents are uncompressed and in file order).
          if (budget == minimum && pipeline) {
            EXPECT_TRUE(r->attention_prefetched) << r->plan.Describe();
            EXPECT_GE(r->plan.chunk_buffers, 2u);
          }
        }
      }
      // Below the minimum: a clear error naming it.
      auto tiny = Generate(store, minimum - 1, threads, 4, chunk, coalesce, pipeline);
      ASSERT_FALSE(tiny.ok());
      EXPECT_EQ(tiny.status().code(), StatusCode::kInvalidArgument);
      EXPECT_NE(tiny.status().message().find(std::to_string(minimum)), std::string::npos)
          << tiny.status().ToString();
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    DtypesAndBundles, StoreWeightsBudgetTest,
    ::testing::Values(StoreCase{layout::DType::kF32, layout::BundleKind::kGateUpDown},
                      StoreCase{layout::DType::kF32, layout::BundleKind::kGateSeparate},
                      StoreCase{layout::DType::kQ8_0, layout::BundleKind::kGateUpDown},
                      StoreCase{layout::DType::kQ8_0, layout::BundleKind::kGateSeparate}),
    [](const ::testing::TestParamInfo<StoreCase>& info) {
      return std::string(info.param.dtype == layout::DType::kF32 ? "f32" : "q8_0") +
             (info.param.kind == layout::BundleKind::kGateUpDown ? "_gate_up_down"
                                                                 : "_gate_separate");
    });

// What the store tells the planner per pinned bundle is the bundle's DRAM slot and a little
// bookkeeping, for bundles smaller and larger than a page.
TEST(StoreWeightsTest, MeasuresWhatABundleCosts) {
  FLASHLM_REQUIRE_SHARED_MODEL(gguf, "stories260K-gguf/stories260K.gguf");
  testing::ScratchDir dir;
  const fs::path store = dir / "store";
  MakeStore(gguf, store, layout::DType::kQ8_0, layout::BundleKind::kGateUpDown);
  auto reader = layout::StoreReader::Open(store.string());
  ASSERT_TRUE(reader.ok());
  auto needs = StoreWeights::Measure(**reader, StreamingOptions());
  ASSERT_TRUE(needs.ok()) << needs.status().ToString();
  const uint64_t bundle = needs->bundles.bundle_bytes;
  EXPECT_GE(needs->inputs.bundle_spacing_bytes, bundle);
  EXPECT_LE(needs->inputs.bundle_spacing_bytes, AlignUp(bundle, 64) + 160);
  layout::BundleGeometry big = needs->bundles;
  big.bundle_bytes = 6528;  // the 1b model's q8_0 bundles: more than a page
  EXPECT_LE(NeuronSource::PinnedBundleBytes(big), AlignUp(big.bundle_bytes, 64) + 160);
  EXPECT_GE(needs->inputs.chunk_buffer_bytes, uint64_t{needs->inputs.chunk_bundles} * bundle);
}

// The bundle FFN agrees with the in-DRAM forward pass of the same f32 store (same weights,
// different summation order): logits within a small tolerance, greedy output equal to the
// golden continuation of stories260K.
TEST(StoreWeightsTest, F32StoreMatchesDramForwardAndGolden) {
  FLASHLM_REQUIRE_SHARED_MODEL(gguf, "stories260K-gguf/stories260K.gguf");
  FLASHLM_REQUIRE_SHARED_MODEL(golden, "stories260K/golden_greedy_t0_256steps.ids");
  testing::ScratchDir dir;
  const fs::path store = dir / "store";
  MakeStore(gguf, store, layout::DType::kF32, layout::BundleKind::kGateUpDown);
  TransformerOptions to;
  to.max_context = 64;
  const uint64_t minimum = MinimumBudget(store, 2, to);
  ASSERT_GT(minimum, 0u);
  auto dram_ck = layout::OpenCheckpoint(store.string());
  ASSERT_TRUE(dram_ck.ok());
  auto dram = DramWeightStore::Load(**dram_ck);
  ASSERT_TRUE(dram.ok()) << dram.status().ToString();
  auto streaming = OpenAt(store, minimum, 2, to);
  ASSERT_TRUE(streaming.ok()) << streaming.status().ToString();
  ThreadPool pool(2);
  auto a = Transformer::Create(**dram, pool, to);
  ASSERT_TRUE(a.ok());
  const std::vector<int32_t> tokens = {1, 403, 407, 261, 378};
  auto la = (*a)->Forward(tokens, 0);
  ASSERT_TRUE(la.ok());
  std::vector<float> want(la->begin(), la->end());
  auto lb = (*streaming)->model().Forward(tokens, 0);
  ASSERT_TRUE(lb.ok()) << lb.status().ToString();
  ASSERT_EQ(lb->size(), want.size());
  double max_diff = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    max_diff = std::max<double>(max_diff, std::fabs((*lb)[i] - want[i]));
  }
  EXPECT_LT(max_diff, 1e-3);
  // Golden greedy continuation (first 60 tokens) through the streaming store.
  ExpectGoldenContinuation(**streaming, golden);
}

// A small Q4_K_M-style GGUF written to `gguf` (synth: output and ffn_down q6_K, the rest q4_K;
// dim 256, so q4_K rows are whole super-blocks), opened; null if either step failed.
std::unique_ptr<layout::Checkpoint> SynthQ4KM(const fs::path& gguf, uint32_t seed) {
  layout::SynthOptions so;
  so.config = *layout::SynthShape("tiny");
  so.config.dim = 256;
  so.config.hidden_dim = 768;
  so.config.head_dim = 64;
  so.q4_k_m = true;
  so.seed = seed;
  so.out_path = gguf.string();
  if (!layout::SynthesizeGguf(so).ok()) return nullptr;
  auto src = layout::OpenCheckpoint(so.out_path);
  return src.ok() ? std::move(*src) : nullptr;
}

// A Q4_K_M-style GGUF (synth: output and ffn_down q6_K, the rest q4_K) repacked as it is keeps
// its dtypes (bundles in up's q4_K, their down columns re-quantised into it) and runs through the
// q4_K / q6_K kernels. Its reference is the same file repacked to f32 (the exact dequantisation
// of every tensor, run by the f32 kernels). They differ by the q8 rounding of activations and
// the q6_K -> q4_K down columns: every position's logits must be within a small fraction of the
// logits' scale, and the argmax must agree wherever the reference's top-two margin is larger
// than twice the error measured at that position.
TEST(StoreWeightsTest, Q4KMStoreKeepsItsDtypesAndMatchesItsF32Dequantisation) {
  testing::ScratchDir dir;
  auto src = SynthQ4KM(dir / "q4km.gguf", 3);
  ASSERT_NE(src, nullptr);
  for (auto [path, dtype] : {std::pair{dir / "kept", std::optional<layout::DType>()},
                             std::pair{dir / "f32", std::optional(layout::DType::kF32)}}) {
    layout::RepackOptions o;
    o.dtype = dtype;
    o.alignment_bytes = 512;
    auto r = layout::Repack(*src, path.string(), o);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
  }
  {
    auto kept = layout::OpenCheckpoint((dir / "kept").string());
    ASSERT_TRUE(kept.ok()) << kept.status().ToString();
    for (auto [name, want] : {std::pair{"output.weight", layout::DType::kQ6_K},
                              std::pair{"token_embd.weight", layout::DType::kQ4_K},
                              std::pair{"blk.1.attn_v.weight", layout::DType::kQ4_K},
                              std::pair{"blk.0.ffn_up.weight", layout::DType::kQ4_K},
                              // Block-quantised down columns read back dequantised.
                              std::pair{"blk.0.ffn_down.weight", layout::DType::kF32}}) {
      const layout::TensorInfo* t = (*kept)->FindTensor(name);
      ASSERT_NE(t, nullptr) << name;
      EXPECT_EQ(t->dtype, want) << name;
    }
  }
  TransformerOptions to;
  to.max_context = 64;
  to.max_batch = 8;
  to.all_logits = true;
  auto kept = OpenAt(dir / "kept", 0, 2, to);
  ASSERT_TRUE(kept.ok()) << kept.status().ToString();
  auto ref = OpenAt(dir / "f32", 0, 2, to);
  ASSERT_TRUE(ref.ok()) << ref.status().ToString();
  const uint32_t vocab = (*ref)->config().vocab_size;
  // A batch of 5 (prefill tiles) then single tokens (decode).
  const std::vector<int32_t> tokens = {1, 300, 301, 260, 400, 77, 500, 123, 261, 262};
  uint32_t pos = 0, checked_argmax = 0;
  while (pos < tokens.size()) {
    const uint32_t n = pos == 0 ? 5 : 1;
    const auto in = std::span<const int32_t>(tokens).subspan(pos, n);
    auto lk = (*kept)->model().Forward(in, pos);
    ASSERT_TRUE(lk.ok()) << lk.status().ToString();
    const std::vector<float> got(lk->begin(), lk->end());
    auto lr = (*ref)->model().Forward(in, pos);
    ASSERT_TRUE(lr.ok()) << lr.status().ToString();
    ASSERT_EQ(lr->size(), got.size());
    for (uint32_t t = 0; t < n; ++t) {
      const float* a = got.data() + uint64_t{t} * vocab;
      const float* b = lr->data() + uint64_t{t} * vocab;
      double err = 0, scale = 0;
      uint32_t top = 0, second = 1;
      for (uint32_t v = 0; v < vocab; ++v) {
        err = std::max(err, std::fabs(double(a[v]) - b[v]));
        scale = std::max(scale, std::fabs(double(b[v])));
        if (b[v] > b[top]) {
          second = top;
          top = v;
        } else if (v != top && b[v] > b[second]) {
          second = v;
        }
      }
      EXPECT_LT(err, 0.1 * scale) << "position " << pos + t;
      if (b[top] - b[second] > 2 * err) {
        ++checked_argmax;
        EXPECT_EQ(std::max_element(a, a + vocab) - a, top) << "position " << pos + t;
      }
    }
    pos += n;
  }
  EXPECT_GT(checked_argmax, 0u) << "no position had a margin to check the argmax against";
}

// A store's matrices that stay in DRAM and are only multiplied (pinned attention layers, a
// resident classifier) are kept in 16-row strips where this build reads their dtype so, and
// multiply bit for bit as the stored rows do; greedy output is the same with every layer pinned
// (strips) as at the smallest budget (attention and classifier streamed, row-major).
TEST(StoreWeightsTest, PinnedMatricesAreKeptInStripsAndMultiplyAsStored) {
  testing::ScratchDir dir;
  auto src = SynthQ4KM(dir / "q4km.gguf", 4);
  ASSERT_NE(src, nullptr);
  for (auto [name, dtype] : {std::pair{"kept", std::optional<layout::DType>()},
                             std::pair{"q4_0", std::optional(layout::DType::kQ4_0)}}) {
    SCOPED_TRACE(name);
    layout::RepackOptions o;
    o.dtype = dtype;
    o.alignment_bytes = 512;
    o.dense_extent_bytes_max = 64 << 10;  // several extents a tensor
    auto r = layout::Repack(*src, (dir / name).string(), o);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    TransformerOptions to;
    to.max_context = 64;
    to.max_batch = 8;
    auto session = OpenAt(dir / name, 0, 2, to);
    ASSERT_TRUE(session.ok()) << session.status().ToString();
    StoreWeights& store = *(*session)->store();
    ASSERT_FALSE(store.classifier_streamed());
    std::vector<std::pair<std::string, MatrixView>> all = {{"output.weight", store.classifier()}};
    for (uint32_t l = 0; l < store.config().n_layers; ++l) {
      auto lw = store.AcquireLayer(l);
      ASSERT_TRUE(lw.ok()) << lw.status().ToString();
      const std::string p = "blk." + std::to_string(l) + ".";
      all.insert(all.end(), {{p + "attn_q.weight", lw->wq},
                             {p + "attn_k.weight", lw->wk},
                             {p + "attn_v.weight", lw->wv},
                             {p + "attn_output.weight", lw->wo}});
      ASSERT_TRUE(store.ReleaseMatrices(l).ok());
      store.ReleaseLayer(l);
    }
    std::mt19937 rng(5);
    ThreadPool pool(2);
    uint32_t in_strips = 0;
    for (const auto& [tensor, m] : all) {
      SCOPED_TRACE(tensor);
      EXPECT_EQ(m.strips, CanInterleaveStrips(m.dtype, m.rows, m.cols));
      in_strips += m.strips;
      const layout::TensorInfo* info = store.reader().FindTensor(tensor);
      ASSERT_NE(info, nullptr);
      std::vector<std::byte> raw(info->size_bytes());
      ASSERT_TRUE(store.reader().ReadTensor(*info, raw).ok());
      const MatrixView plain{info->dtype, m.rows, m.cols, raw};
      EXPECT_EQ(engine::testing::ProductsDiffer(m, plain, rng, pool), "");
    }
    if (CanInterleaveStrips(layout::DType::kQ4_K, 16, 256) &&
        CanInterleaveStrips(layout::DType::kQ6_K, 16, 256)) {
      EXPECT_EQ(in_strips, all.size()) << "every matrix of this store has a strip kernel";
    }
    session->reset();
    // Every layer pinned against the smallest budget (streamed, row-major): the same tokens.
    auto all_pinned = Generate(dir / name, 0, 2, 12);
    ASSERT_TRUE(all_pinned.ok()) << all_pinned.status().ToString();
    TransformerOptions gen_to;  // Generate's
    gen_to.max_context = 128;
    gen_to.max_batch = 16;
    const uint64_t min = MinimumBudget(dir / name, 2, gen_to);
    ASSERT_GT(min, 0u);
    auto smallest = Generate(dir / name, min, 2, 12);
    ASSERT_TRUE(smallest.ok()) << smallest.status().ToString();
    EXPECT_GT(smallest->stats.bytes_read, 0u);
    EXPECT_NE(std::count(smallest->plan.dense_pinned.begin(), smallest->plan.dense_pinned.end(), 0),
              0)
        << "the smallest budget streams some attention layer";
    EXPECT_EQ(smallest->ids, all_pinned->ids);
  }
}

// With small dense extents the classifier can stream one extent at a time: the planner does so
// only below what a resident classifier needs, and the logits (all of them, for a batch, and the
// greedy continuation) match the DRAM model's.
TEST(StoreWeightsTest, ClassifierStreamsAtTheSmallestBudgets) {
  FLASHLM_REQUIRE_SHARED_MODEL(gguf, "stories260K-gguf/stories260K.gguf");
  FLASHLM_REQUIRE_SHARED_MODEL(golden, "stories260K/golden_greedy_t0_256steps.ids");
  testing::ScratchDir dir;
  const fs::path store = dir / "store";
  // 8 KiB extents: the f32 classifier (512 x 64) is 16 extents of 32 rows.
  MakeStore(gguf, store, layout::DType::kF32, layout::BundleKind::kGateUpDown, 512, 8192);
  TransformerOptions to;
  to.max_context = 64;
  to.max_batch = 8;
  to.all_logits = true;
  auto unlimited = OpenAt(store, 0, 2, to);
  ASSERT_TRUE(unlimited.ok()) << unlimited.status().ToString();
  EXPECT_FALSE((*unlimited)->store()->classifier_streamed());
  EXPECT_EQ((*unlimited)->store()->classifier_stream(), nullptr);
  const uint64_t minimum = (*unlimited)->plan()->minimum_bytes;
  unlimited->reset();
  auto dram_ck = layout::OpenCheckpoint(store.string());
  ASSERT_TRUE(dram_ck.ok());
  auto dram = DramWeightStore::Load(**dram_ck);
  ASSERT_TRUE(dram.ok()) << dram.status().ToString();
  ThreadPool pool(2);
  auto a = Transformer::Create(**dram, pool, to);
  ASSERT_TRUE(a.ok());
  const std::vector<int32_t> tokens = {1, 403, 407, 261, 378};
  auto la = (*a)->Forward(tokens, 0);
  ASSERT_TRUE(la.ok());
  const std::vector<float> want(la->begin(), la->end());
  ASSERT_EQ(want.size(), tokens.size() * 512u);
  auto streaming = OpenAt(store, minimum, 2, to);
  ASSERT_TRUE(streaming.ok()) << streaming.status().ToString();
  EXPECT_TRUE((*streaming)->store()->classifier_streamed()) << (*streaming)->Describe();
  EXPECT_FALSE((*streaming)->plan()->classifier_resident);
  for (int pass = 0; pass < 2; ++pass) {  // the second pass uses the prefetched extents
    auto lb = (*streaming)->model().Forward(tokens, 0);
    ASSERT_TRUE(lb.ok()) << lb.status().ToString();
    ASSERT_EQ(lb->size(), want.size());
    double max_diff = 0;
    for (size_t i = 0; i < want.size(); ++i) {
      max_diff = std::max<double>(max_diff, std::fabs((*lb)[i] - want[i]));
    }
    EXPECT_LT(max_diff, 1e-3) << "pass " << pass;
  }
  streaming->reset();
  // Greedy continuation through the streamed classifier equals the golden ids.
  TransformerOptions gen_options = to;
  gen_options.all_logits = false;
  const uint64_t gen_minimum = MinimumBudget(store, 2, gen_options);
  auto s2 = OpenAt(store, gen_minimum, 2, gen_options);
  ASSERT_TRUE(s2.ok()) << s2.status().ToString();
  EXPECT_TRUE((*s2)->store()->classifier_streamed());
  ExpectGoldenContinuation(**s2, golden);
  s2->reset();
  // A budget that holds the classifier next to the least buffers keeps it resident.
  auto s3 = OpenAt(store, gen_minimum + 128 * 1024, 2, gen_options);
  ASSERT_TRUE(s3.ok());
  EXPECT_FALSE((*s3)->store()->classifier_streamed()) << (*s3)->Describe();
}

// Flips `mask` into the byte `at` bytes into the extent of `tensor` that holds `row`; false when
// the store or the tensor cannot be read.
bool FlipInDenseExtent(const fs::path& store, const std::string& tensor, uint64_t row,
                       uint64_t at, uint8_t mask) {
  auto reader = layout::StoreReader::Open(store.string());
  if (!reader.ok()) return false;
  auto ext = (*reader)->DenseExtents(tensor, row, 1);
  if (!ext.ok() || ext->empty()) return false;
  testing::FlipByte(store / "data-00000.bin", (*ext)[0].offset_bytes + at, mask);
  return true;
}

// A flipped byte in an embedding extent read on demand is Corruption naming the tensor.
TEST(StoreWeightsTest, CorruptEmbeddingRowIsDetected) {
  FLASHLM_REQUIRE_SHARED_MODEL(gguf, "stories260K-gguf/stories260K.gguf");
  testing::ScratchDir dir;
  const fs::path store = dir / "store";
  // f32: the 128 KiB embedding spans two 64 KiB extents, so it is read on demand when streaming.
  MakeStore(gguf, store, layout::DType::kF32, layout::BundleKind::kGateUpDown);
  // Inside row 1, the row of token 1 (256 bytes per row).
  ASSERT_TRUE(FlipInDenseExtent(store, "token_embd.weight", 1, 300, 0x40));
  TransformerOptions to;
  to.max_context = 32;
  to.max_batch = 4;
  auto w = OpenAt(store, MinimumBudget(store, 1, to), 1, to);
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  ASSERT_TRUE((*w)->store()->embedding_on_demand());
  auto r = (*w)->model().Forward(std::vector<int32_t>{1}, 0);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kCorruption) << r.status().ToString();
  EXPECT_NE(r.status().ToString().find("token_embd.weight"), std::string::npos)
      << r.status().ToString();
}

// A flipped byte in a streamed bundle is Corruption naming the extent, on both read paths.
TEST(StoreWeightsTest, CorruptBundleIsDetected) {
  FLASHLM_REQUIRE_SHARED_MODEL(gguf, "stories260K-gguf/stories260K.gguf");
  testing::ScratchDir dir;
  const fs::path store = dir / "store";
  MakeStore(gguf, store, layout::DType::kQ8_0, layout::BundleKind::kGateUpDown);
  uint64_t offset = 0;
  {
    auto reader = layout::StoreReader::Open(store.string());
    ASSERT_TRUE(reader.ok());
    auto ext = (*reader)->BundleExtents(3, 100, 1);
    ASSERT_TRUE(ext.ok());
    offset = (*ext)[0].offset_bytes + 5;
  }
  testing::FlipByte(store / "data-00000.bin", offset, 0x40);
  auto full = Generate(store, 0, 1, 2);  // reads nothing per token: the pinned load fails
  ASSERT_FALSE(full.ok());
  EXPECT_EQ(full.status().code(), StatusCode::kCorruption) << full.status().ToString();
  // Pipelined merged reads, merged, one read per bundle; then pipelined with 2 threads.
  for (int mode = 0; mode < 4; ++mode) {
    TransformerOptions to;
    to.max_context = 32;
    to.max_batch = 4;
    const bool coalesce = mode != 2;
    const bool pipeline = mode == 0 || mode == 3;
    const uint32_t threads = mode == 3 ? 2 : 1;
    const uint64_t minimum = MinimumBudget(store, threads, to, pipeline, coalesce);
    auto w = OpenAt(store, minimum, threads, to, 256, coalesce, pipeline);
    ASSERT_TRUE(w.ok()) << w.status().ToString();
    Transformer& model = (*w)->model();
    auto r = model.Forward(std::vector<int32_t>{1}, 0);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), StatusCode::kCorruption) << r.status().ToString();
    // Again, after the failed pass left the pipeline out of step: the same clear error.
    auto again = model.Forward(std::vector<int32_t>{1}, 0);
    ASSERT_FALSE(again.ok());
    EXPECT_EQ(again.status().code(), StatusCode::kCorruption) << again.status().ToString();
    EXPECT_NE(r.status().ToString().find("FFN layer 3"), std::string::npos)
        << r.status().ToString();
    EXPECT_NE(r.status().ToString().find("bundle 100"), std::string::npos) << r.status().ToString();
  }
}

// A flipped byte in a streamed layer's attention matrix is Corruption naming the layer, read
// ahead or not, with one thread or two.
TEST(StoreWeightsTest, CorruptStreamedAttentionIsDetected) {
  FLASHLM_REQUIRE_SHARED_MODEL(gguf, "stories260K-gguf/stories260K.gguf");
  testing::ScratchDir dir;
  const fs::path store = dir / "store";
  MakeStore(gguf, store, layout::DType::kQ8_0, layout::BundleKind::kGateUpDown);
  ASSERT_TRUE(FlipInDenseExtent(store, "blk.4.attn_output.weight", 0, 7, 0x10));
  for (int mode = 0; mode < 3; ++mode) {  // pipelined 1 and 2 threads, naive 2 threads
    SCOPED_TRACE("mode " + std::to_string(mode));
    TransformerOptions to;
    to.max_context = 32;
    to.max_batch = 4;
    const uint32_t threads = mode == 0 ? 1 : 2;
    const bool pipeline = mode != 2;
    const uint64_t minimum = MinimumBudget(store, threads, to, pipeline);
    auto w = OpenAt(store, minimum, threads, to, 256, true, pipeline);
    ASSERT_TRUE(w.ok()) << w.status().ToString();
    auto r = (*w)->model().Forward(std::vector<int32_t>{1}, 0);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), StatusCode::kCorruption) << r.status().ToString();
    EXPECT_NE(r.status().ToString().find("attention of layer 4"), std::string::npos)
        << r.status().ToString();
  }
}

// A random-weight ReLU model (synth, fire rate `fire`) repacked with `kind` bundles.
std::string MakeReluStore(const flashlm::testing::ScratchDir& dir, layout::BundleKind kind,
                          layout::Activation activation = layout::Activation::kRelu) {
  layout::SynthOptions so;
  so.config = *layout::SynthShape("tiny");
  so.config.activation = activation;
  so.dtype = layout::DType::kQ8_0;
  so.fire_rate = activation == layout::Activation::kRelu ? 0.25f : 0.0f;
  so.seed = 11;
  const std::string name = std::string(layout::BundleKindName(kind)) +
                           (activation == layout::Activation::kRelu ? "-relu" : "-silu");
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

// Greedy ids and every step's logits of `steps` tokens after a fixed prompt.
struct Trace {
  std::vector<int32_t> ids;
  std::vector<float> logits;
  EngineStats stats;
  FfnSparsity sparsity = FfnSparsity::kAuto;
};
Result<Trace> GreedyTrace(const std::string& store, uint64_t budget, FfnSparsity sparsity,
                          uint32_t steps, const StreamingOptions* streaming = nullptr) {
  SessionOptions o;
  o.threads = 2;
  o.budgeted = true;
  o.budget_bytes = budget;
  o.transformer.max_context = 64;
  o.transformer.sparsity = sparsity;
  if (streaming != nullptr) o.streaming = *streaming;
  o.streaming.chunk_bundles = 16;
  ASSIGN_OR_RETURN(std::unique_ptr<Session> s, Session::Open(store, o));
  Trace t;
  t.sparsity = s->model().sparsity();
  std::vector<int32_t> ids = {1, 7, 42, 99, 5};
  std::span<const float> logits;
  ASSIGN_OR_RETURN(logits, Prefill(s->model(), ids, 0));
  s->ResetStats();
  for (uint32_t i = 0; i < steps; ++i) {
    t.logits.insert(t.logits.end(), logits.begin(), logits.end());
    const int32_t next =
        static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
    ids.push_back(next);
    ASSIGN_OR_RETURN(logits, s->model().Forward(std::span<const int32_t>(&ids.back(), 1),
                                                static_cast<uint32_t>(ids.size() - 1)));
  }
  t.ids = ids;
  t.stats = s->stats();
  return t;
}

// relu sparsity computes only the neurons whose gate fires and is bit-identical to dense, in DRAM
// and under a budget that streams, while reading fewer bytes.
TEST(StoreWeightsTest, ReluSparsityIsExactAndReadsLess) {
  flashlm::testing::ScratchDir dir;
  const std::string store = MakeReluStore(dir, layout::BundleKind::kGateSeparate);
  SessionOptions probe;
  probe.threads = 2;
  probe.transformer.max_context = 64;
  probe.streaming.chunk_bundles = 16;
  probe.budgeted = true;
  probe.budget_bytes = 1;
  auto refused = Session::Open(store, probe);
  std::smatch m;
  const std::string msg(refused.status().message());
  ASSERT_TRUE(std::regex_search(msg, m, std::regex("minimum of ([0-9]+) bytes"))) << msg;
  const uint64_t minimum = std::stoull(m[1].str());
  // Bytes are compared with misses merged across one bundle stride only: the default gap
  // (16 KiB, measured on 4.5 KiB bundles) spans 32 of this tiny model's 512-byte strides and
  // trades bytes for fewer reads.
  StreamingOptions one_stride;
  one_stride.merge_gap_bytes = NeuronSourceOptions::kGapOneStride;
  for (uint64_t budget : {uint64_t{0}, minimum}) {
    auto dense = GreedyTrace(store, budget, FfnSparsity::kDense, 24);
    auto relu = GreedyTrace(store, budget, FfnSparsity::kRelu, 24, &one_stride);
    auto automatic = GreedyTrace(store, budget, FfnSparsity::kAuto, 4);
    ASSERT_TRUE(dense.ok()) << dense.status().ToString();
    ASSERT_TRUE(relu.ok()) << relu.status().ToString();
    ASSERT_TRUE(automatic.ok()) << automatic.status().ToString();
    EXPECT_EQ(automatic->sparsity, FfnSparsity::kRelu);  // a ReLU model with the gate apart
    EXPECT_EQ(dense->ids, relu->ids) << "budget " << budget;
    ASSERT_EQ(dense->logits.size(), relu->logits.size());
    EXPECT_EQ(0, std::memcmp(dense->logits.data(), relu->logits.data(),
                             dense->logits.size() * sizeof(float)))
        << "logits differ at budget " << budget;
    EXPECT_EQ(dense->stats.ffn_computed_fraction(), 1.0);
    // synth fires each neuron with probability 0.25 on average.
    EXPECT_GT(relu->stats.ffn_computed_fraction(), 0.05);
    EXPECT_LT(relu->stats.ffn_computed_fraction(), 0.6);
    if (budget != 0) {
      EXPECT_GT(dense->stats.bytes_read, 0u);
      EXPECT_LT(relu->stats.bytes_read, dense->stats.bytes_read * 3 / 4);
      EXPECT_LT(relu->stats.bundles_streamed, dense->stats.bundles_streamed);
    }
  }
}

// The minimum budget a store names when asked for 1 byte.
uint64_t NamedMinimum(const std::string& store, const StreamingOptions& streaming) {
  SessionOptions probe;
  probe.threads = 2;
  probe.transformer.max_context = 64;
  probe.transformer.sparsity = FfnSparsity::kRelu;
  probe.streaming = streaming;
  probe.streaming.chunk_bundles = 16;
  probe.budgeted = true;
  probe.budget_bytes = 1;
  auto refused = Session::Open(store, probe);
  EXPECT_EQ(refused.status().code(), StatusCode::kInvalidArgument);
  std::smatch m;
  const std::string msg(refused.status().message());
  EXPECT_TRUE(std::regex_search(msg, m, std::regex("minimum of ([0-9]+) bytes"))) << msg;
  return m.size() > 1 ? std::stoull(m[1].str()) : 0;
}

// relu sparsity with the bundle cache (LRU share, sliding window) and gap merging is bit-identical
// to dense at every budget from unlimited down to the minimum, pipelined and naive; the cache
// serves hits, the window refuses admissions, and a wide merge gap makes fewer, larger reads.
TEST(StoreWeightsTest, ReluWithCacheWindowAndGapMergingIsExactAtEveryBudget) {
  flashlm::testing::ScratchDir dir;
  const std::string store = MakeReluStore(dir, layout::BundleKind::kGateSeparate);
  constexpr uint32_t kSteps = 20;
  auto dense = GreedyTrace(store, 0, FfnSparsity::kDense, kSteps);
  ASSERT_TRUE(dense.ok()) << dense.status().ToString();
  struct Variant {
    double share;
    uint32_t window;
    uint64_t gap;
    bool pipeline;
  };
  const uint64_t stride = NeuronSourceOptions::kGapOneStride;
  const Variant variants[] = {
      {0.0, 0, stride, true},  {0.5, 0, stride, true}, {1.0, 0, stride, true},
      {1.0, 2, stride, true},  {0.5, 4, 0, true},      {1.0, 3, 64 << 10, true},
      {1.0, 2, stride, false}, {0.0, 0, 0, false},
  };
  StreamingOptions base;
  const uint64_t minimum = NamedMinimum(store, base);
  ASSERT_GT(minimum, 0u);
  // With every feature on, a too-small budget still names the same minimum: the cache's share
  // comes out of what is left beyond it.
  StreamingOptions all;
  all.cache_fraction = 1.0;
  all.window_passes = 3;
  all.merge_gap_bytes = 64 << 10;
  EXPECT_EQ(NamedMinimum(store, all), minimum);
  uint64_t full = 0;
  {
    SessionOptions o;
    o.threads = 2;
    o.transformer.max_context = 64;
    o.streaming.chunk_bundles = 16;
    auto s = Session::Open(store, o);
    ASSERT_TRUE(s.ok());
    full = (*s)->planned_bytes();
  }
  ASSERT_GT(full, minimum);
  uint64_t cached_total = 0, refused_total = 0;
  for (uint64_t budget :
       {uint64_t{0}, minimum + (full - minimum) * 3 / 5, minimum + (full - minimum) * 3 / 10,
        minimum + (full - minimum) / 10, minimum}) {
    uint64_t reads_gap0 = 0, reads_wide = 0;
    for (const Variant& v : variants) {
      StreamingOptions so;
      so.cache_fraction = v.share;
      so.window_passes = v.window;
      so.merge_gap_bytes = v.gap;
      so.pipeline = v.pipeline;
      auto relu = GreedyTrace(store, budget, FfnSparsity::kRelu, kSteps, &so);
      ASSERT_TRUE(relu.ok()) << relu.status().ToString();
      const std::string where = "budget " + std::to_string(budget) + " share " +
                                std::to_string(v.share) + " window " + std::to_string(v.window) +
                                " gap " + std::to_string(v.gap) + (v.pipeline ? "" : " naive");
      EXPECT_EQ(dense->ids, relu->ids) << where;
      ASSERT_EQ(dense->logits.size(), relu->logits.size());
      EXPECT_EQ(0, std::memcmp(dense->logits.data(), relu->logits.data(),
                               dense->logits.size() * sizeof(float)))
          << "logits differ at " << where;
      const EngineStats& st = relu->stats;
      // Every bundle asked for is counted once, per layer and in total.
      uint64_t requested = 0, served = 0;
      for (const NeuronLayerStats& l : st.ffn_layers) {
        requested += l.requested;
        served += l.pinned + l.cached + l.streamed;
      }
      EXPECT_EQ(requested, served) << where;
      EXPECT_EQ(requested, st.bundles_resident + st.bundles_streamed) << where;
      EXPECT_EQ(requested, st.ffn_neurons_computed) << where;
      if (v.share == 0) EXPECT_EQ(st.bundles_cached, 0u) << where;
      // Each bundle read is admitted into the cache or served from its buffer.
      EXPECT_EQ(st.bundles_admitted + st.admissions_refused, st.bundles_streamed) << where;
      if (st.bundles_streamed > 0) {
        EXPECT_GE(st.ffn_bytes_read, st.ffn_bytes_requested) << where;
        EXPECT_GT(st.ffn_reads, 0u) << where;
      }
      cached_total += st.bundles_cached;
      refused_total += v.window ? st.admissions_refused : 0;
      if (v.share == 0.5 && v.window == 4 && v.gap == 0) reads_gap0 = st.ffn_reads;
      if (v.share == 1.0 && v.window == 3) reads_wide = st.ffn_reads;
      if (budget == 0) EXPECT_EQ(st.bundles_streamed, 0u) << where;
    }
    if (budget == minimum) {
      // No room for a cache at the minimum: every miss is read; a 64 KiB gap merges them.
      EXPECT_GT(reads_gap0, 0u);
      EXPECT_LT(reads_wide, reads_gap0);
    }
  }
  EXPECT_GT(cached_total, 0u);   // the LRU served bundles
  EXPECT_GT(refused_total, 0u);  // and the window kept some out
}

// A streamed bundle that fails its checksum is Corruption naming the layer and the bundle in relu
// mode too, with the cache and window on or off; the bad bytes are never admitted into the cache.
TEST(StoreWeightsTest, ReluCorruptBundleIsDetectedWithTheCache) {
  StreamingOptions base;
  for (double share : {0.0, 1.0}) {
    flashlm::testing::ScratchDir dir;  // a fresh store each time: the last one was damaged
    const std::string store = MakeReluStore(dir, layout::BundleKind::kGateSeparate);
    const uint64_t minimum = NamedMinimum(store, base);
    StreamingOptions so;
    so.cache_fraction = share;
    so.window_passes = share > 0 ? 2 : 0;
    SessionOptions o;
    o.threads = 2;
    o.budgeted = true;
    o.transformer.max_context = 64;
    o.streaming.chunk_bundles = 16;
    uint64_t full = 0;
    {
      auto all = Session::Open(store, o);  // budget 0: everything resident
      ASSERT_TRUE(all.ok()) << all.status().ToString();
      full = (*all)->planned_bytes();
    }
    ASSERT_GT(full, minimum);
    // At the minimum nothing but the cache's share is small; halfway, a share of 1 gives the
    // bundle bytes beyond the (empty) hot set to the cache.
    o.budget_bytes = share > 0 ? minimum + (full - minimum) / 2 : minimum;
    o.transformer.max_context = 64;
    o.transformer.sparsity = FfnSparsity::kRelu;
    o.streaming = so;
    o.streaming.chunk_bundles = 16;
    auto s = Session::Open(store, o);
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    const uint32_t hidden = (*s)->config().hidden_dim;
    const uint32_t pinned = (*s)->plan()->pinned_bundles[1];
    ASSERT_LT(pinned, hidden / 2) << (*s)->Describe();
    // Once the pinned bundles are loaded: a byte flipped in every other bundle of layer 1, so
    // whichever fire are read and fail.
    {
      auto reader = layout::StoreReader::Open(store);
      ASSERT_TRUE(reader.ok());
      for (uint32_t p = pinned; p < hidden; ++p) {
        const layout::Extent e = (*reader)->BundleExtentAt(1, p);
        testing::FlipByte(fs::path(store) / "data-00000.bin", e.offset_bytes + 7, 0x20);
      }
    }
    for (int attempt = 0; attempt < 2; ++attempt) {
      auto r = (*s)->model().Forward(std::vector<int32_t>{1, 7, 42}, 0);
      ASSERT_FALSE(r.ok());
      EXPECT_EQ(r.status().code(), StatusCode::kCorruption) << r.status().ToString();
      EXPECT_NE(r.status().ToString().find("FFN layer 1"), std::string::npos)
          << r.status().ToString();
      EXPECT_NE(r.status().ToString().find("bundle"), std::string::npos) << r.status().ToString();
    }
    const EngineStats st = (*s)->stats();
    ASSERT_EQ(st.ffn_layers.size(), 2u);
    EXPECT_EQ(st.ffn_layers[1].cached, 0u);  // nothing bad was admitted
    EXPECT_GT(st.ffn_layers[1].streamed, 0u);
    if (share > 0) EXPECT_GT(st.bundles_admitted, 0u);  // layer 0's were
  }
}

TEST(StoreWeightsTest, ReluSparsityIsRefusedWhereItIsNotExactOrSavesNothing) {
  flashlm::testing::ScratchDir dir;
  const std::string together = MakeReluStore(dir, layout::BundleKind::kGateUpDown);
  const std::string silu =
      MakeReluStore(dir, layout::BundleKind::kGateSeparate, layout::Activation::kSilu);
  auto a = GreedyTrace(together, 0, FfnSparsity::kRelu, 1);
  EXPECT_EQ(a.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(a.status().message().find("gate+up-down"), std::string::npos) << a.status().ToString();
  auto b = GreedyTrace(silu, 0, FfnSparsity::kRelu, 1);
  EXPECT_EQ(b.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(b.status().message().find("ReLU"), std::string::npos) << b.status().ToString();
  // auto falls back to dense for both.
  for (const std::string& store : {together, silu}) {
    auto c = GreedyTrace(store, 0, FfnSparsity::kAuto, 2);
    ASSERT_TRUE(c.ok()) << c.status().ToString();
    EXPECT_EQ(c->sparsity, FfnSparsity::kDense);
    EXPECT_EQ(c->stats.ffn_computed_fraction(), 1.0);
  }
}

}  // namespace
}  // namespace flashlm::engine
