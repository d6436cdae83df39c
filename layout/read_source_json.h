// The per-source read counters (ExtentReader's ReadCounters::by_source, summed into the engine's
// statistics) as one JSON object, {"attention": {"bytes_read", "reads", "wait_ms"}, ...} with
// every source named by ReadSourceName: the form generate's --stats-json ("io.by_source") and
// serve's /stats ("by_source") share. Stateless, thread-safe.
#ifndef FLASHLM_LAYOUT_READ_SOURCE_JSON_H_
#define FLASHLM_LAYOUT_READ_SOURCE_JSON_H_

#include <nlohmann/json.hpp>

#include "layout/extent_reader.h"

namespace flashlm::layout {

nlohmann::json ReadSourcesJson(const std::array<SourceCounters, kReadSources>& by_source);

}  // namespace flashlm::layout

#endif  // FLASHLM_LAYOUT_READ_SOURCE_JSON_H_
