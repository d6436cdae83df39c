// No allocation per token: decode steps allocate nothing on the heap, in DRAM and out of core.
//
// This executable replaces the global operator new (every form) with one that counts calls while
// counting is on, from any thread (the pool's workers too). std containers, strings, make_unique
// and std::function all allocate through it. It is its own test binary so that the replacement
// touches no other suite.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdlib>
#include <new>

#include "engine/generator.h"
#include "engine/session.h"
#include "layout/checkpoint.h"
#include "layout/ffn_predictor.h"
#include "layout/ffn_thresholds.h"
#include "layout/repack.h"
#include "layout/store_reader.h"
#include "layout/synth.h"
#include "tests/test_util.h"

namespace {
std::atomic<bool> g_counting{false};
std::atomic<uint64_t> g_allocations{0};

void* Allocate(std::size_t n, std::size_t align) {
  if (g_counting.load(std::memory_order_relaxed)) g_allocations.fetch_add(1);
  if (n == 0) n = 1;
  void* p = align > alignof(std::max_align_t)
                ? std::aligned_alloc(align, (n + align - 1) / align * align)
                : std::malloc(n);
  if (p == nullptr) throw std::bad_alloc();
  return p;
}
}  // namespace

void* operator new(std::size_t n) { return Allocate(n, 0); }
void* operator new[](std::size_t n) { return Allocate(n, 0); }
void* operator new(std::size_t n, std::align_val_t a) {
  return Allocate(n, static_cast<std::size_t>(a));
}
void* operator new[](std::size_t n, std::align_val_t a) {
  return Allocate(n, static_cast<std::size_t>(a));
}
void* operator new(std::size_t n, const std::nothrow_t&) noexcept {
  try {
    return Allocate(n, 0);
  } catch (...) {
    return nullptr;
  }
}
void* operator new[](std::size_t n, const std::nothrow_t&) noexcept {
  try {
    return Allocate(n, 0);
  } catch (...) {
    return nullptr;
  }
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }

