// Out-of-core sessions for the engine subcommands: --mem-budget opens a store through
// engine::StreamingWeightStore instead of loading it into DRAM, prints the residency plan, and
// reports the I/O accounting (stderr and JSON).
#ifndef FLASHLM_TOOLS_STREAMING_SESSION_H_
#define FLASHLM_TOOLS_STREAMING_SESSION_H_

#include <cstdint>
#include <string>

#include "engine/streaming_weights.h"
#include "tools/engine_session.h"

namespace CLI {
class App;
}

namespace flashlm::tools {

// The out-of-core flags shared by generate and perplexity: --mem-budget, --no-pipeline,
// --chunk-bundles, --stream-buffers.
struct StreamingFlags {
  std::string mem_budget;  // empty: not out of core
  bool no_pipeline = false;
  int64_t chunk_bundles = 256;
  int64_t stream_buffers = 4;
  bool enabled() const { return !mem_budget.empty(); }
};
void AddStreamingFlags(CLI::App* cmd, StreamingFlags* flags);
// Checks the flags and fills the streaming part of the options (budget, chunking, pipelining).
// Errors: InvalidArgument naming the flag.
Result<engine::StreamingOptions> ToStreamingOptions(const StreamingFlags& flags);

// Peak resident set size of this process so far, in bytes (getrusage ru_maxrss).
uint64_t PeakRssBytes();

// Opens the store folder `path` within options.budget_bytes (0 = unlimited) and prints the plan on
// stderr. Errors: InvalidArgument when `path` is not a store folder, ResourceExhausted when the
// budget is below the minimum (the message names it), the store's errors.
Result<EngineSession> OpenStreamingSession(const std::string& path, uint32_t threads,
                                           const engine::StreamingOptions& options);

// Accounting of a run over `tokens` tokens that took `forward_ms` of forward passes: bytes
// requested and read, reads, mean read size, effective MiB/s (bytes read / I/O wait), I/O wait,
// compute time (forward_ms - I/O wait), FFN bundle hit rate, peak RSS; totals and per forward
// pass (a prompt is one pass, then one per generated token). One line for stderr, one JSON object.
std::string IoStatsLine(const engine::StreamingStats& s, uint64_t tokens, double forward_ms);
std::string IoStatsJson(const engine::StreamingStats& s, uint64_t tokens, double forward_ms);

}  // namespace flashlm::tools

#endif  // FLASHLM_TOOLS_STREAMING_SESSION_H_
