#include "storage/bytes.h"

#include <cmath>
#include <cstdio>

namespace flashlm {

std::string FormatBytes(uint64_t bytes) {
  static const char* const kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(bytes);
  int u = 0;
  while (v >= 1024 && u < 4) {
    v /= 1024;
    ++u;
  }
  char buf[32];
  if (u == 0 || v == std::floor(v)) {
    std::snprintf(buf, sizeof buf, "%.0f %s", v, kUnits[u]);
  } else {
    std::snprintf(buf, sizeof buf, u >= 3 ? "%.2f %s" : "%.1f %s", v, kUnits[u]);
  }
  return buf;
}

}  // namespace flashlm
