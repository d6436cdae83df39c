// LazyLLM prompt-token pruning in the forward pass (TransformerOptions::lazy) and its aux cache:
// off and "nothing to prune" are bit-identical to the dense pass; pruning computes the scheduled
// number of tokens per layer; revival computes a pruned token's missing layer from its stored
// state; bad options are refused.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <vector>

#include "engine/attention_topn.h"
#include "engine/generator.h"
#include "engine/session.h"
#include "layout/checkpoint.h"
#include "layout/repack.h"
#include "layout/synth.h"
#include "tests/engine/test_models.h"
#include "tests/test_util.h"

namespace flashlm::engine {
namespace {

namespace fs = std::filesystem;

struct Trace {
  std::vector<int32_t> ids;
  std::vector<float> logits;  // the prefill's, then each decode step's
  EngineStats stats;
  bool spills = false;  // V pages went to flash
};

// A prompt of `n` token ids: a story text's tokens, repeated.
std::vector<int32_t> Prompt(const Tokenizer& tok, uint32_t n) {
  const std::vector<int32_t> text = tok.Encode(
      "Once upon a time, there was a little girl named Lily. She loved to play outside in the "
      "park with her dog Max. One day, Lily saw a big red ball under a tree. She ran to get it, "
      "but a bird flew down and took it away. Lily was sad, but Max barked and ran after the "
      "bird. The bird dropped the ball and Lily laughed.",
      true);
  std::vector<int32_t> ids;
  while (ids.size() < n) ids.push_back(text[ids.size() % text.size()]);
  return ids;
}

Result<Trace> RunTrace(const std::string& model, const std::string& tokenizer,
                       const LazyOptions& lazy, uint32_t prompt_tokens, uint32_t steps,
                       uint32_t batch = 512, const KvOptions& kv = {}, const TopNSpec& topn = {}) {
  SessionOptions o;
  o.kv = kv;
  o.kv_topn = topn;
  o.threads = 2;
  o.tokenizer_path = tokenizer;
  o.transformer.max_context = 512;
  o.transformer.max_batch = batch;
  o.transformer.lazy = lazy;
  ASSIGN_OR_RETURN(std::unique_ptr<Session> s, Session::Open(model, o));
  Trace t;
  t.ids = Prompt(s->tokenizer(), prompt_tokens);
  std::span<const float> logits;
  ASSIGN_OR_RETURN(logits, Prefill(s->model(), t.ids, 0));
  for (uint32_t i = 0; i < steps; ++i) {
    t.logits.insert(t.logits.end(), logits.begin(), logits.end());
    const int32_t next =
        static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
    t.ids.push_back(next);
    ASSIGN_OR_RETURN(logits, s->model().Forward(std::span<const int32_t>(&t.ids.back(), 1),
                                                static_cast<uint32_t>(t.ids.size() - 1)));
  }
  t.stats = s->stats();
  t.spills = s->paged_kv() != nullptr && s->paged_kv()->pages().spills();
  return t;
}

// keep 1 is off (no aux cache); keep 0.9999 turns the lazy path on but, for prompts of fewer
// than 10^4 tokens, ceil(f x len) keeps every token: both must equal the dense pass bit for bit
// (logits of the prefill and of every greedy step), prefilled in one pass and in several.
void ExpectOffIsExact(const std::string& model, const std::string& tokenizer,
                      const std::string& name) {
  for (uint32_t batch : {512u, 64u}) {
    auto want = RunTrace(model, tokenizer, LazyOptions{}, 300, 40, batch);
    ASSERT_TRUE(want.ok()) << want.status().ToString();
    EXPECT_TRUE(want->stats.lazy.layer_tokens.empty());
    for (float keep : {1.0f, 0.9999f}) {
      LazyOptions lazy;
      lazy.keep = keep;
      auto got = RunTrace(model, tokenizer, lazy, 300, 40, batch);
      ASSERT_TRUE(got.ok()) << got.status().ToString();
      EXPECT_EQ(got->ids, want->ids) << name << " keep " << keep << " batch " << batch;
      EXPECT_TRUE(got->logits == want->logits) << name << " keep " << keep << " batch " << batch;
      if (keep < 1.0f) {
        EXPECT_EQ(got->stats.lazy.prunes, 0u);
        EXPECT_EQ(got->stats.lazy.flops, got->stats.lazy.dense_flops);
        ASSERT_EQ(got->stats.lazy.layer_tokens.size(), got->stats.lazy.layer_tokens.size());
        for (uint64_t n : got->stats.lazy.layer_tokens) EXPECT_EQ(n, 300u + 40u);
      }
    }
  }
}

TEST(TransformerLazyTest, Stories260KOffIsBitIdenticalToDense) {
  FLASHLM_REQUIRE_SHARED_MODEL(bin, "stories260K/stories260K.bin");
  FLASHLM_REQUIRE_SHARED_MODEL(tok, "stories260K/tok512.bin");
  ExpectOffIsExact(bin.string(), tok.string(), "stories260K");
}

TEST(TransformerLazyTest, SynthModelOffIsBitIdenticalToDense) {
  ::flashlm::testing::ScratchDir dir;
  layout::SynthOptions so;
  so.config = *layout::SynthShape("tiny");
  so.config.max_seq_len = std::max(so.config.max_seq_len, 512u);
  so.dtype = layout::DType::kQ8_0;
  so.seed = 9;
  so.out_path = (dir / "tiny.gguf").string();
  ASSERT_TRUE(layout::SynthesizeGguf(so).ok());
  ExpectOffIsExact(so.out_path, "", "synth-tiny");
  auto src = layout::OpenCheckpoint(so.out_path);
  ASSERT_TRUE(src.ok());
  const std::string store = (dir / "store").string();
  ASSERT_TRUE(layout::Repack(**src, store, {}).ok());
  ExpectOffIsExact(store, "", "synth-tiny store");
}

// stories260K has 5 layers: the default pruning layers are 1, 2, 3 and the kept fractions after
// them 1 - 0.6/3, 1 - 1.2/3, 0.4 for keep 0.4.
TEST(TransformerLazyTest, PruningComputesTheScheduledTokensPerLayer) {
  FLASHLM_REQUIRE_SHARED_MODEL(bin, "stories260K/stories260K.bin");
  FLASHLM_REQUIRE_SHARED_MODEL(tok, "stories260K/tok512.bin");
  EXPECT_EQ(DefaultLazyLayers(5), (std::vector<uint32_t>{1, 2, 3}));
  EXPECT_EQ(DefaultLazyLayers(12), (std::vector<uint32_t>{3, 4, 5, 6, 7, 8, 9, 10}));
  LazyOptions lazy;
  lazy.keep = 0.4f;
  const uint32_t n = 400;
  auto got = RunTrace(bin.string(), tok.string(), lazy, n, 0);
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  const LazyStats& z = got->stats.lazy;
  auto ceil_of = [&](float f) { return static_cast<uint64_t>(std::ceil(double{f} * n)); };
  const std::vector<uint64_t> want = {n, n, ceil_of(1.0f - 0.6f / 3), ceil_of(1.0f - 1.2f / 3),
                                      ceil_of(0.4f)};
  EXPECT_EQ(z.layer_tokens, want);
  EXPECT_EQ(z.pass_tokens, n);
  EXPECT_EQ(z.prunes, n - want[4]);
  EXPECT_EQ(z.revivals, 0u);
  EXPECT_EQ(z.aux_bytes, (n - want[4]) * 64 * sizeof(float));  // dim 64
  EXPECT_EQ(z.aux_capacity_bytes, cache::LazyAuxCache::BytesNeeded(64, 512));
  EXPECT_LT(z.flops, z.dense_flops);
  // Explicit layers: prune after layer 0 only, to 0.25.
  lazy.layers = {0};
  lazy.keep = 0.25f;
  got = RunTrace(bin.string(), tok.string(), lazy, n, 0);
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  EXPECT_EQ(got->stats.lazy.layer_tokens, (std::vector<uint64_t>{n, n / 4, n / 4, n / 4, n / 4}));
}

// After a lazy prefill, decode steps revive pruned tokens. A revived token's first missing
// layer d is computed from the hidden state the aux cache stored: its K and V rows in layer d
// must be what RMSNorm, W_k / W_v and RoPE at its original position give for that state
// (computed here by the scalar reference's arithmetic), and its rows in layers below d must
// not have been touched.
TEST(TransformerLazyTest, RevivalComputesTheMissingLayerFromTheStoredState) {
  FLASHLM_REQUIRE_SHARED_MODEL(bin, "stories260K/stories260K.bin");
  FLASHLM_REQUIRE_SHARED_MODEL(tok, "stories260K/tok512.bin");
  testing::RefWeights w;
  ASSERT_TRUE(testing::ReadLlama2c(bin.string(), w));
  SessionOptions o;
  o.threads = 2;
  o.tokenizer_path = tok.string();
  o.transformer.max_context = 512;
  o.transformer.max_batch = 512;
  o.transformer.lazy.keep = 0.3f;
  auto s = Session::Open(bin.string(), o);
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  Transformer& model = (*s)->model();
  const layout::ModelConfig& c = model.config();
  const uint32_t kv = c.n_kv_heads * c.head_dim, d = c.dim;
  std::vector<int32_t> ids = Prompt((*s)->tokenizer(), 300);
  auto logits = Prefill(model, ids, 0);
  ASSERT_TRUE(logits.ok());
  const cache::LazyAuxCache& aux = *model.lazy_aux();
  ASSERT_GT(aux.held(), 0u);
  // Every held token's stored state and layer count, and its K rows below that layer.
  std::vector<uint32_t> layers(ids.size());
  std::vector<std::vector<float>> held(ids.size()), k_below(ids.size());
  auto row = [&](uint32_t layer, uint32_t pos, bool value) {
    const KvRows r =
        value ? model.kv_cache().Values(layer, 0, pos, 1) : model.kv_cache().Keys(layer, 0, pos, 1);
    const float* f = reinterpret_cast<const float*>(r.data);
    return std::vector<float>(f, f + kv);
  };
  for (uint32_t p = 0; p < ids.size(); ++p) {
    layers[p] = aux.computed_layers(p);
    if (layers[p] == c.n_layers) continue;
    held[p].assign(aux.hidden(p).begin(), aux.hidden(p).end());
    for (uint32_t l = 0; l < layers[p]; ++l) {
      const std::vector<float> k = row(l, p, false);
      k_below[p].insert(k_below[p].end(), k.begin(), k.end());
    }
  }
  // One decode step at a time until some token is revived.
  uint64_t revived = 0;
  std::vector<uint32_t> checked;
  for (int step = 0; step < 20 && checked.empty(); ++step) {
    const int32_t next =
        static_cast<int32_t>(std::max_element(logits->begin(), logits->end()) - logits->begin());
    ids.push_back(next);
    logits = model.Forward(std::span<const int32_t>(&ids.back(), 1),
                           static_cast<uint32_t>(ids.size() - 1));
    ASSERT_TRUE(logits.ok());
    for (uint32_t p = 0; p + 1 < ids.size() && p < layers.size(); ++p) {
      if (layers[p] == c.n_layers || aux.computed_layers(p) <= layers[p]) continue;
      checked.push_back(p);
      const uint32_t l = layers[p];
      // The reference: x -> RMSNorm(attn_norm of l) -> W_k, W_v of l -> RoPE(K) at p.
      std::vector<float> xb(d), k(kv), v(kv);
      float ss = 0;
      for (uint32_t i = 0; i < d; ++i) ss += held[p][i] * held[p][i];
      ss = 1.0f / std::sqrt(ss / d + c.norm_eps);
      for (uint32_t i = 0; i < d; ++i) xb[i] = w.rms_att[uint64_t{l} * d + i] * (ss * held[p][i]);
      for (uint32_t r = 0; r < kv; ++r) {
        float sk = 0, sv = 0;
        for (uint32_t j = 0; j < d; ++j) {
          sk += w.wk[(uint64_t{l} * kv + r) * d + j] * xb[j];
          sv += w.wv[(uint64_t{l} * kv + r) * d + j] * xb[j];
        }
        k[r] = sk;
        v[r] = sv;
      }
      for (uint32_t i = 0; i < kv; i += 2) {
        const uint32_t j = i % c.head_dim;
        const float freq = 1.0f / std::pow(c.rope_theta, j / static_cast<float>(c.head_dim));
        const float a = k[i], b = k[i + 1], fc = std::cos(p * freq), fs = std::sin(p * freq);
        k[i] = a * fc - b * fs;
        k[i + 1] = a * fs + b * fc;
      }
      const std::vector<float> got_k = row(l, p, false), got_v = row(l, p, true);
      for (uint32_t i = 0; i < kv; ++i) {
        EXPECT_NEAR(got_k[i], k[i], 1e-4f * (1 + std::abs(k[i]))) << "pos " << p << " layer " << l;
        EXPECT_NEAR(got_v[i], v[i], 1e-4f * (1 + std::abs(v[i]))) << "pos " << p << " layer " << l;
      }
      std::vector<float> below;
      for (uint32_t j = 0; j < l; ++j) {
        const std::vector<float> kj = row(j, p, false);
        below.insert(below.end(), kj.begin(), kj.end());
      }
      EXPECT_TRUE(below == k_below[p]) << "pos " << p << ": layers below " << l << " recomputed";
    }
    revived = (*s)->stats().lazy.revivals;
  }
  EXPECT_FALSE(checked.empty()) << "no token was revived in 20 decode steps";
  EXPECT_GE(revived, checked.size());
}

TEST(TransformerLazyTest, BadOptionsAreRefused) {
  for (float keep : {0.0f, -0.5f, 1.5f, std::nanf("")}) {
    LazyOptions lazy;
    lazy.keep = keep;
    EXPECT_EQ(ValidateLazy(lazy, 5).code(), StatusCode::kInvalidArgument) << keep;
  }
  LazyOptions lazy;
  lazy.keep = 0.5f;
  EXPECT_TRUE(ValidateLazy(lazy, 5).ok());
  EXPECT_EQ(ValidateLazy(lazy, 1).code(), StatusCode::kInvalidArgument);  // nothing to prune at
  lazy.layers = {4};  // the last layer: nothing after it
  EXPECT_EQ(ValidateLazy(lazy, 5).code(), StatusCode::kInvalidArgument);
  lazy.layers = {2, 1};
  EXPECT_EQ(ValidateLazy(lazy, 5).code(), StatusCode::kInvalidArgument);
  lazy.layers = {1, 1};
  EXPECT_EQ(ValidateLazy(lazy, 5).code(), StatusCode::kInvalidArgument);
  lazy.layers = {0, 3};
  EXPECT_TRUE(ValidateLazy(lazy, 5).ok());

  FLASHLM_REQUIRE_SHARED_MODEL(bin, "stories260K/stories260K.bin");
  FLASHLM_REQUIRE_SHARED_MODEL(tok, "stories260K/tok512.bin");
  SessionOptions o;
  o.tokenizer_path = tok.string();
  o.transformer.max_context = 128;
  o.transformer.lazy.keep = 0.5f;
  o.transformer.lazy.layers = {7};
  EXPECT_EQ(Session::Open(bin.string(), o).status().code(), StatusCode::kInvalidArgument);
  o.transformer.lazy.layers = {};
  o.transformer.max_sequences = 2;  // several sequences: each its own pruning (test below)
  EXPECT_TRUE(Session::Open(bin.string(), o).ok());
}

// The smallest KV pool Session::Open takes for `kv` (KvPageCache::MinimumPoolBytes of its
// layout): V pages spill.
uint64_t MinimumPool(const std::string& model, const std::string& tokenizer, KvOptions kv) {
  SessionOptions probe;
  probe.kv = kv;
  probe.tokenizer_path = tokenizer;
  probe.transformer.max_context = 512;
  auto s = Session::Open(model, probe);
  EXPECT_TRUE(s.ok()) << s.status().ToString();
  if (!s.ok() || (*s)->paged_kv() == nullptr) return 0;
  return cache::KvPageCache::MinimumPoolBytes((*s)->paged_kv()->pages().layout(), kv.spill_keys);
}

// The paged KV cache under lazy pruning: pages of a layer that computed none of their positions
// do not exist, rows of revived tokens are filled in below the sequence's length (KvCache::Fill)
// and, when V spills, written back to flash. With f32 pages, exact attention over a paged cache
// is bit-identical to the flat one, so lazy prefill + decode (with revivals, in one pass and in
// 5 passes) must give the same ids and every logit as lazy with the flat cache: in DRAM and with
// V spilled at the smallest pool, for two page sizes. keep 0.9999 (lazy path on, nothing pruned)
// over the spilled cache equals the dense pass.
TEST(TransformerLazyTest, PagedKvCacheMatchesFlatUnderPruning) {
  FLASHLM_REQUIRE_SHARED_MODEL(bin, "stories260K/stories260K.bin");
  FLASHLM_REQUIRE_SHARED_MODEL(tok, "stories260K/tok512.bin");
  for (uint32_t batch : {512u, 64u}) {
    LazyOptions lazy;
    lazy.keep = 0.3f;
    auto want = RunTrace(bin.string(), tok.string(), lazy, 300, 40, batch);
    ASSERT_TRUE(want.ok()) << want.status().ToString();
    ASSERT_GT(want->stats.lazy.revivals, 0u);
    ASSERT_GT(want->stats.lazy.prunes, 0u);
    for (uint32_t page : {16u, 7u}) {
      for (bool spill : {false, true}) {
        KvOptions kv;
        kv.paged = true;
        kv.page_tokens = page;
        if (spill) {
          kv.pool_bytes = MinimumPool(bin.string(), tok.string(), kv);
          ASSERT_GT(kv.pool_bytes, 0u);
        }
        auto got = RunTrace(bin.string(), tok.string(), lazy, 300, 40, batch, kv);
        ASSERT_TRUE(got.ok()) << got.status().ToString();
        const std::string what = "batch " + std::to_string(batch) + " page " +
                                 std::to_string(page) + (spill ? " spilled" : " in DRAM");
        EXPECT_EQ(got->spills, spill) << what;
        if (spill) EXPECT_GT(got->stats.kv_bytes_read, 0u) << what;
        EXPECT_EQ(got->ids, want->ids) << what;
        EXPECT_TRUE(got->logits == want->logits) << what;
        EXPECT_EQ(got->stats.lazy.layer_tokens, want->stats.lazy.layer_tokens) << what;
        EXPECT_EQ(got->stats.lazy.revivals, want->stats.lazy.revivals) << what;
      }
    }
  }
  KvOptions kv;
  kv.paged = true;
  kv.pool_bytes = MinimumPool(bin.string(), tok.string(), kv);
  auto dense = RunTrace(bin.string(), tok.string(), LazyOptions{}, 300, 40, 64);
  LazyOptions nothing;
  nothing.keep = 0.9999f;
  auto got = RunTrace(bin.string(), tok.string(), nothing, 300, 40, 64, kv);
  ASSERT_TRUE(dense.ok() && got.ok());
  EXPECT_TRUE(got->spills);
  EXPECT_EQ(got->ids, dense->ids);
  EXPECT_TRUE(got->logits == dense->logits);
}

// Lazy pruning with top-N attention (--kv-topn): the policy's N positions are taken among those
// the layer holds (a position it never computed has probability 0 and is dropped). References:
// (1) N >= the context keeps every position, so it must equal lazy alone bit for bit; (2) the
// flat cache (selection after the softmax, V read in DRAM) and the paged cache with V spilled
// (the two-phase path that fetches only the pages of selected positions, by pages and by rows)
// make the same selection and sums, so ids and logits must be identical; (3) N < the context
// changes the output (top-N is active alongside pruning).
TEST(TransformerLazyTest, TopNAttentionTakesPositionsTheLayerHolds) {
  FLASHLM_REQUIRE_SHARED_MODEL(bin, "stories260K/stories260K.bin");
  FLASHLM_REQUIRE_SHARED_MODEL(tok, "stories260K/tok512.bin");
  LazyOptions lazy;
  lazy.keep = 0.3f;
  auto alone = RunTrace(bin.string(), tok.string(), lazy, 300, 40, 64);
  ASSERT_TRUE(alone.ok()) << alone.status().ToString();
  auto all = RunTrace(bin.string(), tok.string(), lazy, 300, 40, 64, {}, *TopNSpec::Parse("512"));
  ASSERT_TRUE(all.ok()) << all.status().ToString();
  EXPECT_EQ(all->ids, alone->ids);
  EXPECT_TRUE(all->logits == alone->logits);
  for (const char* spec : {"24", "10%"}) {
    const TopNSpec topn = *TopNSpec::Parse(spec);
    auto flat = RunTrace(bin.string(), tok.string(), lazy, 300, 40, 64, {}, topn);
    ASSERT_TRUE(flat.ok()) << flat.status().ToString();
    EXPECT_GT(flat->stats.lazy.revivals, 0u);
    EXPECT_FALSE(flat->logits == alone->logits) << spec;
    for (bool rows : {false, true}) {
      KvOptions kv;
      kv.paged = true;
      kv.page_tokens = 8;
      kv.fetch_rows = rows;
      kv.pool_bytes = MinimumPool(bin.string(), tok.string(), kv);
      auto paged = RunTrace(bin.string(), tok.string(), lazy, 300, 40, 64, kv, topn);
      ASSERT_TRUE(paged.ok()) << paged.status().ToString();
      EXPECT_TRUE(paged->spills);
      EXPECT_EQ(paged->ids, flat->ids) << spec << (rows ? " rows" : " pages");
      EXPECT_TRUE(paged->logits == flat->logits) << spec << (rows ? " rows" : " pages");
    }
  }
}

// Lazy pruning with page selection (--kv-select pages|shared): a revived token's K row goes in
// with KvCache::Fill, which rebuilds its page's K bounds and, with --kv-spill kv, writes the K
// page back to flash; a page none of whose positions a layer computed is neither bounded, fetched
// nor read. (1) Every page chosen (--kv-topn all) is exact attention over the positions the layer
// holds, so it must equal lazy alone (flat cache) bit for bit — ids, every logit, tokens per layer
// and revivals — per head and shared, two page sizes, in DRAM and with K and V spilled at the
// smallest pool, in one pass and in 5. (2) With a budget of 64 positions (selection active: not
// lazy alone's output) the same output from DRAM and with K and V on flash (a K page that Fill
// left stale on flash would be read back and differ). The bounds Fill leaves are checked against
// bounds built in order in tests/engine/paged_kv_cache_test.cc.
TEST(TransformerLazyTest, PageSelectionOfEveryPageEqualsLazyAlone) {
  FLASHLM_REQUIRE_SHARED_MODEL(bin, "stories260K/stories260K.bin");
  FLASHLM_REQUIRE_SHARED_MODEL(tok, "stories260K/tok512.bin");
  LazyOptions lazy;
  lazy.keep = 0.3f;
  for (uint32_t batch : {512u, 64u}) {
    auto alone = RunTrace(bin.string(), tok.string(), lazy, 300, 40, batch);
    ASSERT_TRUE(alone.ok()) << alone.status().ToString();
    ASSERT_GT(alone->stats.lazy.revivals, 0u);
    for (bool shared : {false, true}) {
      for (uint32_t page : {16u, 7u}) {
        for (bool spill : {false, true}) {
          KvOptions kv;
          kv.paged = true;
          kv.page_tokens = page;
          kv.select_pages = true;
          kv.select_shared = shared;
          if (spill) {
            kv.spill_keys = true;
            kv.pool_bytes = MinimumPool(bin.string(), tok.string(), kv);
            ASSERT_GT(kv.pool_bytes, 0u);
          }
          const std::string what = std::string(shared ? "shared" : "pages") + " batch " +
                                   std::to_string(batch) + " page " + std::to_string(page) +
                                   (spill ? " K+V spilled" : " in DRAM");
          auto got = RunTrace(bin.string(), tok.string(), lazy, 300, 40, batch, kv);
          ASSERT_TRUE(got.ok()) << what << ": " << got.status().ToString();
          EXPECT_EQ(got->spills, spill) << what;
          if (spill) {
            EXPECT_GT(got->stats.kv_bytes_read, 0u) << what;
            EXPECT_GT(got->stats.kv_bytes_written, 0u) << what;
          }
          // (every page chosen; a page none of whose positions the layer computed is not read)
          EXPECT_GT(got->stats.kv_pages.pages_selected, 0u) << what;
          EXPECT_LE(got->stats.kv_pages.pages_selected, got->stats.kv_pages.pages_total) << what;
          EXPECT_EQ(got->ids, alone->ids) << what;
          EXPECT_TRUE(got->logits == alone->logits) << what;
          EXPECT_EQ(got->stats.lazy.layer_tokens, alone->stats.lazy.layer_tokens) << what;
          EXPECT_EQ(got->stats.lazy.revivals, alone->stats.lazy.revivals) << what;
        }
      }
    }
  }
  for (bool shared : {false, true}) {
    KvOptions dram;
    dram.paged = true;
    dram.page_tokens = 8;
    dram.select_pages = true;
    dram.select_shared = shared;
    KvOptions flash = dram;
    flash.spill_keys = true;
    flash.pool_bytes = MinimumPool(bin.string(), tok.string(), flash);
    const TopNSpec topn = *TopNSpec::Parse("64");
    auto alone = RunTrace(bin.string(), tok.string(), lazy, 300, 40, 64);
    auto in_dram = RunTrace(bin.string(), tok.string(), lazy, 300, 40, 64, dram, topn);
    auto on_flash = RunTrace(bin.string(), tok.string(), lazy, 300, 40, 64, flash, topn);
    ASSERT_TRUE(alone.ok() && in_dram.ok() && on_flash.ok())
        << in_dram.status().ToString() << on_flash.status().ToString();
    EXPECT_TRUE(on_flash->spills);
    EXPECT_GT(in_dram->stats.lazy.revivals, 0u);
    EXPECT_LT(in_dram->stats.kv_pages.pages_selected, in_dram->stats.kv_pages.pages_total);
    EXPECT_FALSE(in_dram->logits == alone->logits) << "selection is active";
    EXPECT_EQ(on_flash->ids, in_dram->ids) << shared;
    EXPECT_TRUE(on_flash->logits == in_dram->logits) << shared;
    EXPECT_EQ(on_flash->stats.kv_pages.pages_selected, in_dram->stats.kv_pages.pages_selected);
  }
}

// Several sequences in one pass (a server's batch): each is ranked by its own last token and
// prunes and revives only its own positions, so two prompts prefilled together in one pass and
// decoded together (one token of each per pass) give, per sequence, the ids and every logit of
// that prompt run alone with lazy pruning. The aux cache is sized and charged per sequence.
TEST(TransformerLazyTest, SequencesOfOnePassPruneIndependently) {
  FLASHLM_REQUIRE_SHARED_MODEL(bin, "stories260K/stories260K.bin");
  FLASHLM_REQUIRE_SHARED_MODEL(tok, "stories260K/tok512.bin");
  LazyOptions lazy;
  lazy.keep = 0.3f;
  const uint32_t steps = 30;
  const uint32_t lengths[2] = {300, 170};
  // Alone: RunTrace's prompt of each length (sequence 0, one pass).
  std::vector<Trace> alone;
  for (uint32_t len : lengths) {
    auto t = RunTrace(bin.string(), tok.string(), lazy, len, steps);
    ASSERT_TRUE(t.ok()) << t.status().ToString();
    ASSERT_GT(t->stats.lazy.revivals, 0u);
    alone.push_back(*t);
  }
  SessionOptions o;
  o.threads = 2;
  o.tokenizer_path = tok.string();
  o.transformer.max_context = 512;
  o.transformer.max_batch = 512;
  o.transformer.max_sequences = 2;
  o.transformer.lazy = lazy;
  auto s = Session::Open(bin.string(), o);
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  Transformer& model = (*s)->model();
  ASSERT_NE(model.lazy_aux(), nullptr);
  EXPECT_EQ(model.lazy_aux()->resident_bytes(), cache::LazyAuxCache::BytesNeeded(64, 512, 2));
  TransformerOptions one = o.transformer;
  one.max_sequences = 1;
  TransformerOptions off = o.transformer;
  off.lazy = LazyOptions{};
  const WeightsShape shape;
  EXPECT_GE(Transformer::BytesNeeded((*s)->config(), o.transformer, 2, shape) -
                Transformer::BytesNeeded((*s)->config(), off, 2, shape),
            2 * cache::LazyAuxCache::BytesNeeded(64, 512));
  EXPECT_GT(Transformer::BytesNeeded((*s)->config(), o.transformer, 2, shape),
            Transformer::BytesNeeded((*s)->config(), one, 2, shape));
  std::vector<int32_t> ids[2];
  std::vector<float> logits[2];
  for (int q = 0; q < 2; ++q) ids[q] = Prompt((*s)->tokenizer(), lengths[q]);
  std::vector<int32_t> tokens;
  std::vector<uint32_t> positions, sequences, wanted;
  auto run = [&](bool prompt) -> Status {
    tokens.clear();
    positions.clear();
    sequences.clear();
    wanted.clear();
    for (uint32_t q = 0; q < 2; ++q) {
      const uint32_t first = prompt ? 0u : static_cast<uint32_t>(ids[q].size() - 1);
      for (uint32_t p = first; p < ids[q].size(); ++p) {
        tokens.push_back(ids[q][p]);
        positions.push_back(p);
        sequences.push_back(q);
      }
      wanted.push_back(static_cast<uint32_t>(tokens.size() - 1));
    }
    TokenBatch b;
    b.tokens = tokens;
    b.positions = positions;
    b.sequences = sequences;
    b.logits_for = wanted;
    ASSIGN_OR_RETURN(std::span<const float> out, model.Forward(b));
    const uint32_t vocab = (*s)->config().vocab_size;
    for (uint32_t q = 0; q < 2; ++q) {
      const std::span<const float> row = out.subspan(uint64_t{q} * vocab, vocab);
      logits[q].insert(logits[q].end(), row.begin(), row.end());
      ids[q].push_back(
          static_cast<int32_t>(std::max_element(row.begin(), row.end()) - row.begin()));
    }
    return Status::Ok();
  };
  ASSERT_TRUE(run(true).ok());
  // As RunTrace: `steps` decode passes, the last one's logits and token not recorded.
  for (uint32_t i = 0; i < steps; ++i) ASSERT_TRUE(run(false).ok());
  for (int q = 0; q < 2; ++q) {
    ids[q].resize(lengths[q] + steps);
    logits[q].resize(uint64_t{steps} * (*s)->config().vocab_size);
  }
  const LazyStats z = model.lazy_stats();
  EXPECT_EQ(z.revivals, alone[0].stats.lazy.revivals + alone[1].stats.lazy.revivals);
  EXPECT_EQ(z.prunes, alone[0].stats.lazy.prunes + alone[1].stats.lazy.prunes);
  for (int q = 0; q < 2; ++q) {
    EXPECT_EQ(ids[q], alone[q].ids) << "sequence " << q;
    EXPECT_TRUE(logits[q] == alone[q].logits) << "sequence " << q;
  }
}

// A sequence started again at position 0 with a shorter prompt holds only what the new prompt
// pruned: the earlier, longer prompt's held states beyond the new prompt's length are dropped,
// not left counted in the aux bytes — also when the KV cache's length was cut back first (as a
// failed pass does, or a caller emptying a slot), so that length no longer covers them.
TEST(TransformerLazyTest, ANewPromptInTheSameSequenceDropsTheOldHeldStates) {
  FLASHLM_REQUIRE_SHARED_MODEL(bin, "stories260K/stories260K.bin");
  FLASHLM_REQUIRE_SHARED_MODEL(tok, "stories260K/tok512.bin");
  SessionOptions o;
  o.threads = 2;
  o.tokenizer_path = tok.string();
  o.transformer.max_context = 512;
  o.transformer.max_batch = 512;
  o.transformer.lazy.keep = 0.3f;
  auto s = Session::Open(bin.string(), o);
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  Transformer& model = (*s)->model();
  const std::vector<int32_t> long_prompt = Prompt((*s)->tokenizer(), 300);
  ASSERT_TRUE(model.Forward(long_prompt, 0).ok());
  const cache::LazyAuxCache& aux = *model.lazy_aux();
  uint32_t held_beyond = 0;
  for (uint32_t p = 60; p < 300; ++p) held_beyond += aux.computed_layers(p) < aux.n_layers();
  ASSERT_GT(held_beyond, 0u);
  model.kv_cache().SetLength(0, 0);
  const std::vector<int32_t> short_prompt = Prompt((*s)->tokenizer(), 60);
  ASSERT_TRUE(model.Forward(short_prompt, 0).ok());
  uint32_t held_short = 0;
  for (uint32_t p = 0; p < 512; ++p) {
    if (aux.computed_layers(p) == aux.n_layers()) continue;
    EXPECT_LT(p, 60u) << "position " << p << " of the old prompt is still held";
    ++held_short;
  }
  EXPECT_GT(held_short, 0u);
  EXPECT_EQ(aux.held(), held_short);
  EXPECT_EQ(model.lazy_stats().aux_bytes, uint64_t{held_short} * 64 * sizeof(float));
}

}  // namespace
}  // namespace flashlm::engine
