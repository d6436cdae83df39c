#include "tools/streaming_session.h"

#include <sys/resource.h>

#include <CLI/CLI.hpp>
#include <cstdio>

#include "layout/store_reader.h"
#include "tools/cli_util.h"

namespace flashlm::tools {

uint64_t PeakRssBytes() {
  struct rusage ru {};
  if (getrusage(RUSAGE_SELF, &ru) != 0) return 0;
  return static_cast<uint64_t>(ru.ru_maxrss) * 1024;  // Linux reports KiB
}

void AddStreamingFlags(CLI::App* cmd, StreamingFlags* f) {
  cmd->add_option("--mem-budget", f->mem_budget,
                  "Run out of core from a store within SIZE bytes of DRAM (K/M/G suffix; 0 = "
                  "unlimited): prints the residency plan and the I/O accounting");
  cmd->add_flag("--no-pipeline", f->no_pipeline,
                "With --mem-budget: read everything only when it is needed, one read batch at a "
                "time (the naive mode, for comparison)");
  cmd->add_option("--chunk-bundles", f->chunk_bundles,
                  "With --mem-budget: FFN bundles per streamed chunk (default 256)");
  cmd->add_option("--stream-buffers", f->stream_buffers,
                  "With --mem-budget: chunk buffers in flight when pipelining (default 4)");
}

Result<engine::StreamingOptions> ToStreamingOptions(const StreamingFlags& f) {
  engine::StreamingOptions so;
  if (!f.enabled()) return so;
  auto b = ParseSize(f.mem_budget);
  if (!b.ok()) return b.status().WithContext("--mem-budget");
  so.budget_bytes = *b;
  if (f.chunk_bundles < 1 || f.chunk_bundles > 65536) {
    return InvalidArgumentError("--chunk-bundles must be in [1, 65536]");
  }
  if (f.stream_buffers < 2 || f.stream_buffers > 64) {
    return InvalidArgumentError("--stream-buffers must be in [2, 64]");
  }
  so.chunk_bundles = static_cast<uint32_t>(f.chunk_bundles);
  so.chunk_buffers = static_cast<uint32_t>(f.stream_buffers);
  so.pipeline = !f.no_pipeline;
  return so;
}

Result<EngineSession> OpenStreamingSession(const std::string& path, uint32_t threads,
                                           const engine::StreamingOptions& so) {
  if (!layout::StoreReader::LooksLikeStore(path)) {
    return InvalidArgumentError("--mem-budget needs a store folder; " + path +
                                " is not one (flashlm repack it first)");
  }
  EngineSession s;
  s.pool = std::make_unique<engine::ThreadPool>(threads);
  ASSIGN_OR_RETURN(s.streaming, engine::StreamingWeightStore::Open(path, *s.pool, so));
  std::fputs(s.streaming->plan().Describe().c_str(), stderr);
  std::fprintf(stderr, "  reads: %s backend, %s, FFN chunks %s%s\n",
               std::string(s.streaming->reader().backend_name()).c_str(),
               s.streaming->reader().direct_io() ? "O_DIRECT" : "buffered (O_DIRECT refused)",
               s.streaming->direct_chunks() ? "as contiguous ranges" : "bundle by bundle",
               s.streaming->pipelined() ? ", pipelined (chunks and attention read ahead)" : "");
  if (s.streaming->reader().vocab().empty()) {
    return InvalidArgumentError(path + " carries no tokenizer");
  }
  ASSIGN_OR_RETURN(s.tokenizer, engine::Tokenizer::Create(s.streaming->reader().vocab()));
  ASSIGN_OR_RETURN(s.model, engine::Transformer::Create(*s.streaming, *s.pool, so.transformer));
  return s;
}

namespace {

struct Derived {
  double mib_requested, mib_read, mean_read_kib, mib_per_s, io_wait_ms, compute_ms, peak_rss_mib;
};

Derived Derive(const engine::StreamingStats& s, double forward_ms) {
  Derived d{};
  d.mib_requested = s.bytes_requested / 1048576.0;
  d.mib_read = s.bytes_read / 1048576.0;
  d.mean_read_kib = s.reads ? s.bytes_read / 1024.0 / s.reads : 0.0;
  d.io_wait_ms = s.io_wait_ns / 1e6;
  d.mib_per_s = d.io_wait_ms > 0 ? d.mib_read / (d.io_wait_ms / 1000.0) : 0.0;
  d.compute_ms = forward_ms > d.io_wait_ms ? forward_ms - d.io_wait_ms : 0.0;
  d.peak_rss_mib = PeakRssBytes() / 1048576.0;
  return d;
}

}  // namespace

std::string IoStatsLine(const engine::StreamingStats& s, uint64_t tokens, double forward_ms) {
  const Derived d = Derive(s, forward_ms);
  (void)tokens;
  const double t = s.passes ? static_cast<double>(s.passes) : 1.0;
  char buf[768];
  std::snprintf(
      buf, sizeof(buf),
      "io: %.1f MiB requested, %.1f MiB read in %llu reads (mean %.1f KiB), "
      "%.1f MiB/s effective, io wait %.1f ms, compute %.1f ms, FFN hit rate %.1f%%, "
      "peak RSS %.1f MiB; per forward pass (%llu): %.2f MiB read, %.1f reads, io wait %.2f ms, "
      "compute %.2f ms",
      d.mib_requested, d.mib_read, static_cast<unsigned long long>(s.reads), d.mean_read_kib,
      d.mib_per_s, d.io_wait_ms, d.compute_ms, 100.0 * s.hit_rate(), d.peak_rss_mib,
      static_cast<unsigned long long>(s.passes), d.mib_read / t, s.reads / t, d.io_wait_ms / t,
      d.compute_ms / t);
  return buf;
}

std::string IoStatsJson(const engine::StreamingStats& s, uint64_t tokens, double forward_ms) {
  const Derived d = Derive(s, forward_ms);
  char buf[1024];
  std::snprintf(
      buf, sizeof(buf),
      "{\"tokens\": %llu, \"passes\": %llu, \"bytes_requested\": %llu, \"bytes_read\": %llu, "
      "\"reads\": %llu, \"mean_read_bytes\": %.1f, \"effective_mib_per_s\": %.2f, "
      "\"io_wait_ms\": %.3f, \"compute_ms\": %.3f, \"cache_hit_rate\": %.4f, "
      "\"bundles_resident\": %llu, \"bundles_streamed\": %llu, "
      "\"peak_rss_bytes\": %llu}",
      static_cast<unsigned long long>(tokens), static_cast<unsigned long long>(s.passes),
      static_cast<unsigned long long>(s.bytes_requested),
      static_cast<unsigned long long>(s.bytes_read), static_cast<unsigned long long>(s.reads),
      d.mean_read_kib * 1024.0, d.mib_per_s, d.io_wait_ms, d.compute_ms, s.hit_rate(),
      static_cast<unsigned long long>(s.bundles_resident),
      static_cast<unsigned long long>(s.bundles_streamed),
      static_cast<unsigned long long>(PeakRssBytes()));
  return buf;
}

}  // namespace flashlm::tools
