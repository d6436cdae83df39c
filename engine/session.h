// Session: a model ready to run, assembled from a store or a checkpoint under a memory budget.
//
// Open() is where the parts meet and the one place the budget is split:
//  - a flashlm store: the catalog is read (layout::StoreReader), the store's parts say what they
//    need (StoreWeights::Measure), the engine adds what it holds itself — the forward pass's
//    buffers (Transformer::BytesNeeded), the KV cache (FlatKvCache::BytesNeeded), the tokenizer
//    — and PlanResidency splits the budget (0: unlimited, everything resident, read once with no
//    second copy); the weights are then loaded per the plan (StoreWeights::Open);
//  - a checkpoint (GGUF, HF folder, llama2.c .bin): every tensor is read into DRAM
//    (DramWeightStore); a budget needs a store.
// The session owns the thread pool, the tokenizer, the weights, the KV cache and the model, and
// produces statistics as plain structs (EngineStats, IoReport) for tools to print or serialise.
// Generation runs on it step by step (engine/generator.h). Not thread-safe.
#ifndef FLASHLM_ENGINE_SESSION_H_
#define FLASHLM_ENGINE_SESSION_H_

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "engine/attention_pages.h"
#include "engine/attention_topn.h"
#include "engine/kv_cache.h"
#include "engine/paged_kv_cache.h"
#include "engine/residency_plan.h"
#include "engine/store_weights.h"
#include "engine/thread_pool.h"
#include "engine/tokenizer.h"
#include "engine/transformer.h"
#include "engine/weights.h"
#include "layout/checkpoint.h"
#include "layout/extent_reader.h"
#include "storage/read_backend.h"
#include "storage/status.h"

