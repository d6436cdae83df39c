// Parsing JSON from untrusted bytes (config.json, tokenizer.json, safetensors headers, store
// catalog values, activation statistics). nlohmann parses iteratively, but destroying a deeply
// nested value recurses, so input nested deeper than kMaxJsonDepth is refused before parsing.
// Stateless, thread-safe.
#ifndef FLASHLM_LAYOUT_JSON_UTIL_H_
#define FLASHLM_LAYOUT_JSON_UTIL_H_

#include <nlohmann/json.hpp>
#include <string_view>

#include "storage/status.h"

namespace flashlm::layout {

inline constexpr int kMaxJsonDepth = 64;

// Parses `text`. Errors: Corruption "<what>: JSON nested too deeply" / "<what>: malformed JSON".
// Never throws.
Result<nlohmann::json> ParseUntrustedJson(std::string_view text, std::string_view what);

}  // namespace flashlm::layout

#endif  // FLASHLM_LAYOUT_JSON_UTIL_H_
