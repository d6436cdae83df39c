#include "engine/attention_topn.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>

namespace flashlm::engine {

Result<TopNSpec> TopNSpec::Parse(std::string_view text) {
  const Status bad = InvalidArgumentError(
      "--kv-topn must be all, a count of positions (e.g. 64) "
      "or a share of the context (e.g. 5%), not '" +
      std::string(text) + "'");
  TopNSpec s;
  if (text == "all") return s;
  if (text.empty() || text.size() > 32) return bad;
  const std::string t(text);
  char* end = nullptr;
  if (t.back() == '%') {
    const double p = std::strtod(t.c_str(), &end);
    if (end != t.c_str() + t.size() - 1 || !(p > 0) || p > 100) return bad;
    s.percent = p;
    return s;
  }
  if (t.find_first_not_of("0123456789") != std::string::npos) return bad;
  const unsigned long long n = std::strtoull(t.c_str(), &end, 10);
  if (n == 0 || n > UINT32_MAX) return bad;
  s.count = static_cast<uint32_t>(n);
  return s;
}

std::string TopNSpec::ToString() const {
  if (all()) return "all";
  if (count) return std::to_string(count);
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g%%", percent);
  return buf;
}

uint32_t TopNAttention::Keep(uint32_t len) const {
  if (spec_.all()) return len;
  const uint64_t n =
      spec_.count ? spec_.count : static_cast<uint64_t>(std::ceil(spec_.percent / 100.0 * len));
  return static_cast<uint32_t>(std::clamp<uint64_t>(n, 1, len));
}

uint32_t TopNAttention::Select(uint32_t, uint32_t, std::span<const float> probs,
                               std::span<uint32_t> selected) const {
  const uint32_t len = static_cast<uint32_t>(probs.size());
  const uint32_t keep = Keep(len);
  for (uint32_t i = 0; i < len; ++i) selected[i] = i;
  if (keep < len) {
    std::nth_element(selected.begin(), selected.begin() + keep, selected.begin() + len,
                     [&](uint32_t a, uint32_t b) {
                       return probs[a] > probs[b] || (probs[a] == probs[b] && a < b);
                     });
    std::sort(selected.begin(), selected.begin() + keep);
  }
  return keep;
}

}  // namespace flashlm::engine
