// FFN predictor: per layer a low-rank predictor of which FFN neurons fire for a token, from the
// FFN's input x alone (LLM in a flash, Alizadeh et al. 2023, section 3.1): logits = B (A x) + bias,
// A rank x dim, B hidden x rank, bias hidden, all f32; neuron i is predicted to fire when
// sigmoid(logit_i) > the cut chosen at run time (--predictor-cut). Trained by
// `flashlm train-predictor` (engine/predictor_trainer.h) and kept beside the store it was trained
// on (docs/format.md, "FFN predictor file").
//
// "Fires" is what the labels meant in training, kept per layer: for a ReLU model gate x > 0; for
// a SiLU model |act(gate x) * (up x)| > fire_cut, the layer's (1 - fire_fraction) quantile of those
// values over the training text. The run-time kernel counts the neurons it reads that fire by the
// same rule (the predictor's precision in use).
//
// The file is binary, little-endian: a 64-byte header, per layer a 16-byte record and the f32
// matrices, then an XXH3-64 of everything before it. It names the identity of the store it belongs
// to (StoreReader::identity()): a damaged file, one from another store or of another shape is
// refused, never used. Stateless, thread-safe.
#ifndef FLASHLM_LAYOUT_FFN_PREDICTOR_H_
#define FLASHLM_LAYOUT_FFN_PREDICTOR_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "storage/status.h"

namespace flashlm::layout {

// The file's name inside a store folder (its default place).
inline constexpr std::string_view kFfnPredictorFileName = "ffn_predictor.bin";
// Bounds a load checks before it allocates.
inline constexpr uint32_t kFfnPredictorLayersMax = 4096;
inline constexpr uint32_t kFfnPredictorRankMax = 4096;
inline constexpr uint32_t kFfnPredictorWidthMax = 1u << 20;  // dim, hidden
inline constexpr uint64_t kFfnPredictorBytesMax = uint64_t{4} << 30;

struct FfnPredictorLayer {
  float fire_cut = 0;            // SiLU: the |h| a neuron must exceed to count as firing; ReLU: 0
  float recall = 0;              // on the held-out tokens at cut 0.5 (what train-predictor saw)
  float precision = 0;           // the same
  float predicted_fraction = 0;  // share of neurons predicted to fire there
  std::vector<float> a;          // rank x dim, row-major
  std::vector<float> b;          // hidden x rank, row-major
  std::vector<float> bias;       // hidden
  // After HoldAsF16: a and b as f16 (round to nearest even), a and b themselves emptied.
  std::vector<uint16_t> a_f16, b_f16;
  bool f16() const { return !a_f16.empty(); }
};

struct FfnPredictor {
  uint64_t store_identity = 0;  // StoreReader::identity() of the store trained on
  uint32_t dim = 0, hidden = 0, rank = 0;
  bool relu = false;        // fires = gate x > 0 (else |h| > fire_cut)
  float fire_fraction = 0;  // SiLU: the share of (token, neuron) labelled firing; ReLU: 0
  uint64_t tokens = 0;      // training tokens (held-out ones included)
  std::vector<FfnPredictorLayer> layers;
  // f32 values of one layer's matrices and bias.
  uint64_t LayerValues() const {
    return uint64_t{rank} * dim + uint64_t{hidden} * rank + hidden;
  }
  // DRAM one layer's matrices and bias take as held (f32, or f16 matrices after HoldAsF16).
  uint64_t LayerBytes(bool f16) const {
    return (uint64_t{rank} * dim + uint64_t{hidden} * rank) * (f16 ? 2 : 4) + uint64_t{hidden} * 4;
  }
};

// Converts every layer's A and B to f16 and frees their f32 values (the engine multiplies them as
// f16: half the DRAM and the bytes a prediction reads; the bias stays f32). Leaves the predictor
// as it was, and returns false, when some value is beyond f16's range (|v| > 65504).
bool HoldAsF16(FfnPredictor* p);

// The file's size for this shape (header, layers, checksum).
uint64_t FfnPredictorFileBytes(uint32_t layers, uint32_t dim, uint32_t hidden, uint32_t rank);

// Writes `p` to `path` atomically. Errors: InvalidArgument (sizes disagree, values not finite,
// shape beyond the bounds), IoError.
Status SaveFfnPredictor(const FfnPredictor& p, const std::string& path);

// Reads and checks a predictor file for a model of `layers` x (`dim`, `hidden`) in the store whose
// identity is `store_identity`. Errors: NotFound (no file; the message says how to make one),
// Corruption (wrong magic, size, checksum, values out of range), NotSupported (another version),
// InvalidArgument (another store's file, or another shape's), IoError.
Result<FfnPredictor> LoadFfnPredictor(const std::string& path, uint64_t store_identity,
                                      uint32_t layers, uint32_t dim, uint32_t hidden);

}  // namespace flashlm::layout

#endif  // FLASHLM_LAYOUT_FFN_PREDICTOR_H_
