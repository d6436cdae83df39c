// ActivationCounter: an FfnObserver (engine/transformer.h) that counts, per layer and FFN neuron,
// on how many tokens the neuron fired, and turns the counts into the firing frequencies that
// `flashlm repack --activations` reads (layout::ActivationStats, docs/format.md).
//
// h = act(gate x) * (up x) is the FFN's hidden vector of one token in one layer (hidden_dim
// values). Neuron i fires on that token when, by FiringRule:
//  - kNonZero: h_i != 0. Meant for ReLU-gated models, where h_i = relu(g_i) * u_i is non-zero
//    exactly when the ReLU output is positive (barring u_i == 0): PowerInfer's "activated
//    neuron" of a ReLU model (a positive ReLU output), carried over to a gated FFN.
//  - kTopFraction: |h_i| is among the k = round(F * hidden_dim) (at least 1) largest |h| of that
//    token and layer (ties broken by the lower index, so exactly k neurons fire per token).
//    Meant for SiLU models, whose h is almost never exactly 0. A per-token top-k of magnitudes is
//    our choice; the published work on SiLU sparsity uses magnitude cut-offs (CATS, Lee et al.
//    2024, arXiv:2404.08763, zeroes |SiLU(gate x)| below a per-layer threshold picked as a
//    percentile of calibration activations).
//  - kThreshold: |h_i| > T (a fixed magnitude cut-off, as CATS but on h rather than the gate).
// The frequency of a neuron is (tokens it fired on) / (tokens observed in its layer).
//
// Memory: n_layers x hidden_dim u64 counts and hidden_dim u32 scratch, allocated at Create;
// OnFfnActivations allocates nothing. Not thread-safe: called from the one Forward caller.
#ifndef FLASHLM_ENGINE_ACTIVATION_COUNTER_H_
#define FLASHLM_ENGINE_ACTIVATION_COUNTER_H_

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "engine/transformer.h"
#include "layout/bundle_layout.h"
#include "layout/model_config.h"
#include "storage/status.h"

namespace flashlm::engine {

enum class FiringRule { kNonZero, kTopFraction, kThreshold };

struct FiringOptions {
  FiringRule rule = FiringRule::kTopFraction;
  double top_fraction = 0.2;  // kTopFraction: in (0, 1]
  float threshold = 0.0f;     // kThreshold: finite, >= 0
};

// The rule a model gets when the user names none: kNonZero for ReLU models, kTopFraction (0.2)
// for SiLU models.
FiringOptions DefaultFiringOptions(const layout::ModelConfig& config);

class ActivationCounter final : public FfnObserver {
 public:
  // Errors: InvalidArgument (n_layers or hidden_dim 0, top_fraction outside (0, 1], threshold
  // negative or not finite).
  static Result<std::unique_ptr<ActivationCounter>> Create(uint32_t n_layers, uint32_t hidden_dim,
                                                           const FiringOptions& options);

  // FfnObserver. Precondition (CHECKed): layer < n_layers, h.size() == n_tokens * hidden_dim.
  void OnFfnActivations(uint32_t layer, std::span<const float> h, uint32_t n_tokens) override;

  uint32_t n_layers() const { return n_layers_; }
  uint32_t hidden_dim() const { return hidden_dim_; }
  // Neurons that fire on each token under kTopFraction (0 for the other rules).
  uint32_t top_k() const { return top_k_; }
  // Tokens observed in `layer`, and per neuron how many of them it fired on (hidden_dim values;
  // the view lives as long as the counter).
  uint64_t tokens(uint32_t layer) const { return tokens_.at(layer); }
  std::span<const uint64_t> counts(uint32_t layer) const;

  // counts / tokens per layer and neuron, each in [0, 1]. Errors: FailedPrecondition when a layer
  // saw no token (nothing observed, e.g. a store whose FFN runs out of core).
  Result<layout::ActivationStats> Frequencies() const;

 private:
  ActivationCounter(uint32_t n_layers, uint32_t hidden_dim, const FiringOptions& options);

  uint32_t n_layers_;
  uint32_t hidden_dim_;
  FiringOptions options_;
  uint32_t top_k_ = 0;
  std::vector<uint64_t> counts_;  // n_layers x hidden_dim
  std::vector<uint64_t> tokens_;  // n_layers
  std::vector<uint32_t> order_;   // hidden_dim: neuron indices, scratch for kTopFraction
};

// Runs `tokens` through `model` in consecutive, non-overlapping windows of `ctx` tokens, each run
// from position 0, in batches of at most model.max_batch(): every token is evaluated exactly once
// (unlike engine::Perplexity, whose windows overlap by one token). The logits are discarded; an
// FfnObserver set on the model sees every token. Errors: InvalidArgument (no tokens, ctx 0 or
// beyond model.max_context()), Forward's errors.
Status ForwardInWindows(Transformer& model, std::span<const int32_t> tokens, uint32_t ctx);

}  // namespace flashlm::engine

#endif  // FLASHLM_ENGINE_ACTIVATION_COUNTER_H_