namespace flashlm::engine {
namespace {

namespace fs = std::filesystem;

// Runs `steps` decode steps after a prompt and two warm-up steps; returns the allocations the
// counted steps made (-1 if generation failed or ended early).
int64_t AllocationsPerDecode(Session& session, uint32_t steps, bool sampled) {
  SamplerOptions so;
  so.temperature = sampled ? 0.8f : 0.0f;
  so.top_k = sampled ? 40 : 0;
  so.repeat_penalty = sampled ? 1.1f : 1.0f;
  so.seed = 3;
  auto sampler = Sampler::Create(session.config().vocab_size, so);
  if (!sampler.ok()) return -1;
  Generator gen(session.model(), session.tokenizer());
  GenerateOptions o;
  o.max_new_tokens = steps + 4;
  o.ignore_eos = true;
  o.stop_strings = {"never appears in the text, surely"};
  const std::vector<int32_t> prompt = session.tokenizer().Encode("Once upon a time", true);
  if (!gen.Start(prompt, o, **sampler).ok()) return -1;
  for (int i = 0; i < 2; ++i) {
    if (!gen.Next().ok()) return -1;
  }
  g_allocations = 0;
  g_counting = true;
  bool ok = true;
  for (uint32_t i = 0; i < steps && ok; ++i) {
    Result<Generator::Step> step = gen.Next();
    ok = step.ok() && !step->done;
  }
  g_counting = false;
  return ok ? static_cast<int64_t>(g_allocations.load()) : -1;
}

// The smallest budget a store runs at, from the error a 1-byte budget gets.
uint64_t Minimum(const std::string& store, SessionOptions o) {
  o.budgeted = true;
  o.budget_bytes = 1;
  auto refused = Session::Open(store, o);
  const std::string msg(refused.status().message());
  const size_t at = msg.find("minimum of ");
  return at == std::string::npos ? 0 : std::stoull(msg.substr(at + 11));
}

// A session of `o` (a sparse mode) on `store`, at its minimum budget and unlimited: it runs in
// that mode, its decode allocates nothing and computes part of the FFN, not all of it; with
// the lookahead at the minimum it reads ahead.
void ExpectSparseDecodeAllocatesNothing(const std::string& store, SessionOptions o) {
  const uint64_t minimum = Minimum(store, o);
  ASSERT_GT(minimum, 0u);
  for (uint64_t budget : {minimum, uint64_t{0}}) {
    o.budgeted = true;
    o.budget_bytes = budget;
    auto session = Session::Open(store, o);
    ASSERT_TRUE(session.ok()) << session.status().ToString();
    ASSERT_EQ((*session)->model().sparsity(), o.transformer.sparsity);
    EXPECT_EQ(AllocationsPerDecode(**session, 40, true), 0) << "budget " << budget;
    EXPECT_LT((*session)->stats().ffn_computed_fraction(), 1.0);
    EXPECT_GT((*session)->stats().ffn_computed_fraction(), 0.0);
    if (o.transformer.lookahead && budget != 0) {
      EXPECT_GT((*session)->stats().bundles_prefetched, 0u);
    }
  }
}

// The counter sees allocations (so that a zero below means something).
TEST(AllocationTest, CounterCountsAllocations) {
  g_allocations = 0;
  g_counting = true;
  {
    std::vector<int> v(100);
    auto p = std::make_unique<std::string>(200, 'x');
    v.push_back(static_cast<int>(p->size()));
  }
  g_counting = false;
  EXPECT_GE(g_allocations.load(), 2u);
}

TEST(AllocationTest, DecodeInDramAllocatesNothing) {
  FLASHLM_REQUIRE_SHARED_MODEL(gguf, "stories260K-gguf/stories260K.gguf");
  SessionOptions o;
  o.threads = 2;
  o.transformer.max_context = 128;
  auto session = Session::Open(gguf.string(), o);
  ASSERT_TRUE(session.ok()) << session.status().ToString();
  EXPECT_EQ(AllocationsPerDecode(**session, 40, false), 0);
  EXPECT_EQ(AllocationsPerDecode(**session, 40, true), 0);
}

// With lazy pruning (aux cache, masking, revival during decode).
TEST(AllocationTest, LazyDecodeAllocatesNothing) {
  FLASHLM_REQUIRE_SHARED_MODEL(gguf, "stories260K-gguf/stories260K.gguf");
  SessionOptions o;
  o.threads = 2;
  o.transformer.max_context = 128;
  o.transformer.lazy.keep = 0.3f;
  auto session = Session::Open(gguf.string(), o);
  ASSERT_TRUE(session.ok()) << session.status().ToString();
  EXPECT_EQ(AllocationsPerDecode(**session, 40, false), 0);
  EXPECT_GT((*session)->stats().lazy.prunes, 0u);
}

// Out of core: at the minimum budget (attention, bundles and the classifier stream, embedding
// rows on demand), half way to everything resident, unlimited; pipelined, naive, one read per
// bundle.
TEST(AllocationTest, DecodeOutOfCoreAllocatesNothing) {
  FLASHLM_REQUIRE_SHARED_MODEL(gguf, "stories260K-gguf/stories260K.gguf");
  ::flashlm::testing::ScratchDir dir;
  const std::string store = (dir / "store").string();
  {
    auto src = layout::OpenCheckpoint(gguf.string());
    ASSERT_TRUE(src.ok());
    layout::RepackOptions ro;
    ro.alignment_bytes = 512;
    ro.dense_extent_bytes_max = 8192;  // the classifier can stream
    ASSERT_TRUE(layout::Repack(**src, store, ro).ok());
  }
  struct Mode {
    bool pipeline, coalesce;
  };
  for (Mode mode : {Mode{true, true}, Mode{false, true}, Mode{true, false}}) {
    SessionOptions o;
    o.threads = 2;
    o.transformer.max_context = 128;
    o.streaming.chunk_bundles = 64;
    o.streaming.pipeline = mode.pipeline;
    o.streaming.coalesce = mode.coalesce;
    const uint64_t minimum = Minimum(store, o);
    ASSERT_GT(minimum, 0u);
    o.budgeted = true;
    o.budget_bytes = 0;
    auto unlimited = Session::Open(store, o);
    ASSERT_TRUE(unlimited.ok());
    const uint64_t all = (*unlimited)->plan()->total_bytes();
    unlimited->reset();
    for (uint64_t budget : {minimum, (minimum + all) / 2, uint64_t{0}}) {
      o.budget_bytes = budget;
      auto session = Session::Open(store, o);
      ASSERT_TRUE(session.ok()) << session.status().ToString();
      const int64_t allocations = AllocationsPerDecode(**session, 40, true);
      EXPECT_EQ(allocations, 0) << "budget " << budget << " pipeline " << mode.pipeline
                                << " coalesce " << mode.coalesce << "\n"
                                << (*session)->Describe();
      if (budget == minimum) {
        EXPECT_TRUE((*session)->plan()->streams());
        EXPECT_GT((*session)->stats().bytes_read, 0u);
      }
    }
  }
}

// A paged KV cache whose V pages spill to flash (exact, and top-N reading only the kept
// positions' pages), in f32 and q8_0, allocates nothing per token either; nor with lazy pruning
// (revived rows filled into spilled pages).
TEST(AllocationTest, PagedSpilledKvDecodeAllocatesNothing) {
  FLASHLM_REQUIRE_SHARED_MODEL(gguf, "stories260K-gguf/stories260K.gguf");
  ::flashlm::testing::ScratchDir dir;
  const std::string store = (dir / "store").string();
  {
    auto src = layout::OpenCheckpoint(gguf.string());
    ASSERT_TRUE(src.ok());
    ASSERT_TRUE(layout::Repack(**src, store, {}).ok());
  }
  for (float keep : {1.0f, 0.3f})
    for (const char* topn : {"all", "8"}) {
      for (layout::DType dtype : {layout::DType::kF32, layout::DType::kQ8_0}) {
        SessionOptions o;
        o.transformer.lazy.keep = keep;
        o.threads = 2;
        o.transformer.max_context = 128;
        o.kv.paged = true;
        o.kv.page_tokens = 8;
        o.kv.dtype = dtype;
        o.kv.spill_dir = dir.path().string();
        o.kv_topn = *TopNSpec::Parse(topn);
        auto probe = Session::Open(store, o);
        ASSERT_TRUE(probe.ok()) << probe.status().ToString();
        o.kv.pool_bytes =
            cache::KvPageCache::MinimumPoolBytes((*probe)->paged_kv()->pages().layout());
        probe->reset();
        auto session = Session::Open(store, o);
        ASSERT_TRUE(session.ok()) << session.status().ToString();
        ASSERT_TRUE((*session)->paged_kv()->spills());
        const int64_t allocations = AllocationsPerDecode(**session, 40, true);
        EXPECT_EQ(allocations, 0) << "top-N " << topn << " " << layout::DTypeName(dtype) << " keep "
                                  << keep;
        EXPECT_GT((*session)->stats().kv_bytes_read, 0u);
        if (keep < 1.0f) EXPECT_GT((*session)->stats().lazy.prunes, 0u);
      }
    }
}

// Page selection (--kv-select pages) with V spilled and with K and V spilled (--kv-spill kv),
// and top-N reading rows (--kv-fetch rows), at the smallest pool, allocate nothing per token.
TEST(AllocationTest, PageSelectionAndRowFetchDecodeAllocateNothing) {
  FLASHLM_REQUIRE_SHARED_MODEL(gguf, "stories260K-gguf/stories260K.gguf");
  ::flashlm::testing::ScratchDir dir;
  const std::string store = (dir / "store").string();
  {
    auto src = layout::OpenCheckpoint(gguf.string());
    ASSERT_TRUE(src.ok());
    ASSERT_TRUE(layout::Repack(**src, store, {}).ok());
  }
  enum class Mode { kSelect, kSelectSpillKeys, kRows };
  for (Mode mode : {Mode::kSelect, Mode::kSelectSpillKeys, Mode::kRows}) {
    for (layout::DType dtype : {layout::DType::kF32, layout::DType::kQ8_0}) {
      SessionOptions o;
      o.threads = 2;
      o.transformer.max_context = 128;
      o.kv.paged = true;
      o.kv.page_tokens = 8;
      o.kv.dtype = dtype;
      o.kv.spill_dir = dir.path().string();
      o.kv_topn = *TopNSpec::Parse("16");
      o.kv.select_pages = mode != Mode::kRows;
      o.kv.spill_keys = mode == Mode::kSelectSpillKeys;
      o.kv.fetch_rows = mode == Mode::kRows;
      auto probe = Session::Open(store, o);
      ASSERT_TRUE(probe.ok()) << probe.status().ToString();
      o.kv.pool_bytes =
          PagedKvCache::MinimumPoolBytes((*probe)->paged_kv()->pages().layout(), o.kv);
      probe->reset();
      auto session = Session::Open(store, o);
      ASSERT_TRUE(session.ok()) << session.status().ToString();
      ASSERT_TRUE((*session)->paged_kv()->spills());
      const int64_t allocations = AllocationsPerDecode(**session, 40, true);
      EXPECT_EQ(allocations, 0) << "mode " << static_cast<int>(mode) << " "
                                << layout::DTypeName(dtype);
      EXPECT_GT((*session)->stats().kv_bytes_read, 0u) << static_cast<int>(mode);
      if (mode != Mode::kRows) {
        EXPECT_LT((*session)->stats().kv_pages.pages_selected,
                  (*session)->stats().kv_pages.pages_total);
      }
    }
  }
}

// Several sequences in one pass (a server's decode step) allocate nothing either.
TEST(AllocationTest, BatchedDecodeAllocatesNothing) {
  FLASHLM_REQUIRE_SHARED_MODEL(gguf, "stories260K-gguf/stories260K.gguf");
  SessionOptions o;
  o.threads = 2;
  o.transformer.max_context = 64;
  o.transformer.max_sequences = 4;
  auto session = Session::Open(gguf.string(), o);
  ASSERT_TRUE(session.ok()) << session.status().ToString();
  Transformer& model = (*session)->model();
  const std::vector<int32_t> prompt = {1, 403, 407};
  for (uint32_t s = 0; s < 4; ++s) ASSERT_TRUE(model.Forward(prompt, 0, s).ok());
  int32_t tokens[4] = {261, 378, 300, 301};
  uint32_t positions[4] = {3, 3, 3, 3};
  const uint32_t sequences[4] = {0, 1, 2, 3}, rows[4] = {0, 1, 2, 3};
  g_allocations = 0;
  g_counting = true;
  for (int step = 0; step < 20; ++step) {
    TokenBatch batch{tokens, positions, sequences, rows};
    if (!model.Forward(batch).ok()) break;
    for (uint32_t& p : positions) ++p;
  }
  g_counting = false;
  EXPECT_EQ(g_allocations.load(), 0u);
  EXPECT_EQ(positions[0], 23u);
}

// relu sparsity (the firing neurons' bundles requested ad hoc) allocates nothing per token either.
TEST(AllocationTest, ReluSparseDecodeAllocatesNothing) {
  ::flashlm::testing::ScratchDir dir;
  layout::SynthOptions so;
  so.config = *layout::SynthShape("tiny");
  so.config.activation = layout::Activation::kRelu;
  so.dtype = layout::DType::kQ8_0;
  so.fire_rate = 0.25f;
  so.out_path = (dir / "relu.gguf").string();
  ASSERT_TRUE(layout::SynthesizeGguf(so).ok());
  const std::string store = (dir / "store").string();
  {
    auto src = layout::OpenCheckpoint(so.out_path);
    ASSERT_TRUE(src.ok());
    layout::RepackOptions ro;
    ro.alignment_bytes = 512;
    ro.bundle_kind = layout::BundleKind::kGateSeparate;
    ASSERT_TRUE(layout::Repack(**src, store, ro).ok());
  }
  SessionOptions o;
  o.threads = 2;
  o.transformer.max_context = 128;
  o.transformer.sparsity = FfnSparsity::kRelu;
  o.streaming.chunk_bundles = 16;
  ExpectSparseDecodeAllocatesNothing(store, o);
  // With the bundle cache (LRU share, window) and a wide merge gap, between the minimum and all.
  const uint64_t minimum = Minimum(store, o);
  o.budgeted = true;
  uint64_t full = 0;
  {
    o.budget_bytes = 0;
    auto all = Session::Open(store, o);
    ASSERT_TRUE(all.ok()) << all.status().ToString();
    full = (*all)->planned_bytes();
  }
  ASSERT_GT(full, minimum);
  o.streaming.cache_fraction = 1.0;
  o.streaming.merge_gap_bytes = 16 << 10;
  for (uint32_t window : {0u, 3u}) {
    o.streaming.window_passes = window;
    o.budget_bytes = minimum + (full - minimum) / 2;
    auto session = Session::Open(store, o);
    ASSERT_TRUE(session.ok()) << session.status().ToString();
    EXPECT_EQ(AllocationsPerDecode(**session, 40, true), 0) << "window " << window;
    EXPECT_GT((*session)->stats().bundles_cached, 0u) << "window " << window;
    EXPECT_GT((*session)->stats().bundles_streamed, 0u) << "window " << window;
  }
}

// threshold sparsity (the dense gate, then the bundles of neurons above the layer's cut, masked
// per token) allocates nothing per token either.
TEST(AllocationTest, ThresholdSparseDecodeAllocatesNothing) {
  ::flashlm::testing::ScratchDir dir;
  layout::SynthOptions so;
  so.config = *layout::SynthShape("tiny");
  so.dtype = layout::DType::kQ8_0;
  so.out_path = (dir / "silu.gguf").string();
  ASSERT_TRUE(layout::SynthesizeGguf(so).ok());
  const std::string store = (dir / "store").string();
  {
    auto src = layout::OpenCheckpoint(so.out_path);
    ASSERT_TRUE(src.ok());
    layout::RepackOptions ro;
    ro.alignment_bytes = 512;
    ro.bundle_kind = layout::BundleKind::kGateSeparate;
    ASSERT_TRUE(layout::Repack(**src, store, ro).ok());
    auto reader = layout::StoreReader::Open(store);
    ASSERT_TRUE(reader.ok());
    layout::FfnThresholds t;
    t.store_identity = (*reader)->identity();
    t.hidden_dim = so.config.hidden_dim;
    t.target_sparsity = 0.5;
    t.thresholds.assign(so.config.n_layers, 0.02f);
    t.calibrated_sparsity.assign(so.config.n_layers, 0.5);
    ASSERT_TRUE(layout::SaveFfnThresholds(t, store + "/ffn_thresholds.json").ok());
  }
  SessionOptions o;
  o.threads = 2;
  o.transformer.max_context = 128;
  o.transformer.sparsity = FfnSparsity::kThreshold;
  o.streaming.chunk_bundles = 16;
  ExpectSparseDecodeAllocatesNothing(store, o);
}

TEST(AllocationTest, PredictorSparseDecodeAllocatesNothing) {
  ::flashlm::testing::ScratchDir dir;
  layout::SynthOptions so;
  so.config = *layout::SynthShape("tiny");
  so.dtype = layout::DType::kQ8_0;
  so.out_path = (dir / "silu.gguf").string();
  ASSERT_TRUE(layout::SynthesizeGguf(so).ok());
  const std::string store = (dir / "store").string();
  {
    auto src = layout::OpenCheckpoint(so.out_path);
    ASSERT_TRUE(src.ok());
    layout::RepackOptions ro;
    ro.alignment_bytes = 512;
    ro.bundle_kind = layout::BundleKind::kGateUpDown;
    ASSERT_TRUE(layout::Repack(**src, store, ro).ok());
    auto reader = layout::StoreReader::Open(store);
    ASSERT_TRUE(reader.ok());
    layout::FfnPredictor p;
    p.store_identity = (*reader)->identity();
    p.dim = so.config.dim;
    p.hidden = so.config.hidden_dim;
    p.rank = 8;
    p.fire_fraction = 0.1f;
    for (uint32_t l = 0; l < so.config.n_layers; ++l) {
      layout::FfnPredictorLayer pl;
      pl.fire_cut = 0.01f;
      for (uint64_t i = 0; i < uint64_t{p.rank} * p.dim; ++i) pl.a.push_back(((i * 37) % 11) * 0.05f - 0.25f);
      for (uint64_t i = 0; i < uint64_t{p.hidden} * p.rank; ++i) pl.b.push_back(((i * 53) % 13) * 0.1f - 0.6f);
      for (uint32_t i = 0; i < p.hidden; ++i) pl.bias.push_back((i % 5) * 0.2f - 0.4f);
      p.layers.push_back(std::move(pl));
    }
    ASSERT_TRUE(layout::SaveFfnPredictor(p, store + "/ffn_predictor.bin").ok());
  }
  SessionOptions o;
  o.threads = 2;
  o.transformer.max_context = 128;
  o.transformer.sparsity = FfnSparsity::kPredictor;
  o.transformer.predictor_cut = 0.5f;
  o.streaming.chunk_bundles = 16;
  // With and without the lookahead (its guesses read ahead into the chunk ring, parked).
  for (bool lookahead : {false, true}) {
    SCOPED_TRACE(lookahead ? "lookahead" : "no lookahead");
    o.transformer.lookahead = lookahead;
    ExpectSparseDecodeAllocatesNothing(store, o);
  }
}

}  // namespace
}  // namespace flashlm::engine
