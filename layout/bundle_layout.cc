#include "layout/bundle_layout.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <numeric>
#include <sstream>

#include "layout/json_util.h"
#include "storage/bytes.h"
#include "storage/file.h"

namespace flashlm::layout {

BundleGeometry BundleGeometry::Make(BundleKind kind, DType dtype, uint32_t dim,
                                    uint64_t alignment_bytes) {
  BundleGeometry g;
  g.kind = kind;
  g.dtype = dtype;
  g.dim = dim;
  g.part_bytes = RowBytes(dtype, dim);
  g.bundle_bytes = g.part_bytes * (kind == BundleKind::kGateUpDown ? 3 : 2);
  g.stride_bytes = AlignUp(g.bundle_bytes, alignment_bytes);
  return g;
}

Result<ActivationStats> LoadActivationStats(const std::string& path) {
  // Bounded: a statistics file holds one number per neuron (4M neurons x 1K layers is far less).
  constexpr uint64_t kStatsBytesMax = uint64_t{1} << 30;
  Result<std::string> text = storage::ReadFileBounded(path, kStatsBytesMax);
  if (!text.ok()) return text.status().WithContext("activation statistics");
  const std::string where = "activation statistics " + path;
  ASSIGN_OR_RETURN(nlohmann::json j, ParseUntrustedJson(*text, where));
  if (!j.is_object()) return CorruptionError(where + ": not a JSON object");
  auto fmt = j.find("format");
  if (fmt == j.end() || !fmt->is_string() || fmt->get<std::string>() != "flashlm-activations") {
    return CorruptionError(where + ": \"format\" must be \"flashlm-activations\"");
  }
  auto ver = j.find("version");
  if (ver == j.end() || !ver->is_number_integer() || ver->get<int64_t>() != 1) {
    return NotSupportedError(where + ": only \"version\": 1 is supported");
  }
  auto layers = j.find("layers");
  if (layers == j.end() || !layers->is_array()) {
    return CorruptionError(where + ": \"layers\" must be an array of arrays");
  }
  ActivationStats stats;
  for (size_t l = 0; l < layers->size(); ++l) {
    const nlohmann::json& arr = (*layers)[l];
    if (!arr.is_array())
      return CorruptionError(where + ": layer " + std::to_string(l) + " is not an array");
    std::vector<float> freq;
    freq.reserve(arr.size());
    for (size_t i = 0; i < arr.size(); ++i) {
      if (!arr[i].is_number()) {
        return CorruptionError(where + ": layer " + std::to_string(l) + " neuron " +
                               std::to_string(i) + " is not a number");
      }
      double v = arr[i].get<double>();
      if (!std::isfinite(v) || v < 0 || v > 1) {
        return CorruptionError(where + ": layer " + std::to_string(l) + " neuron " +
                               std::to_string(i) + " frequency outside [0, 1]");
      }
      freq.push_back(static_cast<float>(v));
    }
    stats.layers.push_back(std::move(freq));
  }
  return stats;
}

Status SaveActivationStats(const ActivationStats& stats, const std::string& path) {
  nlohmann::json j;
  j["format"] = "flashlm-activations";
  j["version"] = 1;
  j["layers"] = stats.layers;
  // Completely or not at all: a full disk must not leave a truncated statistics file behind.
  return storage::WriteFileAtomically(path, AsBytes(j.dump() + "\n"))
      .WithContext("activation statistics");
}

std::vector<uint32_t> HotFirstPermutation(std::span<const float> frequencies) {
  std::vector<uint32_t> perm(frequencies.size());
  std::iota(perm.begin(), perm.end(), 0u);
  std::stable_sort(perm.begin(), perm.end(),
                   [&](uint32_t a, uint32_t b) { return frequencies[a] > frequencies[b]; });
  return perm;
}

}  // namespace flashlm::layout
