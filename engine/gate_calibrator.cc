#include "engine/gate_calibrator.h"

#include <cmath>

#include "engine/kernels.h"
#include "storage/check.h"

namespace flashlm::engine {

Result<std::unique_ptr<GateCalibrator>> GateCalibrator::Create(uint32_t n_layers,
                                                               uint32_t hidden_dim, bool relu) {
  if (n_layers == 0 || hidden_dim == 0) {
    return InvalidArgumentError("gate calibrator: no layers or neurons");
  }
  std::unique_ptr<GateCalibrator> c(new GateCalibrator(n_layers, hidden_dim, relu));
  c->counts_.assign(uint64_t{n_layers} * kBins, 0);
  c->tokens_.assign(n_layers, 0);
  return c;
}

uint32_t GateCalibrator::Bin(float m) {
  // Bin 0: exact zeros. Bin b >= 1 covers [2^(min + (b-1)/k), 2^(min + b/k)).
  if (!(m > 0)) return 0;
  const double pos = (std::log2(static_cast<double>(m)) - kMinExponent) * kBinsPerOctave;
  if (pos < 0) return 1;
  const double bin = std::floor(pos) + 1;
  return bin >= kBins - 1 ? kBins - 1 : static_cast<uint32_t>(bin);
}

float GateCalibrator::UpperEdge(uint32_t bin) {
  if (bin == 0) return 0.0f;
  return static_cast<float>(std::exp2(kMinExponent + static_cast<double>(bin) / kBinsPerOctave));
}

void GateCalibrator::OnFfnGate(uint32_t layer, std::span<const float> g, uint32_t n_tokens) {
  CHECK_LT(layer, n_layers_);
  CHECK_EQ(g.size(), uint64_t{n_tokens} * hidden_dim_);
  uint64_t* counts = counts_.data() + uint64_t{layer} * kBins;
  for (float v : g) ++counts[Bin(ActivationMagnitude(v, relu_))];
  tokens_[layer] += n_tokens;
}

Result<std::vector<GateCalibrator::Cut>> GateCalibrator::Thresholds(double target) const {
  if (!(target >= 0 && target < 1)) {
    return InvalidArgumentError("target sparsity must be in [0, 1)");
  }
  std::vector<Cut> cuts(n_layers_);
  for (uint32_t l = 0; l < n_layers_; ++l) {
    if (tokens_[l] == 0) {
      return FailedPreconditionError("gate calibrator: layer " + std::to_string(l) +
                                     " saw no token");
    }
    const uint64_t* counts = counts_.data() + uint64_t{l} * kBins;
    const uint64_t total = tokens_[l] * hidden_dim_;
    if (target == 0) {  // nothing asked: a cut at 0 skips only what is exactly 0
      cuts[l] = Cut{0.0f, static_cast<double>(counts[0]) / static_cast<double>(total)};
      continue;
    }
    // The first bin whose cumulative count reaches the target; the cut is its upper edge, so
    // every value in it and below is skipped (the recorded sparsity counts them).
    const double want = target * static_cast<double>(total);
    uint64_t below = 0;
    uint32_t b = 0;
    while (b + 1 < kBins && static_cast<double>(below + counts[b]) < want) below += counts[b++];
    below += counts[b];
    cuts[l] = Cut{UpperEdge(b), static_cast<double>(below) / static_cast<double>(total)};
  }
  return cuts;
}

}  // namespace flashlm::engine
