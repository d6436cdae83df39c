// Metrics: the server's own counters and latency histograms, rendered with the scheduler's and
// the engine's counters as Prometheus text (GET /metrics) or JSON (GET /stats, the web page).
// Buckets are fixed at construction; recording allocates nothing beyond the route table, which
// holds the server's routes and one "other" entry. Thread-safe (one mutex).
#ifndef FLASHLM_SERVER_METRICS_H_
#define FLASHLM_SERVER_METRICS_H_

#include <array>
#include <cstdint>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <span>
#include <string>

#include "engine/scheduler.h"

namespace flashlm::server {

// A Prometheus histogram of seconds: cumulative counts per upper bound, plus +Inf, sum, count.
struct Histogram {
  static constexpr std::array<double, 14> kBoundsS = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                                      0.25,  0.5,    1,     2.5,  5,     10,   30};
  std::array<uint64_t, kBoundsS.size() + 1> counts{};  // last: above every bound
  double sum_s = 0;
  uint64_t count = 0;
  void Observe(double seconds);
};

class Metrics {
 public:
  // A finished HTTP request: `route` is a path the server knows (or "other"), `status` its code.
  void RecordRequest(const std::string& route, int status);
  // A finished generation: time to first token as the client saw it (queue + prefill + first
  // sample) and each later token's time.
  void RecordGeneration(double ttft_ms, std::span<const double> token_ms);

  // `snap`: the scheduler's counters; `planned_bytes`: the session's plan.
  std::string Prometheus(const engine::SchedulerSnapshot& snap, uint64_t planned_bytes) const;
  nlohmann::json Json(const engine::SchedulerSnapshot& snap, uint64_t planned_bytes) const;

 private:
  mutable std::mutex mu_;
  std::map<std::pair<std::string, int>, uint64_t> requests_;  // (route, status) -> count
  Histogram ttft_, token_;
};

}  // namespace flashlm::server

#endif  // FLASHLM_SERVER_METRICS_H_
