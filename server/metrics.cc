#include "server/metrics.h"

#include <cstdio>

#include "layout/read_source_json.h"

namespace flashlm::server {
namespace {

void Line(std::string& out, const char* name, double value, const char* labels = "") {
  char buf[256];
  std::snprintf(buf, sizeof buf, "%s%s %.17g\n", name, labels, value);
  out += buf;
}

void Header(std::string& out, const char* name, const char* type, const char* help) {
  out += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " " + type + "\n";
}

void RenderHistogram(std::string& out, const char* name, const char* help, const Histogram& h) {
  Header(out, name, "histogram", help);
  uint64_t cumulative = 0;
  char labels[64];
  for (size_t i = 0; i < Histogram::kBoundsS.size(); ++i) {
    cumulative += h.counts[i];
    std::snprintf(labels, sizeof labels, "{le=\"%g\"}", Histogram::kBoundsS[i]);
    Line(out, (std::string(name) + "_bucket").c_str(), static_cast<double>(cumulative), labels);
  }
  cumulative += h.counts.back();
  Line(out, (std::string(name) + "_bucket").c_str(), static_cast<double>(cumulative),
       "{le=\"+Inf\"}");
  Line(out, (std::string(name) + "_sum").c_str(), h.sum_s);
  Line(out, (std::string(name) + "_count").c_str(), static_cast<double>(h.count));
}

}  // namespace

void Histogram::Observe(double seconds) {
  size_t i = 0;
  while (i < kBoundsS.size() && seconds > kBoundsS[i]) ++i;
  ++counts[i];
  sum_s += seconds;
  ++count;
}

void Metrics::RecordRequest(const std::string& route, int status) {
  std::lock_guard<std::mutex> lock(mu_);
  ++requests_[{route, status}];
}

void Metrics::RecordGeneration(double ttft_ms, std::span<const double> token_ms) {
  std::lock_guard<std::mutex> lock(mu_);
  ttft_.Observe(ttft_ms / 1e3);
  for (double ms : token_ms) token_.Observe(ms / 1e3);
}

std::string Metrics::Prometheus(const engine::SchedulerSnapshot& s, uint64_t planned_bytes) const {
  std::string out;
  out.reserve(8192);
  {
    std::lock_guard<std::mutex> lock(mu_);
    Header(out, "flashlm_http_requests_total", "counter",
           "HTTP requests answered, by route and status.");
    for (const auto& [key, n] : requests_) {
      const std::string labels =
          "{route=\"" + key.first + "\",status=\"" + std::to_string(key.second) + "\"}";
      Line(out, "flashlm_http_requests_total", static_cast<double>(n), labels.c_str());
    }
    RenderHistogram(out, "flashlm_time_to_first_token_seconds",
                    "Queue wait plus prefill plus first sample, per generation.", ttft_);
    RenderHistogram(out, "flashlm_time_per_token_seconds",
                    "Time between a generation's consecutive tokens after the first.", token_);
  }
  auto counter = [&](const char* name, const char* help, double v) {
    Header(out, name, "counter", help);
    Line(out, name, v);
  };
  auto gauge = [&](const char* name, const char* help, double v) {
    Header(out, name, "gauge", help);
    Line(out, name, v);
  };
  const engine::EngineStats& e = s.engine;
  gauge("flashlm_queue_length", "Requests waiting for a slot.", s.queued);
  gauge("flashlm_queue_capacity", "Requests the queue holds at most.", s.queue_max);
  gauge("flashlm_active_sequences", "Sequences in slots (prefilling or decoding).", s.active);
  gauge("flashlm_slots", "Sequence slots (--parallel).", s.slots);
  counter("flashlm_generations_finished_total", "Generations that ended by themselves.",
          static_cast<double>(s.finished));
  counter("flashlm_generations_cancelled_total", "Generations cancelled (client gone).",
          static_cast<double>(s.cancelled));
  counter("flashlm_generations_timed_out_total", "Generations past their deadline.",
          static_cast<double>(s.timed_out));
  counter("flashlm_generations_failed_total", "Generations the engine failed.",
          static_cast<double>(s.failed));
  counter("flashlm_prompt_tokens_total", "Prompt tokens of finished generations.",
          static_cast<double>(s.prompt_tokens));
  counter("flashlm_generated_tokens_total", "Tokens generated.",
          static_cast<double>(s.generated_tokens));
  counter("flashlm_forward_passes_total", "Forward passes the scheduler ran.",
          static_cast<double>(s.steps));
  counter("flashlm_pass_sequences_total", "Sum over passes of the sequences in each.",
          static_cast<double>(s.step_sequences));
  counter("flashlm_pass_tokens_total", "Sum over passes of the tokens in each.",
          static_cast<double>(s.step_tokens));
  counter("flashlm_forward_seconds_total", "Time inside forward passes.", s.forward_ms / 1e3);
  counter("flashlm_io_wait_seconds_total", "Time forward passes waited for flash reads.",
          static_cast<double>(e.io_wait_ns) / 1e9);
  counter("flashlm_compute_seconds_total", "Forward time not spent waiting for reads.",
          std::max(0.0, s.forward_ms / 1e3 - static_cast<double>(e.io_wait_ns) / 1e9));
  counter("flashlm_flash_bytes_requested_total", "Stored bytes of the extents read from flash.",
          static_cast<double>(e.bytes_requested));
  counter("flashlm_flash_bytes_read_total", "Bytes the read backend read (aligned, merged).",
          static_cast<double>(e.bytes_read));
  counter("flashlm_flash_reads_total", "Reads the backend issued.", static_cast<double>(e.reads));
  // The same reads and waits by what they were for (layout::ReadSource).
  const struct {
    const char* name;
    const char* help;
    double (*value)(const layout::SourceCounters&);
  } by_source[] = {
      {"flashlm_flash_source_bytes_read_total", "Bytes read from flash, by what they were for.",
       [](const layout::SourceCounters& c) { return static_cast<double>(c.bytes_read); }},
      {"flashlm_flash_source_reads_total", "Reads from flash, by what they were for.",
       [](const layout::SourceCounters& c) { return static_cast<double>(c.reads); }},
      {"flashlm_io_wait_source_seconds_total",
       "Time forward passes waited for flash reads, by what they were for.",
       [](const layout::SourceCounters& c) { return static_cast<double>(c.wait_ns) / 1e9; }},
  };
  for (const auto& m : by_source) {
    Header(out, m.name, "counter", m.help);
    for (size_t i = 0; i < layout::kReadSources; ++i) {
      const std::string labels = std::string("{source=\"") +
                                 layout::ReadSourceName(static_cast<layout::ReadSource>(i)) + "\"}";
      Line(out, m.name, m.value(e.io_by_source[i]), labels.c_str());
    }
  }
  gauge("flashlm_flash_effective_mib_per_second", "Bytes read over the time waited for them.",
        e.io_wait_ns ? static_cast<double>(e.bytes_read) / (1 << 20) /
                           (static_cast<double>(e.io_wait_ns) / 1e9)
                     : 0.0);
  counter("flashlm_ffn_bundles_resident_total", "FFN bundles used from DRAM.",
          static_cast<double>(e.bundles_resident));
  counter("flashlm_ffn_bundles_streamed_total", "FFN bundles read from flash.",
          static_cast<double>(e.bundles_streamed));
  gauge("flashlm_ffn_hit_rate", "Fraction of FFN bundles used from DRAM.", e.hit_rate());
  gauge("flashlm_ffn_computed_fraction", "Fraction of FFN neurons computed.",
        e.ffn_computed_fraction());
  gauge("flashlm_kv_resident_bytes", "DRAM the KV cache holds now (pages, when paged).",
        static_cast<double>(e.kv_resident_bytes));
  counter("flashlm_kv_bytes_written_total", "V pages the paged KV cache spilled to flash.",
          static_cast<double>(e.kv_bytes_written));
  counter("flashlm_kv_bytes_read_total", "Spilled V pages the paged KV cache read back.",
          static_cast<double>(e.kv_bytes_read));
  gauge("flashlm_planned_bytes", "DRAM the engine planned to hold.",
        static_cast<double>(planned_bytes));
  gauge("flashlm_peak_rss_bytes", "Peak resident set size of the process.",
        static_cast<double>(engine::PeakRssBytes()));
  return out;
}

nlohmann::json Metrics::Json(const engine::SchedulerSnapshot& s, uint64_t planned_bytes) const {
  const engine::EngineStats& e = s.engine;
  nlohmann::json j;
  j["queued"] = s.queued;
  j["active"] = s.active;
  j["slots"] = s.slots;
  j["finished"] = s.finished;
  j["cancelled"] = s.cancelled;
  j["failed"] = s.failed;
  j["prompt_tokens"] = s.prompt_tokens;
  j["generated_tokens"] = s.generated_tokens;
  j["passes"] = s.steps;
  j["pass_sequences"] = s.step_sequences;
  j["pass_tokens"] = s.step_tokens;
  j["forward_ms"] = s.forward_ms;
  j["io_wait_ms"] = static_cast<double>(e.io_wait_ns) / 1e6;
  j["bytes_requested"] = e.bytes_requested;
  j["bytes_read"] = e.bytes_read;
  j["reads"] = e.reads;
  j["by_source"] = layout::ReadSourcesJson(e.io_by_source);
  j["ffn_hit_rate"] = e.hit_rate();
  j["ffn_computed_fraction"] = e.ffn_computed_fraction();
  j["kv_resident_bytes"] = e.kv_resident_bytes;
  j["kv_bytes_written"] = e.kv_bytes_written;
  j["kv_bytes_read"] = e.kv_bytes_read;
  if (!e.lazy.layer_tokens.empty()) {  // --lazy-prefill below 1: every sequence's pruning
    j["lazy_pruned"] = e.lazy.prunes;
    j["lazy_revived"] = e.lazy.revivals;
    j["lazy_aux_bytes"] = e.lazy.aux_bytes;
    j["lazy_aux_peak_bytes"] = e.lazy.aux_peak_bytes;
    j["lazy_aux_capacity_bytes"] = e.lazy.aux_capacity_bytes;
  }
  j["planned_bytes"] = planned_bytes;
  j["peak_rss_bytes"] = engine::PeakRssBytes();
  return j;
}

}  // namespace flashlm::server
