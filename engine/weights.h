// WeightStore: the one seam through which the forward pass reads model weights.
//
// The forward pass never touches a Checkpoint or a file: it asks the store for a layer's weights
// (AcquireLayer), computes, and hands them back (ReleaseLayer). Views returned by AcquireLayer
// stay valid until the matching ReleaseLayer, except that a store serving the FFN itself
// (LayerWeights::ffn) may reuse the attention matrices' memory once FfnProvider::Forward is
// called (the forward pass has finished attention by then). The final norm and the classifier
// stay valid for the store's lifetime (the embedding is read through EmbedToken; the classifier
// may instead be served by a ClassifierProvider). An out-of-core store streams a layer from
// flash on Acquire and may evict it on Release; the FFN's matrices are given so that a subset of
// neurons can be computed (neuron i is row i of gate and up, column i of down), which is what a
// neuron-bundle store will serve.
//
// DramWeightStore is the in-DRAM implementation: everything is read once from a Checkpoint at
// start-up, in the checkpoint's own dtype (f32/f16/q8_0/q4_0; bf16 is converted to f32).
// Not thread-safe; one forward pass uses one store.
#ifndef FLASHLM_ENGINE_WEIGHTS_H_
#define FLASHLM_ENGINE_WEIGHTS_H_

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "engine/kernels.h"
#include "layout/checkpoint.h"
#include "layout/model_config.h"
#include "storage/status.h"

namespace flashlm::engine {

// An FFN served by the store itself (out-of-core neuron bundles, engine/bundle_ffn.h) instead of
// as gate/up/down matrices. When LayerWeights::ffn is set the forward pass calls Forward and
// ignores gate/up/down.
class FfnProvider {
 public:
  virtual ~FfnProvider() = default;
  // out[t] = down(act(gate xb[t]) * up xb[t]) for t < n: xb and out are n x dim, row-major.
  // Errors: IoError/Corruption from streaming the layer's bundles.
  virtual Status Forward(uint32_t layer, std::span<const float> xb, uint32_t n,
                         std::span<float> out) = 0;
};

// A classifier served by the store (streamed from flash in row ranges) instead of as one
// resident matrix. When WeightStore::classifier_provider() returns one, the forward pass calls
// Logits and does not use classifier().
class ClassifierProvider {
 public:
  virtual ~ClassifierProvider() = default;
  // logits[t] = classifier * x[t] for t < n: x is n x dim (normed), logits n x vocab.
  // Errors: IoError/Corruption from streaming the classifier.
  virtual Status Logits(std::span<const float> x, uint32_t n, std::span<float> logits) = 0;
};

struct LayerWeights {
  std::span<const float> attn_norm;  // dim
  MatrixView wq;                     // n_heads*head_dim x dim
  MatrixView wk;                     // n_kv_heads*head_dim x dim
  MatrixView wv;                     // n_kv_heads*head_dim x dim
  MatrixView wo;                     // dim x n_heads*head_dim
  std::span<const float> ffn_norm;   // dim
  MatrixView gate;                   // hidden x dim   (neuron i = row i)
  MatrixView up;                     // hidden x dim   (neuron i = row i)
  MatrixView down;                   // dim x hidden   (neuron i = column i)
  FfnProvider* ffn = nullptr;        // when set: the FFN is computed by the store (see above)
};

class WeightStore {
 public:
  virtual ~WeightStore() = default;
  virtual const layout::ModelConfig& config() const = 0;
  // Writes row `token` of the token embedding (vocab x dim) as dim floats into out.
  // Precondition: token < vocab_size, out.size() == dim. Errors: IoError/Corruption from a store
  // that reads embedding rows from flash on demand.
  virtual Status EmbedToken(uint32_t token, std::span<float> out) = 0;
  virtual std::span<const float> output_norm() const = 0;  // dim
  // vocab x dim (the embedding itself when tied); empty when classifier_provider() is set.
  virtual const MatrixView& classifier() const = 0;
  // Non-null when the store computes the logits itself (see ClassifierProvider).
  virtual ClassifierProvider* classifier_provider() { return nullptr; }
  // Makes layer `layer`'s weights available. Errors: IoError/Corruption from the backing store.
  // The views live until ReleaseLayer(layer). At most one layer is acquired at a time by the
  // forward pass (a streaming store may prefetch the next one).
  virtual Result<LayerWeights> AcquireLayer(uint32_t layer) = 0;
  virtual void ReleaseLayer(uint32_t layer) = 0;
};

class DramWeightStore final : public WeightStore {
 public:
  // Reads every tensor of `checkpoint` into DRAM. Errors: NotFound naming a missing tensor,
  // Corruption for a shape that disagrees with the config, NotSupported for a dtype the kernels
  // lack, plus the checkpoint's own read errors.
  static Result<std::unique_ptr<DramWeightStore>> Load(layout::Checkpoint& checkpoint);

  const layout::ModelConfig& config() const override { return config_; }
  Status EmbedToken(uint32_t token, std::span<float> out) override;
  const MatrixView& token_embedding() const { return embedding_; }
  std::span<const float> output_norm() const override { return output_norm_; }
  const MatrixView& classifier() const override { return classifier_; }
  Result<LayerWeights> AcquireLayer(uint32_t layer) override;
  void ReleaseLayer(uint32_t layer) override {}

  uint64_t resident_bytes() const { return resident_bytes_; }

 private:
  DramWeightStore() = default;
  Result<MatrixView> LoadMatrix(layout::Checkpoint& ckpt, const std::string& name, uint64_t rows,
                                uint64_t cols);
  Result<std::span<const float>> LoadVector(layout::Checkpoint& ckpt, const std::string& name,
                                            uint64_t n);

  layout::ModelConfig config_;
  std::vector<std::unique_ptr<std::byte[]>> buffers_;  // owns every tensor's bytes
  MatrixView embedding_;
  MatrixView classifier_;
  std::span<const float> output_norm_;
  std::vector<LayerWeights> layers_;
  uint64_t resident_bytes_ = 0;
};

}  // namespace flashlm::engine

#endif  // FLASHLM_ENGINE_WEIGHTS_H_
