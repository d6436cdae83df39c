// Metrics: histogram buckets are cumulative in the Prometheus text, and the scheduler's and
// engine's counters appear under their names.
#include "server/metrics.h"

#include <gtest/gtest.h>

namespace flashlm::server {
namespace {

TEST(MetricsTest, HistogramsAreCumulativeAndCountersNamed) {
  Metrics m;
  const std::vector<double> token_ms = {0.5, 3, 3, 40};
  m.RecordGeneration(/*ttft_ms=*/20, token_ms);
  m.RecordRequest("/v1/completions", 200);
  m.RecordRequest("/v1/completions", 200);
  m.RecordRequest("other", 404);
  engine::SchedulerSnapshot snap;
  snap.queued = 3;
  snap.active = 2;
  snap.engine.bytes_read = 1 << 20;
  snap.engine.io_wait_ns = 500000000;  // 1 MiB in 0.5 s: 2 MiB/s
  const std::string text = m.Prometheus(snap, 12345);
  auto has = [&](const std::string& line) {
    EXPECT_NE(text.find(line + "\n"), std::string::npos) << line << "\n" << text;
  };
  has("flashlm_time_per_token_seconds_bucket{le=\"0.001\"} 1");
  has("flashlm_time_per_token_seconds_bucket{le=\"0.005\"} 3");
  has("flashlm_time_per_token_seconds_bucket{le=\"0.05\"} 4");
  has("flashlm_time_per_token_seconds_bucket{le=\"+Inf\"} 4");
  has("flashlm_time_per_token_seconds_count 4");
  has("flashlm_time_to_first_token_seconds_bucket{le=\"0.01\"} 0");
  has("flashlm_time_to_first_token_seconds_bucket{le=\"0.025\"} 1");
  has("flashlm_http_requests_total{route=\"/v1/completions\",status=\"200\"} 2");
  has("flashlm_http_requests_total{route=\"other\",status=\"404\"} 1");
  has("flashlm_queue_length 3");
  has("flashlm_active_sequences 2");
  has("flashlm_flash_bytes_read_total 1048576");
  has("flashlm_flash_effective_mib_per_second 2");
  has("flashlm_planned_bytes 12345");
  const nlohmann::json j = m.Json(snap, 12345);
  EXPECT_EQ(j["queued"], 3);
  EXPECT_EQ(j["bytes_read"], 1 << 20);
}

}  // namespace
}  // namespace flashlm::server
