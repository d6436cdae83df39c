#include "tools/session_flags.h"

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <thread>

#include "tools/cli_util.h"

namespace flashlm::tools {

void AddSessionFlags(CLI::App* cmd, SessionFlags* f) {
  cmd->add_option("--threads", f->threads, "Threads (default: all cores)");
  cmd->add_option("--tokenizer", f->tokenizer, "llama2.c tokenizer.bin for a llama2.c .bin");
  f->mem_budget_option =
      cmd->add_option("--mem-budget", f->mem_budget,
                      "Run a store within SIZE bytes of DRAM (K/M/G suffix; 0 = unlimited): prints "
                      "the residency plan and the I/O accounting");
  cmd->add_flag("--no-pipeline", f->no_pipeline,
                "With --mem-budget: read everything only when it is needed, one read batch at a "
                "time (the naive mode, for comparison)");
  cmd->add_flag("--no-coalesce", f->no_coalesce,
                "With --mem-budget: one read per FFN bundle instead of merging neighbours");
  cmd->add_option("--chunk-bundles", f->chunk_bundles,
                  "With --mem-budget: FFN bundles per streamed chunk (default 256)");
  cmd->add_option("--stream-buffers", f->stream_buffers,
                  "With --mem-budget: chunk buffers in flight when pipelining (default 4)");
  cmd->add_option("--sparsity", f->sparsity,
                  "FFN neurons computed from a store: dense, relu (exact for ReLU models with "
                  "gate+up-down bundles: only neurons whose gate fires are read), or auto "
                  "(relu where it applies, else dense)")
      ->capture_default_str();
}

Status ApplySessionFlags(const SessionFlags& f, engine::SessionOptions* o) {
  const int64_t threads_max =
      int64_t{engine::kThreadsPerCoreMax} * std::max(1u, std::thread::hardware_concurrency());
  if (f.threads < 0 || f.threads > threads_max) {
    return InvalidArgumentError("--threads must be in [0, " + std::to_string(threads_max) +
                                "] (0: every core; at most " +
                                std::to_string(engine::kThreadsPerCoreMax) + " per core)");
  }
  if (f.chunk_bundles < 1 || f.chunk_bundles > 65536) {
    return InvalidArgumentError("--chunk-bundles must be in [1, 65536]");
  }
  if (f.stream_buffers < 2 || f.stream_buffers > engine::kChunkBuffersMax) {
    return InvalidArgumentError("--stream-buffers must be in [2, " +
                                std::to_string(engine::kChunkBuffersMax) + "]");
  }
  o->threads = static_cast<uint32_t>(f.threads);
  o->tokenizer_path = f.tokenizer;
  if (f.mem_budget_option != nullptr && f.mem_budget_option->count() > 0 && f.mem_budget.empty()) {
    return InvalidArgumentError("--mem-budget: empty size (expected e.g. 512M, 2G; 0 = unlimited)");
  }
  o->budgeted = f.budgeted();
  if (f.budgeted()) {
    auto b = ParseSize(f.mem_budget);
    if (!b.ok()) return b.status().WithContext("--mem-budget");
    o->budget_bytes = *b;
  }
  o->streaming.chunk_bundles = static_cast<uint32_t>(f.chunk_bundles);
  o->streaming.chunk_buffers = static_cast<uint32_t>(f.stream_buffers);
  o->streaming.pipeline = !f.no_pipeline;
  o->streaming.coalesce = !f.no_coalesce;
  if (f.sparsity == "auto") {
    o->transformer.sparsity = engine::FfnSparsity::kAuto;
  } else if (f.sparsity == "dense") {
    o->transformer.sparsity = engine::FfnSparsity::kDense;
  } else if (f.sparsity == "relu") {
    o->transformer.sparsity = engine::FfnSparsity::kRelu;
  } else {
    return InvalidArgumentError("--sparsity must be auto, dense or relu (threshold and predictor "
                                "modes are not built yet)");
  }
  return Status::Ok();
}

std::string IoStatsLine(const engine::IoReport& r) {
  const engine::EngineStats& s = r.counters;
  char buf[768];
  std::snprintf(
      buf, sizeof(buf),
      "io: %.1f MiB requested, %.1f MiB read in %llu reads (mean %.1f KiB), "
      "%.1f MiB/s effective, io wait %.1f ms, compute %.1f ms, FFN hit rate %.1f%%, "
      "FFN neurons computed %.1f%%, "
      "peak RSS %.1f MiB; per forward pass (%llu): %.2f MiB read, %.1f reads, io wait %.2f ms, "
      "compute %.2f ms",
      r.mib_requested, r.mib_read, static_cast<unsigned long long>(s.reads),
      r.mean_read_bytes / 1024.0, r.effective_mib_per_s, r.io_wait_ms, r.compute_ms,
      100.0 * s.hit_rate(), 100.0 * s.ffn_computed_fraction(), r.peak_rss_bytes / 1048576.0,
      static_cast<unsigned long long>(s.passes), r.pass_mib_read, r.pass_reads, r.pass_io_wait_ms,
      r.pass_compute_ms);
  return buf;
}

nlohmann::json IoStatsJson(const engine::IoReport& r, uint64_t tokens, uint64_t planned_bytes) {
  const engine::EngineStats& s = r.counters;
  return nlohmann::json{{"tokens", tokens},
                        {"passes", s.passes},
                        {"bytes_requested", s.bytes_requested},
                        {"bytes_read", s.bytes_read},
                        {"reads", s.reads},
                        {"mean_read_bytes", r.mean_read_bytes},
                        {"effective_mib_per_s", r.effective_mib_per_s},
                        {"io_wait_ms", r.io_wait_ms},
                        {"compute_ms", r.compute_ms},
                        {"cache_hit_rate", s.hit_rate()},
                        {"bundles_resident", s.bundles_resident},
                        {"bundles_streamed", s.bundles_streamed},
                        {"ffn_neurons_computed", s.ffn_neurons_computed},
                        {"ffn_neurons_total", s.ffn_neurons_total},
                        {"planned_bytes", planned_bytes},
                        {"peak_rss_bytes", r.peak_rss_bytes}};
}

nlohmann::json GenerationJson(const engine::GenerationStats& s, const std::vector<int32_t>* ids) {
  nlohmann::json j{{"prompt_tokens", s.prompt_tokens},
                   {"generated_tokens", s.generated_tokens},
                   {"ttft_ms", s.ttft_ms},
                   {"prefill_ms", s.prefill_ms},
                   {"prefill_tokens_per_s", s.prefill_tokens_per_s()},
                   {"decode_ms", s.decode_ms},
                   {"decode_tokens_per_s", s.decode_tokens_per_s()},
                   {"total_ms", s.total_ms},
                   {"stop_reason", s.stop_reason},
                   {"token_ms", s.token_ms}};
  if (ids != nullptr) j["ids"] = *ids;
  return j;
}

}  // namespace flashlm::tools
