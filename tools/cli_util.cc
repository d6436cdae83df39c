#include "tools/cli_util.h"

#include <algorithm>
#include <filesystem>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>

namespace flashlm::tools {

Result<std::string> GnuplotTerminal(const std::string& path) {
  const std::string ext = std::filesystem::path(path).extension().string();
  if (ext == ".svg") return std::string("svg size 900,600 dynamic");
  if (ext == ".png") return std::string("pngcairo size 900,600");
  return InvalidArgumentError("--plot " + path + ": use a .svg or .png file name");
}

double Median(std::vector<double> v) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

Result<uint64_t> ParseSize(std::string_view text) {
  std::string s(text);
  if (s.empty()) return InvalidArgumentError("empty size");
  char* end = nullptr;
  errno = 0;
  double value = std::strtod(s.c_str(), &end);
  if (end == s.c_str() || errno != 0 || !std::isfinite(value) || value < 0) {
    return InvalidArgumentError("not a size: '" + s + "' (expected e.g. 4096, 64K, 1M, 4G)");
  }
  std::string suffix(end);
  double mult = 1;
  if (suffix.empty() || suffix == "B" || suffix == "b") {
    mult = 1;
  } else if (suffix == "K" || suffix == "k" || suffix == "KiB" || suffix == "KB") {
    mult = 1024.0;
  } else if (suffix == "M" || suffix == "m" || suffix == "MiB" || suffix == "MB") {
    mult = 1024.0 * 1024;
  } else if (suffix == "G" || suffix == "g" || suffix == "GiB" || suffix == "GB") {
    mult = 1024.0 * 1024 * 1024;
  } else if (suffix == "T" || suffix == "t" || suffix == "TiB" || suffix == "TB") {
    mult = 1024.0 * 1024 * 1024 * 1024;
  } else {
    return InvalidArgumentError("unknown size suffix in '" + s + "' (use K, M, G or T)");
  }
  double bytes = value * mult;
  if (bytes > 1.8e19) return InvalidArgumentError("size too large: '" + s + "'");
  if (bytes != std::floor(bytes)) {
    return InvalidArgumentError("size is not a whole number of bytes: '" + s + "'");
  }
  return static_cast<uint64_t>(bytes);
}

Result<std::vector<uint64_t>> ParseSizeList(std::string_view text) {
  std::vector<uint64_t> out;
  size_t start = 0;
  while (start <= text.size()) {
    size_t comma = text.find(',', start);
    if (comma == std::string_view::npos) comma = text.size();
    ASSIGN_OR_RETURN(uint64_t v, ParseSize(text.substr(start, comma - start)));
    out.push_back(v);
    start = comma + 1;
  }
  return out;
}

int ReportError(std::string_view command, const Status& status) {
  std::fprintf(stderr, "flashlm %.*s: %s\n", static_cast<int>(command.size()), command.data(),
               std::string(status.message()).c_str());
  switch (status.code()) {
    case StatusCode::kInvalidArgument:
    case StatusCode::kNotFound:
    case StatusCode::kNotSupported:
    case StatusCode::kCorruption:
      return kExitUsage;
    default:
      return kExitFailure;
  }
}

}  // namespace flashlm::tools