namespace flashlm::engine {

// Without an asked-for context (TransformerOptions::max_context 0) a session runs the model's
// context, at most this: a model may declare 128K or 2^31-1 positions, and the KV cache is sized
// by the context run, not the one declared.
inline constexpr uint32_t kDefaultContextMax = 4096;
// The largest context a session runs (16M positions; keeps every size computed from it in range).
inline constexpr uint32_t kContextMax = 1u << 24;
// Threads per core a session accepts (more only slows it down).
inline constexpr uint32_t kThreadsPerCoreMax = 4;

struct SessionOptions {
  // A llama2.c tokenizer.bin, for a model that carries none; when given it must exist (a missing
  // file is NotFound, never ignored).
  std::string tokenizer_path;
  uint32_t threads = 0;  // 0: every core; at most kThreadsPerCoreMax x cores
  // The context when transformer.max_context is 0: min(the model's, this).
  uint32_t default_context_max = kDefaultContextMax;
  // A memory budget (needs a store); budget_bytes 0 = unlimited. Stores run under the plan either
  // way; `budgeted` only says that the caller asked for one.
  bool budgeted = false;
  uint64_t budget_bytes = 0;
  TransformerOptions transformer;
  // transformer.sparsity kThreshold: the calibrated thresholds (layout/ffn_thresholds.h) are read
  // from here; empty = <store>/ffn_thresholds.json. They must belong to the store opened.
  std::string ffn_thresholds_path;
  // transformer.sparsity kPredictor: the predictor file (layout/ffn_predictor.h); empty =
  // <store>/ffn_predictor.bin. It must belong to the store opened.
  std::string ffn_predictor_path;
  StreamingOptions streaming;
  storage::BackendKind backend = storage::BackendKind::kAuto;
  bool direct = true;  // O_DIRECT data files (and the KV spill file)
  // false: a store extent's checksum is checked the first time it is read in this session, not
  // on every later read (--verify-reads first; layout::StoreReadOptions).
  bool verify_every_read = true;
  KvOptions kv;        // the KV cache: flat, or paged under the budget
  // Top-N attention (--kv-topn; all: exact). With a paged cache that spills, only the V pages
  // holding a kept position are read.
  TopNSpec kv_topn;
};

// Counters since Open or the last ResetStats.
struct EngineStats {
  uint64_t passes = 0;                // forward passes (a batch of tokens, e.g. a prompt, is one)
  uint64_t bytes_requested = 0;       // stored bytes of the extents read from flash
  uint64_t bytes_read = 0;            // bytes the backend read (aligned, merged)
  uint64_t reads = 0;                 // reads the backend issued
  uint64_t io_wait_ns = 0;            // time spent waiting for reads
  // The store's reads and waits by what they were for (layout::ReadSource: the attention layers,
  // with the FFN gate when gate+up-down bundles omit it; the FFN bundles; the classifier; the
  // embedding rows; other: start-up loads). Zeros for a checkpoint.
  std::array<layout::SourceCounters, layout::kReadSources> io_by_source{};
  uint64_t bundles_resident = 0;      // FFN bundles used from DRAM
  uint64_t bundles_streamed = 0;      // FFN bundles read from flash
  uint64_t ffn_neurons_computed = 0;  // per layer and pass (Transformer::ffn_neurons_computed)
  uint64_t ffn_neurons_total = 0;
  // The FFN bundles' cache and reads (NeuronStats): LRU hits among bundles_resident, misses
  // admitted into the LRU, misses not admitted (window full); the bundles' own reads.
  uint64_t bundles_cached = 0;
  uint64_t bundles_admitted = 0;
  uint64_t admissions_refused = 0;
  // The lookahead (TransformerOptions::lookahead): bundles read ahead, and of those the ones a
  // layer then asked for (the rest were read for nothing).
  uint64_t bundles_prefetched = 0;
  uint64_t prefetch_used = 0;
  uint64_t ffn_bytes_requested = 0;  // stored bytes of the bundles read
  uint64_t ffn_bytes_read = 0;       // bytes their reads covered (gaps merged across included)
  uint64_t ffn_reads = 0;
  // Per layer: bundles requested, pinned, cached, streamed, since the last ResetStats; empty for
  // a checkpoint. (A copy: Session::FillStats reuses its capacity, so a loop that keeps one
  // EngineStats allocates only the first time.)
  std::vector<NeuronLayerStats> ffn_layers;
  // Bytes read per byte of bundle needed (>= 1: alignment, gaps read to merge reads).
  double ffn_read_amplification() const {
    return ffn_bytes_requested ? static_cast<double>(ffn_bytes_read) / ffn_bytes_requested : 0.0;
  }
  // The KV cache (a paged one; zeros but kv_resident_bytes for a flat one).
  uint64_t kv_resident_bytes = 0;                 // DRAM the KV pages hold now (K and V)
  uint64_t kv_bytes_read = 0;                     // V pages read back from flash
  uint64_t kv_reads = 0;                          // reads issued for them
  uint64_t kv_bytes_written = 0;                  // V pages spilled to flash
  uint64_t kv_io_wait_ns = 0;                     // writing V pages and waiting for their reads
  uint64_t kv_page_hits = 0, kv_page_misses = 0;  // V pages attention found resident / read
  uint64_t attention_ns = 0;  // attention (V fetch, scores, selection, sums), every layer
  PageSelectStats kv_pages;   // page selection (--kv-select pages; zeros when off)
  // The predictor sparsity's cost and precision (zeros in other modes).
  PredictorStats predictor;
  // LazyLLM pruning (TransformerOptions::lazy; empty layer_tokens when off).
  LazyStats lazy;
  double kv_hit_rate() const {
    const uint64_t all = kv_page_hits + kv_page_misses;
    return all ? static_cast<double>(kv_page_hits) / all : 1.0;
  }
  // Fraction of FFN neurons computed: 1 in dense mode, the fire rate with relu sparsity.
  double ffn_computed_fraction() const {
    return ffn_neurons_total ? static_cast<double>(ffn_neurons_computed) / ffn_neurons_total : 1.0;
  }
  double hit_rate() const {
    const uint64_t all = bundles_resident + bundles_streamed;
    return all ? static_cast<double>(bundles_resident) / all : 1.0;
  }
};

// What EngineStats mean over a run whose forward passes took forward_ms: totals and per pass.
struct IoReport {
  EngineStats counters;
  double forward_ms = 0;
  double mib_requested = 0, mib_read = 0;
  double mean_read_bytes = 0;
  double effective_mib_per_s = 0;  // bytes read / I/O wait
  double io_wait_ms = 0;
  double compute_ms = 0;  // forward_ms - io_wait_ms
  double pass_mib_read = 0, pass_reads = 0, pass_io_wait_ms = 0, pass_compute_ms = 0;
  uint64_t peak_rss_bytes = 0;
  static IoReport Make(const EngineStats& stats, double forward_ms);
};

// The engine's own bytes next to a store's needs (the forward pass's buffers, the KV cache, the
// tokenizer), and the residency plan under options.budget_bytes: what Session::Open allocates by,
// and what `flashlm plan` reports, from the same function.
struct SessionPlan {
  TransformerOptions transformer;  // options.transformer with the context resolved
  uint64_t activation_bytes = 0;   // Transformer::BytesNeeded
  uint64_t kv_bytes = 0;           // FlatKvCache or PagedKvCache::BytesNeeded
  // Paged KV (options.kv.paged): the page layout, and the pool the plan gives it: the whole
  // cache when the budget allows (KV first: it gets what the budget has beyond the weights'
  // minimum, up to all of it), else at least KvPageCache::MinimumPoolBytes, V pages spilling.
  layout::VCacheLayout kv_layout;
  uint64_t kv_pool_bytes = 0;
  uint64_t kv_full_pool_bytes = 0;  // the pool that holds the whole cache
  ResidencyInputs inputs;
  ResidencyPlan plan;
  // Whether the FFN asks for sets of neurons (a sparse mode, or the predictor's lookahead):
  // else every neuron, and the pinned bundles are kept regrouped (StreamingOptions).
  bool sparse_ffn = false;
};
// `threads`: the pool's size. Errors: InvalidArgument (a context beyond the model's),
// ResourceExhausted (a budget below the minimum, naming it), PlanResidency's.
Result<SessionPlan> PlanSession(const StoreNeeds& needs, const layout::ModelConfig& config,
                                const SessionOptions& options, uint32_t threads,
                                uint64_t tokenizer_bytes);

// Reads into options->transformer what the options ask for from beside a store (`store_path`,
// its identity and config): the calibrated thresholds for threshold sparsity, the predictor
// (held as f16 where its values fit, layout::HoldAsF16) for predictor sparsity or a lookahead;
// nothing otherwise. Session::Open calls it before planning, and so does Predict
// (engine/model_plan.h), so that `flashlm plan` charges the predictor's DRAM as the session does.
// Errors: the loaders' (NotFound, Corruption, InvalidArgument for a file of another store).
Status LoadStoreSideFiles(const std::string& store_path, uint64_t identity,
                          const layout::ModelConfig& config, SessionOptions* options);

// Peak resident set size of this process so far, in bytes (getrusage ru_maxrss).
uint64_t PeakRssBytes();

class Session {
 public:
  // Opens `path` (store folder, GGUF, HF folder, llama2.c .bin). Errors: NotFound, Corruption,
  // NotSupported (the readers'), InvalidArgument (a budget for something that is not a store, no
  // tokenizer, a context out of range, bad streaming options), and for a budget below
  // the minimum (the message names the minimum in bytes), a context whose KV cache exceeds the
  // machine's memory, or more than 4 threads per core.
  static Result<std::unique_ptr<Session>> Open(const std::string& path,
                                               const SessionOptions& options);
  ~Session();

