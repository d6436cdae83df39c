// Neuron bundles: the byte layout of one FFN neuron's weights on flash, and hot-first ordering.
//
// For layer l and neuron i, a bundle holds row i of ffn_gate, row i of ffn_up and column i of
// ffn_down (kGateUpDown), or only [up row i | down column i] (kGateSeparate, gate stored densely
// for gate-first loading as in PowerInfer-2). Each part is dim values in the store dtype
// (RowBytes(dtype, dim) bytes); bundles start at multiples of the alignment so that one bundle is
// one O_DIRECT read. Plain values and pure functions; thread-safe.
//
// Activation statistics file (written by `flashlm activations`, input of `repack --activations`):
//   {"format": "flashlm-activations", "version": 1,
//    "layers": [[f_0, f_1, ..., f_{hidden-1}], ...]}      one array per layer
// where f_i in [0, 1] is how often neuron i fired (fraction of tokens). Hot-first stores neurons
// in order of decreasing frequency (ties keep the lower index first).
#ifndef FLASHLM_LAYOUT_BUNDLE_LAYOUT_H_
#define FLASHLM_LAYOUT_BUNDLE_LAYOUT_H_

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "layout/dtype.h"
#include "layout/store_format.h"
#include "storage/status.h"

namespace flashlm::layout {

struct BundleGeometry {
  BundleKind kind = BundleKind::kGateUpDown;
  DType dtype = DType::kF32;
  uint32_t dim = 0;
  uint64_t part_bytes = 0;    // RowBytes(dtype, dim)
  uint64_t bundle_bytes = 0;  // 3 or 2 parts
  uint64_t stride_bytes = 0;  // AlignUp(bundle_bytes, alignment)

  // Preconditions: alignment_bytes is a power of two, dim > 0.
  static BundleGeometry Make(BundleKind kind, DType dtype, uint32_t dim, uint64_t alignment_bytes);

  bool has_gate() const { return kind == BundleKind::kGateUpDown; }
  uint64_t gate_offset() const { return 0; }  // valid only when has_gate()
  uint64_t up_offset() const { return has_gate() ? part_bytes : 0; }
  uint64_t down_offset() const { return up_offset() + part_bytes; }
  // Fraction of each stride that is padding, in [0, 1).
  double padding_ratio() const {
    return stride_bytes == 0 ? 0.0 : double(stride_bytes - bundle_bytes) / double(stride_bytes);
  }
};

struct ActivationStats {
  std::vector<std::vector<float>> layers;  // [layer][neuron] firing frequency
};

// Reads the JSON file above. Errors: NotFound, Corruption naming the malformed field
// (wrong format tag, version, non-numeric or out-of-range value).
Result<ActivationStats> LoadActivationStats(const std::string& path);
// Writes `stats` in the same format (tests and `flashlm activations`). Errors: IoError.
Status SaveActivationStats(const ActivationStats& stats, const std::string& path);

// Position -> neuron order with the most frequently firing neurons first (stable).
std::vector<uint32_t> HotFirstPermutation(std::span<const float> frequencies);

}  // namespace flashlm::layout

#endif  // FLASHLM_LAYOUT_BUNDLE_LAYOUT_H_
