// GateCalibrator: an FfnObserver (engine/transformer.h) that learns, per layer, the cut-off on
// |act(gate x)| below which a target fraction of the FFN's neurons falls: the thresholds of the
// approximate `threshold` sparsity mode (CATS, Lee et al. 2024, arXiv:2404.08763, which picks a
// per-layer cut as a percentile of calibration activations).
//
// Every (token, neuron) of a layer adds |act(g)| (act = SiLU or ReLU, computed as the forward
// pass computes it) to a histogram of the layer: exact zeros in a bin of their own, the rest in
// kBinsPerOctave bins per power of two from 2^kMinExponent to 2^kMaxExponent (values outside are
// clamped to the end bins). Thresholds(S) returns per layer the upper edge of the bin where the
// cumulative count first reaches S of the layer's values, so that at least S of the calibration
// values are <= the cut (the edge is within 2^(1/kBinsPerOctave) of the exact quantile), and the
// fraction that actually is.
//
// Memory: n_layers x kBins u64 counts, allocated at Create; OnFfnGate allocates nothing.
// Not thread-safe: called from the one Forward caller.
#ifndef FLASHLM_ENGINE_GATE_CALIBRATOR_H_
#define FLASHLM_ENGINE_GATE_CALIBRATOR_H_

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "engine/transformer.h"
#include "storage/status.h"

namespace flashlm::engine {

class GateCalibrator final : public FfnObserver {
 public:
  static constexpr int kMinExponent = -40, kMaxExponent = 24;
  static constexpr uint32_t kBinsPerOctave = 128;
  static constexpr uint32_t kBins = (kMaxExponent - kMinExponent) * kBinsPerOctave + 1;  // + zero

  // Errors: InvalidArgument (n_layers or hidden_dim 0).
  static Result<std::unique_ptr<GateCalibrator>> Create(uint32_t n_layers, uint32_t hidden_dim,
                                                        bool relu);

  void OnFfnGate(uint32_t layer, std::span<const float> g, uint32_t n_tokens) override;
  void OnFfnActivations(uint32_t, std::span<const float>, uint32_t) override {}

  // Tokens observed in `layer`.
  uint64_t tokens(uint32_t layer) const { return tokens_.at(layer); }

  struct Cut {
    float threshold = 0;  // >= 0
    double sparsity = 0;  // fraction of the layer's calibration values <= threshold
  };
  // Per layer, the cut for `target` in [0, 1). Errors: InvalidArgument (target), FailedPrecondition
  // (a layer saw no token).
  Result<std::vector<Cut>> Thresholds(double target) const;

 private:
  GateCalibrator(uint32_t n_layers, uint32_t hidden_dim, bool relu)
      : n_layers_(n_layers), hidden_dim_(hidden_dim), relu_(relu) {}
  static uint32_t Bin(float magnitude);
  static float UpperEdge(uint32_t bin);

  uint32_t n_layers_, hidden_dim_;
  bool relu_;
  std::vector<uint64_t> counts_;  // n_layers x kBins
  std::vector<uint64_t> tokens_;  // n_layers
};

}  // namespace flashlm::engine

#endif  // FLASHLM_ENGINE_GATE_CALIBRATOR_H_
