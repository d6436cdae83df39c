// The flags every model-running subcommand shares (generate, perplexity, activations) and what
// they print: --threads, --tokenizer, the memory budget and its tuning, mapped onto
// engine::SessionOptions; the residency plan and I/O accounting as a stderr line or JSON.
#ifndef FLASHLM_TOOLS_SESSION_FLAGS_H_
#define FLASHLM_TOOLS_SESSION_FLAGS_H_

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "engine/generator.h"
#include "engine/session.h"
#include "storage/status.h"

namespace CLI {
class App;
class Option;
}  // namespace CLI

namespace flashlm::tools {

// --cache-share's default: the share of the bundle bytes beyond the hot set given to the LRU
// cache of a sparse FFN's streamed bundles (docs/benchmarks.md, "ablation ladder").
// Measured 0: on a synth ReLU model (no temporal locality) the hot-first bundles pinned beat an
// LRU of the same bytes (hit rate 80.6% against 72.4% at share 0.5 and 56.1% at 1, 75% budget).
inline constexpr double kDefaultCacheShare = 0.0;

struct SessionFlags {
  int64_t threads = 0;
  std::string tokenizer;                     // llama2.c tokenizer.bin
  std::string mem_budget;                    // empty: no budget asked for
  CLI::Option* mem_budget_option = nullptr;  // set by AddSessionFlags: given, even if empty?
  bool no_pipeline = false;
  bool no_coalesce = false;
  bool split_bundle_reads = false;
  std::string verify_reads = "every";  // --verify-reads: every | first
  int64_t chunk_bundles = 256;
  int64_t stream_buffers = 4;
  std::string sparsity = "auto";
  // The sparse FFN's bundle cache and reads.
  int64_t window = 0;
  std::string merge_gap;    // empty: StreamingOptions::kDefaultMergeGapBytes
  double cache_share = -1;  // -1: kDefaultCacheShare
  // The KV cache: any of these makes it paged.
  int64_t kv_page_tokens = 16;
  std::string kv_dtype = "f32";
  std::string kv_budget;  // the KV pool's share of the budget; empty: the plan's choice
  std::string kv_dir;
  std::string kv_topn = "all";
  std::string kv_fetch = "pages";
  std::string kv_select = "all";  // --kv-select: all | pages
  std::string kv_spill = "v";     // --kv-spill: v | kv
  CLI::Option* kv_options[7] = {};
  int64_t batch = 0;          // tokens per forward pass; 0: the command's default
  double lazy_prefill = 1.0;  // LazyLLM: fraction of prompt tokens reaching the last layer
  std::string lazy_layers;    // comma-separated pruning layers; empty: the default rule
  bool kv_paged() const;
  std::string thresholds;  // --thresholds FILE
  std::string predictor;   // --predictor FILE
  double predictor_cut = 0.5;                   // --predictor-cut P
  CLI::Option* predictor_cut_option = nullptr;  // set by AddSessionFlags: was it given?
  double lookahead = 0.5;                       // --lookahead P
  CLI::Option* lookahead_option = nullptr;      // set by AddSessionFlags: was it given?
  bool budgeted() const { return !mem_budget.empty(); }
};
void AddSessionFlags(CLI::App* cmd, SessionFlags* flags);

// --mem-budget auto: storage::ReadSystemMemory's available bytes (MemAvailable, or the memory
// cgroup's room when that is smaller) less a tenth of them, at least kAutoBudgetHeadroomMin, for
// what the budget does not count (the binary, libraries and stacks: measured 4-16 MiB) and the
// rest of the machine. Prints the figure and where it came from on stderr, under `flag`.
// Errors: ResourceExhausted when nothing is left after the headroom; NotFound/Corruption from
// /proc/meminfo.
inline constexpr uint64_t kAutoBudgetHeadroomMin = uint64_t{64} << 20;
Result<uint64_t> AutoBudget(const std::string& flag = "--mem-budget");
// Checks the flags and fills `options` (threads, tokenizer, budget, streaming).
// Errors: InvalidArgument naming the flag.
Status ApplySessionFlags(const SessionFlags& flags, engine::SessionOptions* options);

// For stderr: bytes requested and read, reads, mean read size, effective MiB/s, I/O wait,
// compute, FFN hit rate, peak RSS; totals and per forward pass. A second line, when the store
// read anything, splits the bytes, reads and waits per pass by what they were for.
std::string IoStatsLine(const engine::IoReport& report);
// The KV cache's line for stderr (a paged cache): pages and dtype, bytes resident, V bytes read
// from and written to flash, reads and their mean size, page hit rate, KV I/O wait and attention
// time; totals and per forward pass. Empty for a flat cache.
std::string KvStatsLine(engine::Session& session, const engine::EngineStats& stats);
nlohmann::json KvStatsJson(engine::Session& session, const engine::EngineStats& stats);
// The FFN bundles' line for stderr (stores): bundles requested per pass, hit rate (pinned, LRU),
// admissions, the bundles' reads (per pass, mean size, read amplification) and every layer's
// hit rate. Empty for a checkpoint.
std::string FfnStatsLine(const engine::EngineStats& stats);
nlohmann::json FfnStatsJson(const engine::EngineStats& stats);
// Lazy pruning's line for stderr: tokens computed per layer against the passes' tokens, FLOPs
// against dense, tokens pruned and revived, the aux cache in use / at peak / its size. Empty
// when pruning is off. And the same as JSON (null when off).
std::string LazyStatsLine(const engine::EngineStats& stats);
nlohmann::json LazyStatsJson(const engine::EngineStats& stats);
// The same as JSON ("tokens" is the tokens the run processed); `planned_bytes` is the session's.
nlohmann::json IoStatsJson(const engine::IoReport& report, uint64_t tokens, uint64_t planned_bytes);
// Timings of a generation (and its ids when given) as JSON.
nlohmann::json GenerationJson(const engine::GenerationStats& stats,
                              const std::vector<int32_t>* ids);

}  // namespace flashlm::tools

#endif  // FLASHLM_TOOLS_SESSION_FLAGS_H_
