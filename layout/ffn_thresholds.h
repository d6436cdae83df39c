// FFN thresholds: per-layer magnitude cut-offs for the approximate `threshold` sparsity mode
// (CATS, Lee et al. 2024, arXiv:2404.08763), calibrated over a text by `flashlm calibrate` and
// kept beside the store they were calibrated on (docs/format.md, "FFN thresholds file").
//
// In layer l a neuron contributes to a token only when |act(gate_i . x)| > thresholds[l] (act =
// SiLU or ReLU, the model's). thresholds[l] is the target_sparsity quantile of |act(gate x)|
// over every (token, neuron) of the calibration text in that layer, so about that fraction of
// neurons is skipped per token.
//
// The file is JSON with an XXH3-64 checksum of its content and the identity of the store it
// belongs to (the sealed XXH3 of the store's catalog, layout/catalog_seal.h): a damaged file, a
// file from another store or one whose shape disagrees with the model is refused, never used.
// Stateless, thread-safe.
#ifndef FLASHLM_LAYOUT_FFN_THRESHOLDS_H_
#define FLASHLM_LAYOUT_FFN_THRESHOLDS_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "storage/status.h"

namespace flashlm::layout {

// The file's name inside a store folder (its default place).
inline constexpr std::string_view kFfnThresholdsFileName = "ffn_thresholds.json";
// Layers a thresholds file may hold (far more than any model has; bounds what a load allocates).
inline constexpr uint32_t kFfnThresholdLayersMax = 4096;

struct FfnThresholds {
  uint64_t store_identity = 0;    // StoreReader::identity() of the store calibrated on
  uint32_t hidden_dim = 0;        // neurons per layer of that model
  double target_sparsity = 0;     // in [0, 1): the fraction of neurons skipped that was asked for
  uint64_t tokens = 0;            // calibration tokens
  std::vector<float> thresholds;  // [layer] finite, >= 0
  std::vector<double> calibrated_sparsity;  // [layer] fraction skipped on the calibration text
};

// Writes `t` to `path` atomically (a temp file renamed over it; nothing half-written is left).
// Errors: InvalidArgument (sizes disagree, values out of range), IoError.
Status SaveFfnThresholds(const FfnThresholds& t, const std::string& path);

// Reads and checks a thresholds file. `store_identity` and the shape (`layers`, `hidden_dim`)
// must match the model it is used with. Errors: NotFound (no file; the message says how to make
// one), Corruption (malformed, checksum mismatch, values out of range), InvalidArgument (the
// file of another store, or of another shape: the wrong file was given), IoError.
Result<FfnThresholds> LoadFfnThresholds(const std::string& path, uint64_t store_identity,
                                        uint32_t layers, uint32_t hidden_dim);

}  // namespace flashlm::layout

#endif  // FLASHLM_LAYOUT_FFN_THRESHOLDS_H_
