#include "layout/json_util.h"

#include <string>

namespace flashlm::layout {
namespace {

// Counts bracket depth outside strings; true when it never exceeds kMaxJsonDepth.
bool JsonDepthOk(std::string_view text) {
  int depth = 0;
  bool in_string = false, escape = false;
  for (char c : text) {
    if (in_string) {
      if (escape) {
        escape = false;
      } else if (c == '\\') {
        escape = true;
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '{' || c == '[') {
      if (++depth > kMaxJsonDepth) return false;
    } else if (c == '}' || c == ']') {
      --depth;
    }
  }
  return true;
}

}  // namespace

Result<nlohmann::json> ParseUntrustedJson(std::string_view text, std::string_view what) {
  if (!JsonDepthOk(text)) return CorruptionError(std::string(what) + ": JSON nested too deeply");
  nlohmann::json j =
      nlohmann::json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return CorruptionError(std::string(what) + ": malformed JSON");
  return j;
}

}  // namespace flashlm::layout
