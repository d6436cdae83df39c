#include "layout/read_source_json.h"

namespace flashlm::layout {

nlohmann::json ReadSourcesJson(const std::array<SourceCounters, kReadSources>& by_source) {
  nlohmann::json j = nlohmann::json::object();
  for (size_t i = 0; i < kReadSources; ++i) {
    const SourceCounters& c = by_source[i];
    j[ReadSourceName(static_cast<ReadSource>(i))] = {
        {"bytes_read", c.bytes_read}, {"reads", c.reads}, {"wait_ms", c.wait_ns / 1e6}};
  }
  return j;
}

}  // namespace flashlm::layout
