#include "engine/paged_kv_cache.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <random>
#include <vector>

#include "engine/generator.h"
#include "engine/kernels.h"
#include "engine/session.h"
#include "layout/checkpoint.h"
#include "layout/llama2c_reader.h"
#include "layout/repack.h"
#include "layout/synth.h"
#include "tests/test_util.h"

namespace flashlm::engine {
namespace {

namespace fs = std::filesystem;
using layout::DType;

layout::ModelConfig Config() {
  layout::ModelConfig c;
  c.n_layers = 2;
  c.n_kv_heads = 2;
  c.head_dim = 20;  // kv_dim 40: a q8_0 row is two blocks, the second zero-padded
  return c;
}

// Rows written through the paged cache come back through Keys/Values runs (which end at page
// boundaries) and KvDot/KvAxpy: bit for bit in f32 (KvDot == DotF32), within the stated bound
// in f16 (relative 2^-11) and q8_0 (half a step of the block's scale, plus the scale's f16
// rounding).
TEST(PagedKvCacheTest, RowsComeBackExactInF32AndWithinBoundOtherwise) {
  flashlm::testing::ScratchDir dir;
  const layout::ModelConfig c = Config();
  const uint32_t kv_dim = 40, positions = 23, seqs = 2;
  std::mt19937 rng(3);
  std::normal_distribution<float> nd(0.0f, 2.0f);
  std::vector<float> k(uint64_t{seqs} * c.n_layers * positions * kv_dim), v(k.size());
  for (float& x : k) x = nd(rng);
  for (float& x : v) x = nd(rng);
  auto at = [&](uint32_t s, uint32_t l, uint32_t p) {
    return ((uint64_t{s} * c.n_layers + l) * positions + p) * kv_dim;
  };
  std::vector<float> q(kv_dim);
  for (float& x : q) x = nd(rng);
  for (DType dtype : {DType::kF32, DType::kF16, DType::kQ8_0}) {
    KvOptions o;
    o.paged = true;
    o.page_tokens = 5;
    o.dtype = dtype;
    o.spill_dir = dir.path().string();
    auto layout = PagedKvCache::Layout(c, positions, seqs, o);
    ASSERT_TRUE(layout.ok());
    // The smallest pool: V pages spill, and attention's fetch brings them back.
    auto kv =
        PagedKvCache::Create(c, positions, seqs, o, cache::KvPageCache::MinimumPoolBytes(*layout),
                             storage::BackendKind::kAuto, true);
    ASSERT_TRUE(kv.ok()) << kv.status().ToString();
    PagedKvCache& cache = **kv;
    EXPECT_TRUE(cache.pages().spills());
    for (uint32_t s = 0; s < seqs; ++s) {
      for (uint32_t p = 0; p < positions; ++p) {
        for (uint32_t l = 0; l < c.n_layers; ++l) {
          ASSERT_TRUE(cache
                          .Write(l, s, p, std::span<const float>(&k[at(s, l, p)], kv_dim),
                                 std::span<const float>(&v[at(s, l, p)], kv_dim))
                          .ok());
        }
      }
      cache.SetLength(s, positions);
    }
    double worst = 0;
    for (uint32_t s = 0; s < seqs; ++s) {
      for (uint32_t l = 0; l < c.n_layers; ++l) {
        ASSERT_TRUE(cache.FetchValues(l, s, positions).ok());
        for (uint32_t p = 0; p < positions;) {
          const KvRows kr = cache.Keys(l, s, p, positions - p);
          const KvRows vr = cache.Values(l, s, p, positions - p);
          ASSERT_EQ(kr.count, vr.count);
          ASSERT_EQ(kr.count, std::min(5 - p % 5, positions - p));  // a page at most
          for (uint32_t i = 0; i < kr.count; ++i) {
            for (uint32_t h = 0; h < c.n_kv_heads; ++h) {
              const uint32_t off = h * c.head_dim;
              const float* want_k = &k[at(s, l, p + i)] + off;
              const float* want_v = &v[at(s, l, p + i)] + off;
              const float dot = KvDot(q.data(), kr, i, off, c.head_dim);
              std::vector<float> got_v(c.head_dim, 0.0f), unit(c.head_dim, 0.0f);
              KvAxpy(1.0f, vr, i, off, got_v.data(), c.head_dim);
              if (dtype == DType::kF32) {
                EXPECT_EQ(dot, DotF32(q.data(), want_k, c.head_dim));
                EXPECT_EQ(got_v, std::vector<float>(want_v, want_v + c.head_dim));
                continue;
              }
              // Bounds per value of V (the dot's error follows from K's, the same rule).
              for (uint32_t j = 0; j < c.head_dim; ++j) {
                const float x = want_v[j];
                const double err = std::abs(double{got_v[j]} - x);
                double bound;
                if (dtype == DType::kF16) {
                  bound = std::abs(x) * std::ldexp(1.0, -11) + 1e-7;
                } else {
                  const float* row = &v[at(s, l, p + i)];
                  const uint32_t b = (off + j) / 32 * 32;
                  float amax = 0;
                  for (uint32_t e = b; e < std::min(b + 32, kv_dim); ++e) {
                    amax = std::max(amax, std::abs(row[e]));
                  }
                  const double d = amax / 127.0;
                  bound = d / 2 + 127 * d * std::ldexp(1.0, -11) + 1e-7;
                }
                worst = std::max(worst, err / bound);
                EXPECT_LE(err, bound) << DTypeName(dtype) << " value " << x;
              }
            }
          }
          p += kr.count;
        }
        cache.ReleaseValues();
      }
    }
    if (dtype != DType::kF32) {
      RecordProperty(std::string(DTypeName(dtype)) + "_worst_error_over_bound",
                     std::to_string(worst));
    }
    EXPECT_GT(cache.pages().stats().reads, 0u);
  }
}

TEST(PagedKvCacheTest, BadOptionsAreRefused) {
  const layout::ModelConfig c = Config();
  KvOptions o;
  o.dtype = DType::kQ4_0;
  EXPECT_EQ(PagedKvCache::Layout(c, 16, 1, o).status().code(), StatusCode::kInvalidArgument);
  o.dtype = DType::kF16;
  o.page_tokens = 0;
  EXPECT_EQ(PagedKvCache::Layout(c, 16, 1, o).status().code(), StatusCode::kInvalidArgument);
  o.page_tokens = kKvPageTokensMax + 1;
  EXPECT_EQ(PagedKvCache::Layout(c, 16, 1, o).status().code(), StatusCode::kInvalidArgument);
}

// Greedy ids and the logits of every step, after a prompt (prefill) and `steps` decode steps.
struct Trace {
  std::vector<int32_t> ids;
  std::vector<float> logits;
  EngineStats stats;
  bool spills = false;
};

Result<Trace> RunTrace(const std::string& store, const KvOptions& kv, uint32_t steps,
                       const std::string& tokenizer = "", const TopNSpec& topn = {}) {
  SessionOptions o;
  o.kv_topn = topn;
  o.threads = 2;
  o.tokenizer_path = tokenizer;
  o.transformer.max_context = 96;
  o.transformer.max_batch = 16;
  o.kv = kv;
  ASSIGN_OR_RETURN(std::unique_ptr<Session> s, Session::Open(store, o));
  Trace t;
  std::vector<int32_t> ids = {1, 7, 42, 99, 5, 17, 3, 250, 11, 60, 8, 2};
  for (int32_t& id : ids) id %= static_cast<int32_t>(s->config().vocab_size);
  std::span<const float> logits;
  ASSIGN_OR_RETURN(logits, Prefill(s->model(), ids, 0));
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
  t.spills = s->paged_kv() != nullptr && s->paged_kv()->pages().spills();
  return t;
}

// f32 paged KV, all in DRAM or with V pages spilled to flash at the smallest pool, gives greedy
// ids and logits identical to the flat cache (exact attention is bit-identical), for several
// page sizes; f16 and q8_0 state their agreement.
void ExpectPagedIdentical(const std::string& store, const std::string& tokenizer,
                          const std::string& name) {
  const uint32_t steps = 60;
  KvOptions flat;
  auto want = RunTrace(store, flat, steps, tokenizer);
  ASSERT_TRUE(want.ok()) << want.status().ToString();
  for (uint32_t page : {5u, 16u}) {
    for (bool spill : {false, true}) {
      KvOptions kv;
      kv.paged = true;
      kv.page_tokens = page;
      if (spill) {
        // The smallest pool the cache takes: K, one layer's V, the pages being filled.
        SessionOptions probe;
        kv.pool_bytes = 1;
        probe.kv = kv;
        probe.tokenizer_path = tokenizer;
        probe.transformer.max_context = 96;
        auto refused = Session::Open(store, probe);
        ASSERT_EQ(refused.status().code(), StatusCode::kInvalidArgument);
        const std::string msg(refused.status().message());
        const size_t open = msg.find('(');
        ASSERT_NE(open, std::string::npos) << msg;
        kv.pool_bytes = std::stoull(msg.substr(open + 1));
      }
      auto got = RunTrace(store, kv, steps, tokenizer);
      ASSERT_TRUE(got.ok()) << got.status().ToString();
      EXPECT_EQ(got->spills, spill) << name;
      EXPECT_EQ(got->ids, want->ids) << name << " page " << page << " spill " << spill;
      EXPECT_TRUE(got->logits == want->logits) << name << " page " << page << " spill " << spill;
      if (spill) {
        EXPECT_GT(got->stats.kv_bytes_read, 0u) << name;
        EXPECT_GT(got->stats.kv_bytes_written, 0u) << name;
      } else {
        EXPECT_EQ(got->stats.kv_bytes_read, 0u) << name;
      }
      EXPECT_GT(got->stats.attention_ns, 0u);
    }
  }
  for (DType dtype : {DType::kF16, DType::kQ8_0}) {
    KvOptions kv;
    kv.paged = true;
    kv.dtype = dtype;
    auto got = RunTrace(store, kv, steps, tokenizer);
    ASSERT_TRUE(got.ok()) << got.status().ToString();
    size_t agree = 0;
    while (agree < got->ids.size() && got->ids[agree] == want->ids[agree]) ++agree;
    double max_diff = 0;
    const size_t n = std::min(got->logits.size(), want->logits.size());
    const size_t vocab = want->logits.size() / steps;
    // Logits compared only while the two runs have seen the same tokens.
    for (size_t i = 0; i < n && i / vocab + 12 <= agree; ++i) {
      max_diff = std::max(max_diff, double{std::abs(got->logits[i] - want->logits[i])});
    }
    ::testing::Test::RecordProperty(
        name + "_" + std::string(DTypeName(dtype)) + "_greedy_prefix_agreeing",
        std::to_string(agree - 12) + "/" + std::to_string(steps));
    ::testing::Test::RecordProperty(name + "_" + std::string(DTypeName(dtype)) + "_max_logit_diff",
                                    std::to_string(max_diff));
    std::printf(
        "%s %s KV: greedy agrees with f32 for %zu of %u tokens, max |logit diff| %.4g "
        "while they agree\n",
        name.c_str(), std::string(DTypeName(dtype)).c_str(), agree - 12, steps, max_diff);
    // The first token after the prompt comes from the prompt's KV alone: it must agree.
    EXPECT_GT(agree, 12u) << name << " " << DTypeName(dtype);
    EXPECT_GT(max_diff, 0.0) << "a rounded KV cache cannot be bit-identical";
  }
}

TEST(PagedKvCacheTest, Stories260KFromEachStoreIdenticalToFlat) {
  FLASHLM_REQUIRE_SHARED_MODEL(tokp, "stories260K/tok512.bin");
  int ran = 0;
  for (const char* src : {"stories260K/stories260K.bin", "stories260K-gguf/stories260K.gguf",
                          "stories260K-hf-derived"}) {
    const fs::path p = ::flashlm::testing::SharedModel(src);
    if (p.empty()) continue;
    layout::OpenOptions open;
    open.tokenizer_path = tokp.string();
    auto ck = layout::OpenCheckpoint(p.string(), open);
    if (!ck.ok()) ck = layout::OpenCheckpoint(p.string());
    ASSERT_TRUE(ck.ok()) << src << ": " << ck.status().ToString();
    ::flashlm::testing::ScratchDir dir;
    const std::string store = (dir / "store").string();
    ASSERT_TRUE(layout::Repack(**ck, store, {}).ok());
    ExpectPagedIdentical(store, tokp.string(), fs::path(src).filename().string());
    ++ran;
  }
  EXPECT_GT(ran, 0);
}

// The smallest pool Session::Open takes for `kv`, from the message of a 1-byte one.
uint64_t MinimumPool(const std::string& store, KvOptions kv) {
  SessionOptions probe;
  kv.pool_bytes = 1;
  probe.kv = kv;
  probe.transformer.max_context = 96;
  auto refused = Session::Open(store, probe);
  EXPECT_EQ(refused.status().code(), StatusCode::kInvalidArgument);
  const std::string msg(refused.status().message());
  const size_t open = msg.find('(');
  return open == std::string::npos ? 0 : std::stoull(msg.substr(open + 1));
}

// Top-N attention with V pages on flash reads only the pages holding kept positions: its output
// is identical to top-N over the same cache in DRAM (the same selection and sums), it reads
// fewer bytes than exact attention with the same spill, and top-N with N >= the context is exact.
TEST(PagedKvCacheTest, TopNWithSpilledValuesMatchesTopNInDram) {
  ::flashlm::testing::ScratchDir dir;
  layout::SynthOptions so;
  so.config = *layout::SynthShape("tiny");
  so.seed = 9;
  so.out_path = (dir / "tiny.gguf").string();
  ASSERT_TRUE(layout::SynthesizeGguf(so).ok());
  auto src = layout::OpenCheckpoint(so.out_path);
  ASSERT_TRUE(src.ok());
  const std::string store = (dir / "store").string();
  ASSERT_TRUE(layout::Repack(**src, store, {}).ok());
  const uint32_t steps = 60;
  KvOptions dram;
  dram.paged = true;
  dram.page_tokens = 4;
  KvOptions spilled = dram;
  spilled.pool_bytes = MinimumPool(store, dram);
  ASSERT_GT(spilled.pool_bytes, 0u);
  auto exact = RunTrace(store, spilled, steps, "", TopNSpec{});
  ASSERT_TRUE(exact.ok()) << exact.status().ToString();
  for (const char* spec : {"8", "10%"}) {
    const TopNSpec topn = *TopNSpec::Parse(spec);
    auto in_dram = RunTrace(store, dram, steps, "", topn);
    auto on_flash = RunTrace(store, spilled, steps, "", topn);
    ASSERT_TRUE(in_dram.ok() && on_flash.ok());
    EXPECT_TRUE(on_flash->spills);
    EXPECT_EQ(on_flash->ids, in_dram->ids) << spec;
    EXPECT_TRUE(on_flash->logits == in_dram->logits) << spec;
    EXPECT_GT(on_flash->stats.kv_bytes_read, 0u);
    EXPECT_LT(on_flash->stats.kv_bytes_read, exact->stats.kv_bytes_read) << spec;
    EXPECT_FALSE(on_flash->logits == exact->logits) << spec << " changes attention";
  }
  auto everything = RunTrace(store, spilled, steps, "", *TopNSpec::Parse("96"));
  ASSERT_TRUE(everything.ok());
  EXPECT_TRUE(everything->logits == exact->logits);
}

// --kv-fetch rows and pages read V of the same selected positions: top-N output is identical
// (ids and every logit) between them and to top-N in DRAM; rows mode reads no more than a page
// per read, and never keeps a page it read rows of.
TEST(PagedKvCacheTest, TopNRowFetchIdenticalToPageFetch) {
  ::flashlm::testing::ScratchDir dir;
  layout::SynthOptions so;
  so.config = *layout::SynthShape("tiny");
  so.seed = 11;
  so.out_path = (dir / "tiny.gguf").string();
  ASSERT_TRUE(layout::SynthesizeGguf(so).ok());
  auto src = layout::OpenCheckpoint(so.out_path);
  ASSERT_TRUE(src.ok());
  const std::string store = (dir / "store").string();
  ASSERT_TRUE(layout::Repack(**src, store, {}).ok());
  const uint32_t steps = 50;
  KvOptions pages;
  pages.paged = true;
  pages.page_tokens = 8;
  KvOptions dram = pages;
  pages.pool_bytes = MinimumPool(store, pages);
  KvOptions rows = pages;
  rows.fetch_rows = true;
  rows.pool_bytes = MinimumPool(store, rows);
  ASSERT_GT(rows.pool_bytes, 0u);
  for (const char* spec : {"4", "10%"}) {
    const TopNSpec topn = *TopNSpec::Parse(spec);
    auto in_dram = RunTrace(store, dram, steps, "", topn);
    auto by_page = RunTrace(store, pages, steps, "", topn);
    auto by_row = RunTrace(store, rows, steps, "", topn);
    ASSERT_TRUE(in_dram.ok() && by_page.ok() && by_row.ok());
    EXPECT_TRUE(by_page->spills && by_row->spills);
    EXPECT_EQ(by_row->ids, by_page->ids) << spec;
    EXPECT_TRUE(by_row->logits == by_page->logits) << spec;
    EXPECT_TRUE(by_row->logits == in_dram->logits) << spec;
    EXPECT_GT(by_row->stats.kv_reads, 0u);
    EXPECT_LE(by_row->stats.kv_bytes_read, by_row->stats.kv_reads * 4096) << spec;
    std::printf("top-%s: pages %llu B in %llu reads, rows %llu B in %llu reads\n", spec,
                static_cast<unsigned long long>(by_page->stats.kv_bytes_read),
                static_cast<unsigned long long>(by_page->stats.kv_reads),
                static_cast<unsigned long long>(by_row->stats.kv_bytes_read),
                static_cast<unsigned long long>(by_row->stats.kv_reads));
  }
}

// Under --mem-budget the plan gives the KV cache its share: all of it when the budget allows,
// else what the budget holds beyond the weights' minimum (V pages spilling), never more than
// the budget; output stays identical.
TEST(PagedKvCacheTest, TheBudgetGivesTheKvCacheItsShare) {
  ::flashlm::testing::ScratchDir dir;
  layout::SynthOptions so;
  so.config = *layout::SynthShape("tiny");
  so.seed = 4;
  so.out_path = (dir / "tiny.gguf").string();
  ASSERT_TRUE(layout::SynthesizeGguf(so).ok());
  auto src = layout::OpenCheckpoint(so.out_path);
  ASSERT_TRUE(src.ok());
  const std::string store = (dir / "store").string();
  ASSERT_TRUE(layout::Repack(**src, store, {}).ok());
  SessionOptions o;
  o.threads = 2;
  o.transformer.max_context = 96;
  o.kv.paged = true;
  o.kv.page_tokens = 4;
  o.budgeted = true;
  auto all = Session::Open(store, o);
  ASSERT_TRUE(all.ok()) << all.status().ToString();
  const cache::KvPageCache& full = (*all)->paged_kv()->pages();
  EXPECT_EQ(full.pool_bytes(), cache::KvPageCache::FullPoolBytes(full.layout()));
  EXPECT_FALSE(full.spills());
  const uint64_t pool_full = full.pool_bytes();
  const layout::VCacheLayout kl = full.layout();
  const uint64_t stride = kl.page_stride_bytes();
  all->reset();
  // The minimum names the least KV pool; eight pages more go to the KV cache, not the weights.
  o.budget_bytes = 1;
  auto refused = Session::Open(store, o);
  ASSERT_EQ(refused.status().code(), StatusCode::kInvalidArgument);
  const std::string msg(refused.status().message());
  const size_t at = msg.find("minimum of ");
  ASSERT_NE(at, std::string::npos) << msg;
  const uint64_t minimum = std::stoull(msg.substr(at + 11));
  o.budget_bytes = minimum;
  auto least = Session::Open(store, o);
  ASSERT_TRUE(least.ok()) << least.status().ToString();
  EXPECT_EQ((*least)->paged_kv()->pages().pool_bytes(), cache::KvPageCache::MinimumPoolBytes(kl));
  least->reset();
  o.budget_bytes = minimum + 8 * stride;
  auto tight = Session::Open(store, o);
  ASSERT_TRUE(tight.ok()) << tight.status().ToString();
  const cache::KvPageCache& part = (*tight)->paged_kv()->pages();
  EXPECT_TRUE(part.spills());
  EXPECT_LT(part.pool_bytes(), pool_full);
  EXPECT_GT(part.pool_bytes(), cache::KvPageCache::MinimumPoolBytes(part.layout()));
  EXPECT_LE((*tight)->planned_bytes(), o.budget_bytes);
}

TEST(PagedKvCacheTest, SynthModelIdenticalToFlat) {
  ::flashlm::testing::ScratchDir dir;
  layout::SynthOptions so;
  so.config = *layout::SynthShape("tiny");
  so.dtype = DType::kQ8_0;
  so.seed = 5;
  so.out_path = (dir / "tiny.gguf").string();
  ASSERT_TRUE(layout::SynthesizeGguf(so).ok());
  auto src = layout::OpenCheckpoint(so.out_path);
  ASSERT_TRUE(src.ok());
  const std::string store = (dir / "store").string();
  ASSERT_TRUE(layout::Repack(**src, store, {}).ok());
  ExpectPagedIdentical(store, "", "synth-tiny");
}

// Page bounds of the cache: for every dtype, after writes and a rewind into a page, every page's
// bounds hold every stored K row (KeyPageBound over them >= KvDot of each row with random
// queries, head by head), and a rewound page's bounds equal those of a cache that never held the
// dropped rows.
TEST(PagedKvCacheTest, KeyPageBoundsHoldEveryRowOfThePage) {
  flashlm::testing::ScratchDir dir;
  const layout::ModelConfig c = Config();
  const uint32_t kv_dim = 40, positions = 37, hd = c.head_dim;
  std::mt19937 rng(23);
  std::normal_distribution<float> nd(0.0f, 3.0f);
  for (DType dtype : {DType::kF32, DType::kF16, DType::kQ8_0}) {
    KvOptions o;
    o.paged = true;
    o.page_tokens = 6;
    o.dtype = dtype;
    o.select_pages = true;
    o.spill_dir = dir.path().string();
    auto layout = PagedKvCache::Layout(c, positions, 1, o);
    ASSERT_TRUE(layout.ok());
    const uint64_t pool = cache::KvPageCache::FullPoolBytes(*layout);
    auto a = PagedKvCache::Create(c, positions, 1, o, pool, storage::BackendKind::kAuto, true);
    auto b = PagedKvCache::Create(c, positions, 1, o, pool, storage::BackendKind::kAuto, true);
    ASSERT_TRUE(a.ok() && b.ok());
    EXPECT_EQ((*a)->bound_page_tokens(), 6u);
    EXPECT_EQ((*a)->resident_bytes(), PagedKvCache::BytesNeeded(*layout, pool, o));
    std::vector<float> rows(uint64_t{positions} * kv_dim), v(kv_dim, 0.5f);
    for (float& x : rows) x = nd(rng);
    auto write = [&](PagedKvCache& kv, uint32_t p, const float* k) {
      for (uint32_t l = 0; l < c.n_layers; ++l) {
        ASSERT_TRUE(kv.Write(l, 0, p, std::span<const float>(k, kv_dim), v).ok());
      }
    };
    // a: 0..29, rewound to 21 (mid-page 3), then 21..36 with other values; b: only the final.
    std::vector<float> other(rows);
    for (uint32_t i = 21 * kv_dim; i < other.size(); ++i) other[i] = nd(rng) * 5;
    for (uint32_t p = 0; p < 30; ++p) write(**a, p, &rows[uint64_t{p} * kv_dim]);
    for (uint32_t p = 21; p < positions; ++p) write(**a, p, &other[uint64_t{p} * kv_dim]);
    for (uint32_t p = 0; p < positions; ++p) write(**b, p, &other[uint64_t{p} * kv_dim]);
    if (HasFatalFailure()) return;
    std::vector<float> q(hd);
    for (uint32_t l = 0; l < c.n_layers; ++l) {
      for (uint64_t page = 0; page * 6 < positions; ++page) {
        const std::span<const float> ba = (*a)->KeyPageBounds(l, 0, page);
        const std::span<const float> bb = (*b)->KeyPageBounds(l, 0, page);
        ASSERT_EQ(ba.size(), 2u * kv_dim);
        EXPECT_TRUE(std::equal(ba.begin(), ba.end(), bb.begin())) << "page " << page;
        for (int trial = 0; trial < 20; ++trial) {
          for (float& x : q) x = nd(rng);
          for (uint32_t h = 0; h < c.n_kv_heads; ++h) {
            const float bound =
                KeyPageBound(q.data(), ba.data() + h * hd, ba.data() + kv_dim + h * hd, hd);
            for (uint32_t p = page * 6; p < std::min<uint64_t>(positions, page * 6 + 6);) {
              const KvRows r = (*a)->Keys(l, 0, p, positions - p);
              for (uint32_t i = 0; i < r.count; ++i) {
                ASSERT_GE(bound, KvDot(q.data(), r, i, h * hd, hd))
                    << DTypeName(dtype) << " page " << page << " pos " << p + i;
              }
              p += r.count;
            }
          }
        }
      }
    }
  }
}

// KvCache::Fill (a LazyLLM revival: a row below the sequence's length that the layer had not
// computed) keeps page selection's K bounds and, with K spilled, the K page's flash copy right.
// Cache `a` gets the even positions by Write, its length set past them, then the odd positions
// by Fill (out of order, and in a page whose later rows are written); `b` gets every row by
// Write, in order. Afterwards every page's bounds are equal bit for bit (min and max of the same
// rows), and every K and V row read back — after the smallest pool with K spilled (--kv-spill kv)
// has evicted and re-read pages — equals b's byte for byte. Each dtype.
TEST(PagedKvCacheTest, FillKeepsKeyBoundsAndSpilledKeyPages) {
  flashlm::testing::ScratchDir dir;
  const layout::ModelConfig c = Config();
  const uint32_t kv_dim = 40, positions = 37, P = 6;
  std::mt19937 rng(29);
  std::normal_distribution<float> nd(0.0f, 3.0f);
  for (DType dtype : {DType::kF32, DType::kF16, DType::kQ8_0}) {
    for (bool spill : {false, true}) {
      KvOptions o;
      o.paged = true;
      o.page_tokens = P;
      o.dtype = dtype;
      o.select_pages = true;
      o.spill_keys = spill;
      o.spill_dir = dir.path().string();
      auto layout = PagedKvCache::Layout(c, positions, 1, o);
      ASSERT_TRUE(layout.ok());
      const uint64_t full = cache::KvPageCache::FullPoolBytes(*layout);
      const uint64_t pool = spill ? cache::KvPageCache::MinimumPoolBytes(*layout, true) : full;
      if (spill) {
        ASSERT_LT(pool, full);  // pages leave DRAM
      }
      auto a = PagedKvCache::Create(c, positions, 1, o, pool, storage::BackendKind::kAuto, true);
      auto b = PagedKvCache::Create(c, positions, 1, o, full, storage::BackendKind::kAuto, true);
      ASSERT_TRUE(a.ok() && b.ok()) << a.status().ToString();
      EXPECT_EQ((*a)->spills_keys(), spill);
      std::vector<float> k(uint64_t{c.n_layers} * positions * kv_dim),
          v(uint64_t{c.n_layers} * positions * kv_dim);
      for (float& x : k) x = nd(rng);
      for (float& x : v) x = nd(rng);
      auto row = [&](std::vector<float>& m, uint32_t l, uint32_t p) {
        return std::span<const float>(m.data() + (uint64_t{l} * positions + p) * kv_dim, kv_dim);
      };
      for (uint32_t p = 0; p < positions; ++p) {
        for (uint32_t l = 0; l < c.n_layers; ++l) {
          ASSERT_TRUE((*b)->Write(l, 0, p, row(k, l, p), row(v, l, p)).ok());
          if (p % 2 == 0) {
            ASSERT_TRUE((*a)->Write(l, 0, p, row(k, l, p), row(v, l, p)).ok());
          }
        }
      }
      (*a)->SetLength(0, positions);
      (*b)->SetLength(0, positions);
      // Odd positions, last first: a fill below rows already in a page's bounds, and above.
      for (uint32_t p = positions - (positions % 2 == 0 ? 1 : 2); p < positions; p -= 2) {
        for (uint32_t l = 0; l < c.n_layers; ++l) {
          Status st = (*a)->Fill(l, 0, p, row(k, l, p), row(v, l, p));
          ASSERT_TRUE(st.ok()) << st.ToString();
        }
      }
      const std::string what = std::string(DTypeName(dtype)) + (spill ? " K spilled" : "");
      if (spill) {
        EXPECT_GT((*a)->pages().stats().bytes_read, 0u) << what;  // pages left and came back
      }
      const uint32_t n_pages = (positions + P - 1) / P;
      std::vector<uint8_t> every(n_pages, 1);
      for (uint32_t l = 0; l < c.n_layers; ++l) {
        for (uint32_t page = 0; page < n_pages; ++page) {
          const std::span<const float> ba = (*a)->KeyPageBounds(l, 0, page);
          const std::span<const float> bb = (*b)->KeyPageBounds(l, 0, page);
          EXPECT_TRUE(std::equal(ba.begin(), ba.end(), bb.begin()))
              << what << " layer " << l << " page " << page;
        }
        Status st = (*a)->FetchPages(l, 0, positions, every);
        ASSERT_TRUE(st.ok()) << st.ToString();
        for (uint32_t p = 0; p < positions; ++p) {
          const KvRows ka = (*a)->Keys(l, 0, p, 1), kb = (*b)->Keys(l, 0, p, 1);
          const KvRows va = (*a)->Values(l, 0, p, 1), vb = (*b)->Values(l, 0, p, 1);
          const uint64_t rb = ka.stride_bytes;
          EXPECT_EQ(std::memcmp(ka.data, kb.data, rb), 0) << what << " K " << l << "," << p;
          EXPECT_EQ(std::memcmp(va.data, vb.data, rb), 0) << what << " V " << l << "," << p;
        }
        (*a)->ReleaseValues();
      }
    }
  }
}

// Bad combinations of the page-selection and K-spill options are refused with InvalidArgument.
TEST(PagedKvCacheTest, PageSelectionOptionsAreChecked) {
  ::flashlm::testing::ScratchDir dir;
  layout::SynthOptions so;
  so.config = *layout::SynthShape("tiny");
  so.seed = 3;
  so.out_path = (dir / "tiny.gguf").string();
  ASSERT_TRUE(layout::SynthesizeGguf(so).ok());
  auto src = layout::OpenCheckpoint(so.out_path);
  ASSERT_TRUE(src.ok());
  const std::string store = (dir / "store").string();
  ASSERT_TRUE(layout::Repack(**src, store, {}).ok());
  auto open = [&](KvOptions kv) {
    SessionOptions o;
    o.transformer.max_context = 64;
    o.kv = kv;
    return Session::Open(store, o).status();
  };
  KvOptions kv;
  kv.select_pages = true;  // not paged
  EXPECT_EQ(open(kv).code(), StatusCode::kInvalidArgument);
  kv = KvOptions();
  kv.paged = true;
  kv.spill_keys = true;  // without page selection
  EXPECT_EQ(open(kv).code(), StatusCode::kInvalidArgument);
  kv.select_pages = true;
  kv.fetch_rows = true;  // rows do not apply to whole pages
  EXPECT_EQ(open(kv).code(), StatusCode::kInvalidArgument);
  kv.fetch_rows = false;
  EXPECT_TRUE(open(kv).ok()) << open(kv).ToString();
  // Directly: a K-spilling cache without bounds.
  KvOptions direct;
  direct.paged = true;
  direct.spill_keys = true;
  EXPECT_EQ(
      PagedKvCache::Create(Config(), 16, 1, direct, 1 << 20, storage::BackendKind::kAuto, true)
          .status()
          .code(),
      StatusCode::kInvalidArgument);
}

// Page selection choosing every page (--kv-topn all, or a budget >= the context) is exact
// attention bit for bit — ids and every logit equal the flat cache's — with the cache in DRAM,
// with V spilled and with K and V spilled (--kv-spill kv) at their smallest pools. With a small
// budget it changes attention, reads fewer spilled bytes than exact attention, and gives the
// same output whether its pages come from DRAM or from flash (the same bounds and choices).
// Query heads of the model in `store`.
uint32_t QueryHeads(const std::string& store) {
  SessionOptions o;
  o.transformer.max_context = 8;
  auto s = Session::Open(store, o);
  return s.ok() ? (*s)->config().n_heads : 0;
}

void ExpectPageSelectionExactAndSpillNeutral(bool shared) {
  ::flashlm::testing::ScratchDir dir;
  layout::SynthOptions so;
  so.config = *layout::SynthShape("tiny");
  so.seed = 13;
  so.out_path = (dir / "tiny.gguf").string();
  ASSERT_TRUE(layout::SynthesizeGguf(so).ok());
  auto src = layout::OpenCheckpoint(so.out_path);
  ASSERT_TRUE(src.ok());
  const std::string store = (dir / "store").string();
  ASSERT_TRUE(layout::Repack(**src, store, {}).ok());
  const uint32_t steps = 50;
  auto flat = RunTrace(store, KvOptions(), steps);
  ASSERT_TRUE(flat.ok()) << flat.status().ToString();
  KvOptions dram;
  dram.paged = true;
  dram.page_tokens = 4;
  dram.select_pages = true;
  dram.select_shared = shared;
  KvOptions v_spill = dram;
  v_spill.pool_bytes = MinimumPool(store, v_spill);
  KvOptions kv_spill = dram;
  kv_spill.spill_keys = true;
  kv_spill.pool_bytes = MinimumPool(store, kv_spill);
  ASSERT_GT(v_spill.pool_bytes, 0u);
  ASSERT_GT(kv_spill.pool_bytes, 0u);
  EXPECT_LT(kv_spill.pool_bytes, v_spill.pool_bytes);
  KvOptions exact_spill = dram;
  exact_spill.select_pages = false;
  exact_spill.pool_bytes = MinimumPool(store, exact_spill);
  auto exact = RunTrace(store, exact_spill, steps);
  ASSERT_TRUE(exact.ok()) << exact.status().ToString();
  for (const char* spec : {"all", "96"}) {
    for (const KvOptions* kv : {&dram, &v_spill, &kv_spill}) {
      auto got = RunTrace(store, *kv, steps, "", *TopNSpec::Parse(spec));
      ASSERT_TRUE(got.ok()) << got.status().ToString();
      EXPECT_EQ(got->spills, kv != &dram);
      EXPECT_EQ(got->ids, flat->ids) << spec;
      EXPECT_TRUE(got->logits == flat->logits) << spec << " spill " << (kv != &dram);
      EXPECT_EQ(got->stats.kv_pages.pages_selected, got->stats.kv_pages.pages_total);
      EXPECT_GT(got->stats.kv_pages.pages_total, 0u);
      if (kv != &dram) EXPECT_GT(got->stats.kv_bytes_read, 0u) << "pages came back from flash";
    }
  }
  for (const char* spec : {"8", "10%"}) {
    const TopNSpec topn = *TopNSpec::Parse(spec);
    auto in_dram = RunTrace(store, dram, steps, "", topn);
    auto v_flash = RunTrace(store, v_spill, steps, "", topn);
    auto kv_flash = RunTrace(store, kv_spill, steps, "", topn);
    ASSERT_TRUE(in_dram.ok() && v_flash.ok() && kv_flash.ok());
    EXPECT_TRUE(v_flash->spills && kv_flash->spills);
    EXPECT_GT(kv_flash->stats.kv_bytes_written, 0u);
    EXPECT_EQ(v_flash->ids, in_dram->ids) << spec;
    EXPECT_EQ(kv_flash->ids, in_dram->ids) << spec;
    EXPECT_TRUE(v_flash->logits == in_dram->logits) << spec;
    EXPECT_TRUE(kv_flash->logits == in_dram->logits) << spec;
    EXPECT_FALSE(in_dram->logits == flat->logits) << spec << " changes attention";
    EXPECT_LT(in_dram->stats.kv_pages.pages_selected, in_dram->stats.kv_pages.pages_total);
    if (shared) {  // every head reads the same pages: the union is one head's share
      EXPECT_EQ(in_dram->stats.kv_pages.pages_selected * QueryHeads(store),
                in_dram->stats.kv_pages.head_pages_selected);
    }
    // (The few pages chosen may all stay in the pool's LRU: no read is needed then.)
    EXPECT_LT(v_flash->stats.kv_bytes_read, exact->stats.kv_bytes_read) << spec;
    EXPECT_LT(kv_flash->stats.kv_bytes_read, exact->stats.kv_bytes_read) << spec;
  }
}

TEST(PagedKvCacheTest, PageSelectionOfEveryPageIsExactAndSpillChangesNothing) {
  ExpectPageSelectionExactAndSpillNeutral(false);
}

// The same with one choice of pages shared by every head (--kv-select shared).
TEST(PagedKvCacheTest, SharedPageSelectionOfEveryPageIsExactAndSpillChangesNothing) {
  ExpectPageSelectionExactAndSpillNeutral(true);
}

}  // namespace
}  // namespace flashlm::engine
