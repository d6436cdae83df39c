// PredictorTrainer: learns the low-rank FFN predictors of the `predictor` sparsity mode
// (layout/ffn_predictor.h; LLM in a flash, Alizadeh et al. 2023, section 3.1) from the engine's
// own activations over a calibration text.
//
// Collection: as an FfnObserver (engine/transformer.h) of a dense forward pass it keeps, per layer
// and token, the FFN input x (dim f32) and what decides whether each neuron fired: for a ReLU model
// the sign of gate x (a bit per neuron), for a SiLU model |h| = |act(gate x) * (up x)| (f32 per
// neuron). It keeps at most tokens_max tokens (the first ones seen; fixed at Create, from the
// caller's memory bound) and ignores the rest.
//
// Training (Train): per layer, labels are gate x > 0 (ReLU) or |h| above the layer's
// (1 - fire_fraction) quantile of |h| over the collected tokens (SiLU). The last heldout share of
// the tokens (in text order) is held out; the rest trains logits = B (A x) + bias (A rank x dim,
// B hidden x rank) by minibatch Adam on the mean binary cross-entropy, from a seeded random start
// (bias: each neuron's training fire rate as a logit). Products go through the engine's MatMul
// (f32) and its thread pool; the gradients are plain loops split over the pool.
// Reports, per layer, recall and precision on the held-out tokens at several cuts.
//
// Memory: the samples (Create's bound) plus one layer's training state at a time. Not
// thread-safe: the Forward caller's thread.
#ifndef FLASHLM_ENGINE_PREDICTOR_TRAINER_H_
#define FLASHLM_ENGINE_PREDICTOR_TRAINER_H_

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "engine/thread_pool.h"
#include "engine/transformer.h"
#include "layout/ffn_predictor.h"
#include "storage/status.h"

namespace flashlm::engine {

struct PredictorTrainOptions {
  uint32_t rank = 32;           // in [1, dim]
  float fire_fraction = 0.1f;   // SiLU: share of (token, neuron) labelled firing, in (0, 1)
  uint32_t epochs = 10;         // >= 1
  float learning_rate = 1e-3f;  // Adam's step
  float heldout = 0.2f;         // share of tokens held out, in (0, 1)
  uint32_t batch = 64;          // tokens per minibatch
  uint64_t seed = 1;
};

// Held-out quality of one layer's predictor at one cut on the probability.
struct PredictorQuality {
  float cut = 0.5f;
  double recall = 0;              // of the (token, neuron) pairs that fire, share predicted
  double precision = 0;           // of the pairs predicted, share that fire
  double predicted_fraction = 0;  // of all pairs, share predicted
};

// The cuts Train reports (the file keeps the 0.5 one).
inline constexpr float kPredictorReportCuts[] = {0.05f, 0.1f, 0.2f, 0.3f, 0.5f};

class PredictorTrainer final : public FfnObserver {
 public:
  // Bytes one token's samples take, for a memory bound.
  static uint64_t TokenBytes(uint32_t n_layers, uint32_t dim, uint32_t hidden, bool relu);
  // Errors: InvalidArgument (zero sizes, tokens_max 0).
  static Result<std::unique_ptr<PredictorTrainer>> Create(uint32_t n_layers, uint32_t dim,
                                                          uint32_t hidden, bool relu,
                                                          uint64_t tokens_max);

  void OnFfnInput(uint32_t layer, std::span<const float> x, uint32_t n_tokens) override;
  void OnFfnGate(uint32_t layer, std::span<const float> g, uint32_t n_tokens) override;
  void OnFfnActivations(uint32_t layer, std::span<const float> h, uint32_t n_tokens) override;

  // Tokens kept (every layer has them all).
  uint64_t tokens() const { return tokens_[n_layers_ - 1]; }

  struct Report {
    std::vector<std::vector<PredictorQuality>> layers;  // [layer][cut of kPredictorReportCuts]
    std::vector<double> train_loss;                     // [layer] mean BCE of the last epoch
    uint64_t train_tokens = 0, heldout_tokens = 0;
  };
  // Trains every layer. The result has no store identity (the caller sets it).
  // Errors: InvalidArgument (options out of range, fewer than 2 held-out or training tokens).
  Result<layout::FfnPredictor> Train(const PredictorTrainOptions& options, ThreadPool& pool,
                                     Report* report) const;

 private:
  PredictorTrainer(uint32_t n_layers, uint32_t dim, uint32_t hidden, bool relu, uint64_t max)
      : n_layers_(n_layers), dim_(dim), hidden_(hidden), relu_(relu), tokens_max_(max) {}
  // Token t's labels in `layer` (hidden bytes, 0/1) given the layer's cut on |h| (SiLU).
  void Labels(uint32_t layer, uint64_t t, float fire_cut, uint8_t* out) const;

  uint32_t n_layers_, dim_, hidden_;
  bool relu_;
  uint64_t tokens_max_;
  uint64_t words_ = 0;                 // ReLU: u64 words of one token's bits
  std::vector<uint64_t> tokens_;       // [layer] tokens kept
  std::vector<uint64_t> pending_;      // [layer] tokens of the current call (set by OnFfnInput)
  std::vector<std::vector<float>> x_;  // [layer] tokens_max x dim
  std::vector<std::vector<uint64_t>> bits_;  // ReLU: [layer] tokens_max x words_ (gate > 0)
  std::vector<std::vector<float>> mag_;      // SiLU: [layer] tokens_max x hidden |h|
};

}  // namespace flashlm::engine

#endif  // FLASHLM_ENGINE_PREDICTOR_TRAINER_H_