  Transformer& model() { return *model_; }
  const Tokenizer& tokenizer() const { return *tokenizer_; }
  ThreadPool& pool() { return *pool_; }
  const layout::ModelConfig& config() const { return model_->config(); }
  // The paged KV cache; nullptr when the cache is flat.
  PagedKvCache* paged_kv() { return paged_kv_; }
  // The store's identity (layout::StoreReader::identity()); 0 for a checkpoint, which has none.
  uint64_t store_identity() const { return store_ ? store_->reader().identity() : 0; }
  // The store-backed weights; nullptr for a checkpoint.
  StoreWeights* store() { return store_; }
  // The residency plan (stores only; nullptr for a checkpoint).
  const ResidencyPlan* plan() const { return store_ ? &plan_ : nullptr; }
  // Every byte the engine planned to hold (weights, buffers, KV cache, tokenizer).
  uint64_t planned_bytes() const { return planned_bytes_; }
  // Bytes of weights one decode step reads from DRAM (DramWeightStore::decode_bytes_per_token)
  // for a checkpoint; 0 for a store, whose reads the I/O statistics count.
  uint64_t decode_weight_bytes() const { return decode_weight_bytes_; }
  // The residency plan and the read path, several lines (stores); one line for a checkpoint.
  std::string Describe() const;

  EngineStats stats() const;
  // The same into `out`, reusing its per-layer vector (no allocation once it has the capacity).
  void FillStats(EngineStats* out) const;
  void ResetStats();

 private:
  Session() = default;
  Status OpenStore(const std::string& path, const SessionOptions& options);
  Status OpenCheckpoint(const std::string& path, const SessionOptions& options);

  // Declared in construction order; destroyed in reverse (the model last in, first out).
  std::unique_ptr<ThreadPool> pool_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::unique_ptr<layout::Checkpoint> checkpoint_;
  std::unique_ptr<WeightStore> weights_;
  StoreWeights* store_ = nullptr;
  std::unique_ptr<KvCache> kv_;
  PagedKvCache* paged_kv_ = nullptr;  // kv_ when it is paged
  uint64_t attention_base_ = 0;
  std::unique_ptr<PageAttention> page_attention_;  // --kv-select pages (before the model)
  bool options_select_shared_ = false;             // --kv-select shared (for Describe)
  std::unique_ptr<TopNAttention> topn_;  // the model's attention policy (before the model)
  TopNSpec topn_spec_;
  std::unique_ptr<Transformer> model_;
  ResidencyPlan plan_;
  uint64_t planned_bytes_ = 0;
  uint64_t decode_weight_bytes_ = 0;
  uint64_t passes_base_ = 0;
  uint64_t computed_base_ = 0, total_base_ = 0;
};

// A tokenizer alone, from a store, a checkpoint (vocab-only GGUFs included) or a llama2.c
// tokenizer.bin. Errors: NotFound, Corruption, InvalidArgument (no tokenizer inside).
Result<std::unique_ptr<Tokenizer>> OpenTokenizer(const std::string& path);

}  // namespace flashlm::engine

#endif  // FLASHLM_ENGINE_SESSION_H_
