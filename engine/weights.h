// WeightStore: the one seam through which the forward pass gets model weights.
//
// The forward pass never touches a Checkpoint or a file. Per layer it asks the store for the
// layer's weights (AcquireLayer), and tells it when it is done with them, in this order:
//
//   AcquireLayer(l)     attention norm and matrices; FFN norm; the FFN as dense matrices or as
//                       a NeuronSource of bundles (+ the dense gate with gate+up-down bundles)
//   ReleaseMatrices(l)  the layer's matrices (attention, and a dense gate) are not used again
//                       in this pass: the store may reuse their memory, e.g. start reading the
//                       next streamed layer into it, and may start reading what follows the
//                       last layer (the classifier)
//   ReleaseLayer(l)     the FFN is done too
//
// These calls are the lifecycle: a store infers nothing from being called otherwise. Views from
// AcquireLayer stay valid until ReleaseMatrices (the attention matrices and a bundle store's
// dense gate) or ReleaseLayer (norms, the neuron source, a dense FFN's gate/up/down). The
// final norm and a resident classifier stay valid for the store's lifetime; the embedding is read
// through EmbedToken; a streamed classifier is served in row blocks by a ClassifierStream.
//
// Implementations: DramWeightStore (below: everything read once from a Checkpoint into DRAM, in
// the checkpoint's own dtype) and StoreWeights (engine/store_weights.h: a flashlm store under a
// memory budget, bundles pinned or streamed). Not thread-safe; one forward pass uses one store.
#ifndef FLASHLM_ENGINE_WEIGHTS_H_
#define FLASHLM_ENGINE_WEIGHTS_H_

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "engine/kernels.h"
#include "layout/checkpoint.h"
#include "layout/model_config.h"
#include "storage/aligned_buffer.h"
#include "storage/status.h"

namespace flashlm::engine {

class NeuronSource;      // engine/neuron_source.h
class ClassifierStream;  // engine/classifier_stream.h

struct LayerWeights {
  std::span<const float> attn_norm;  // dim
  MatrixView wq;                     // n_heads*head_dim x dim
  MatrixView wk;                     // n_kv_heads*head_dim x dim
  MatrixView wv;                     // n_kv_heads*head_dim x dim
  MatrixView wo;                     // dim x n_heads*head_dim
  std::span<const float> ffn_norm;   // dim
  // The dense FFN (neurons == nullptr): neuron i is row i of gate and up, column i of down.
  MatrixView gate;  // hidden x dim; also set with gate+up-down bundles (the gate is dense there)
  MatrixView up;    // hidden x dim
  MatrixView down;  // dim x hidden
  // The FFN as neuron bundles (gate/up/down rows and columns together, layout/bundle_layout.h).
  NeuronSource* neurons = nullptr;
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
  // vocab x dim (the embedding itself when tied); empty when classifier_stream() is set.
  virtual const MatrixView& classifier() const = 0;
  // Non-null when the classifier is streamed in row blocks.
  virtual ClassifierStream* classifier_stream() { return nullptr; }
  // Non-null when every layer's FFN is served as neuron bundles (the same source for all).
  virtual NeuronSource* neurons() { return nullptr; }
  // Makes layer `layer`'s weights available (see the lifecycle above). At most one layer is
  // acquired at a time. Errors: InvalidArgument (layer out of range), IoError/Corruption.
  virtual Result<LayerWeights> AcquireLayer(uint32_t layer) = 0;
  // Errors: IoError from starting reads ahead.
  virtual Status ReleaseMatrices(uint32_t layer) { return Status::Ok(); }
  virtual void ReleaseLayer(uint32_t layer) {}
};

class DramWeightStore final : public WeightStore {
 public:
  // Reads every tensor of `checkpoint` into DRAM. Errors: NotFound naming a missing tensor,
  // Corruption for a shape that disagrees with the config, NotSupported for a dtype the kernels
  // lack, InvalidArgument for a config the engine cannot run, plus the checkpoint's read errors.
  static Result<std::unique_ptr<DramWeightStore>> Load(layout::Checkpoint& checkpoint);

  const layout::ModelConfig& config() const override { return config_; }
  Status EmbedToken(uint32_t token, std::span<float> out) override;
  const MatrixView& token_embedding() const { return embedding_; }
  std::span<const float> output_norm() const override { return output_norm_; }
  const MatrixView& classifier() const override { return classifier_; }
  Result<LayerWeights> AcquireLayer(uint32_t layer) override;

  uint64_t resident_bytes() const { return resident_bytes_; }
  // Bytes of weights one decode step reads: every layer's matrices and norms, the final norm,
  // the classifier, and one row of the embedding (all of it where the classifier is the
  // embedding, tied). Its speed over these bytes is the decode's achieved weight bandwidth.
  uint64_t decode_bytes_per_token() const { return decode_bytes_per_token_; }

 private:
  DramWeightStore() = default;
  // Matrix `name` of the checkpoint (info, owned by it) and as kept in DRAM (as_loaded: its own
  // dtype where MatMul takes it, else f32), after checking it against `shape` and the kernels.
  struct PlannedMatrix {
    const layout::TensorInfo* info;
    layout::TensorInfo as_loaded;
  };
  static Result<PlannedMatrix> PlanMatrix(layout::Checkpoint& ckpt, const std::string& name,
                                          std::span<const uint64_t> shape);
  // Who reads a matrix: only MatMul (its bytes may be rearranged for the kernels, e.g. q4_0 in
  // 16-row strips), or also row by row (the embedding).
  enum class MatrixUse { kMatMulOnly, kRowsToo };
  // Reads matrix `name` into the next bytes of matrices_ (planned by Load).
  Result<MatrixView> LoadMatrix(layout::Checkpoint& ckpt, const std::string& name,
                                std::span<const uint64_t> shape, MatrixUse use);
  Result<std::span<const float>> LoadVector(layout::Checkpoint& ckpt, const std::string& name,
                                            uint64_t n);

  layout::ModelConfig config_;
  storage::AlignedBuffer matrices_;  // every matrix, each at a multiple of 64 bytes
  uint64_t matrices_used_ = 0;
  std::vector<std::unique_ptr<std::byte[]>> buffers_;  // the vectors (norms)
  MatrixView embedding_;
  MatrixView classifier_;
  std::span<const float> output_norm_;
  std::vector<LayerWeights> layers_;
  uint64_t resident_bytes_ = 0;
  uint64_t decode_bytes_per_token_ = 0;
};

// Checks a matrix the engine is about to multiply: shape {rows, cols} as `shape` says, a dtype
// MatMul supports. Errors: Corruption (shape), NotSupported (dtype); both name the tensor.
Status CheckMatrix(const layout::TensorInfo& info, std::span<const uint64_t> shape);

}  // namespace flashlm::engine

#endif  // FLASHLM_ENGINE_WEIGHTS_H_
