// Transformer: the LLaMA forward pass over a WeightStore, with the KV cache in DRAM.
//
// RMSNorm; RoPE in Meta's interleaved convention (pairs 2i, 2i+1 of each head) with theta and
// linear or LLaMA-3 scaling from the config; multi-head and grouped-query attention; SwiGLU (or
// ReLU-gated) FFN; tied or separate classifier. A batch of tokens (prefill) goes through every
// layer as a matrix-matrix product. Every buffer (activations, KV cache, RoPE tables, attention
// scores per thread, q8 scratch) is sized at Create from the config, the maximum context and the
// maximum batch; Forward allocates nothing.
// Not thread-safe: one caller; the ThreadPool is used inside.
#ifndef FLASHLM_ENGINE_TRANSFORMER_H_
#define FLASHLM_ENGINE_TRANSFORMER_H_

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "engine/thread_pool.h"
#include "engine/weights.h"
#include "storage/status.h"

namespace flashlm::engine {

// Observes the FFN's hidden activations h = act(gate x) * (up x) (after SwiGLU / ReLU gating,
// before the down projection), e.g. to count how often each neuron fires (calibration).
// Called on the thread that runs Forward, once per layer per Forward call, in layer order; it must
// not call back into the Transformer. `h` is n_tokens x hidden_dim f32, row-major (token t's
// neurons at h[t * hidden_dim ...]), exactly the values the down projection then reads; the view
// lives during the call. Not called for a layer whose FFN runs inside the weight store
// (LayerWeights::ffn != nullptr, out-of-core bundles): load the model resident to observe it.
class FfnObserver {
 public:
  virtual ~FfnObserver() = default;
  virtual void OnFfnActivations(uint32_t layer, std::span<const float> h, uint32_t n_tokens) = 0;
};

struct TransformerOptions {
  uint32_t max_context = 0;  // positions in the KV cache; 0 = the model's max_seq_len
  uint32_t max_batch = 128;  // tokens per Forward call
  bool all_logits = false;   // keep logits for every token of a batch (perplexity)
};

class Transformer {
 public:
  // Errors: InvalidArgument when max_context exceeds the model's maximum or sizes are zero.
  static Result<std::unique_ptr<Transformer>> Create(WeightStore& weights, ThreadPool& pool,
                                                     const TransformerOptions& options);

  // Runs `tokens` at positions [pos, pos + tokens.size()) and returns logits: vocab floats for the
  // last token, or tokens.size() x vocab with all_logits. The view lives until the next Forward.
  // Positions before `pos` must have been run already (their K/V are in the cache).
  // Errors: InvalidArgument (empty batch, batch > max_batch, pos + n > max_context, a token id
  // out of range); errors from WeightStore::AcquireLayer.
  Result<std::span<const float>> Forward(std::span<const int32_t> tokens, uint32_t pos);

  const layout::ModelConfig& config() const { return config_; }
  uint32_t max_context() const { return max_context_; }
  uint32_t max_batch() const { return max_batch_; }
  // Observer of the dense FFN activations (see FfnObserver); nullptr (the default) for none.
  // Not owned; must outlive its use by Forward.
  void set_ffn_observer(FfnObserver* observer) { ffn_observer_ = observer; }

 private:
  Transformer(WeightStore& weights, ThreadPool& pool) : weights_(weights), pool_(pool) {}
  void Attention(uint32_t layer, uint32_t n, uint32_t pos);
  void Rope(float* v, uint32_t n_heads, uint32_t pos) const;

  WeightStore& weights_;
  ThreadPool& pool_;
  layout::ModelConfig config_;
  uint32_t max_context_ = 0;
  uint32_t max_batch_ = 0;
  bool all_logits_ = false;
  uint32_t q_dim_ = 0, kv_dim_ = 0;
  FfnObserver* ffn_observer_ = nullptr;

  std::vector<float> x_;                  // max_batch x dim: residual stream
  std::vector<float> xb_;                 // max_batch x dim: normed input
  std::vector<float> q_;                  // max_batch x q_dim
  std::vector<float> k_;                  // max_batch x kv_dim
  std::vector<float> v_;                  // max_batch x kv_dim
  std::vector<float> att_out_;            // max_batch x q_dim
  std::vector<float> proj_;               // max_batch x dim
  std::vector<float> hb_;                 // max_batch x hidden (gate)
  std::vector<float> hb2_;                // max_batch x hidden (up)
  std::vector<float> scores_;             // threads x max_context
  std::vector<float> logits_;             // (all_logits ? max_batch : 1) x vocab
  std::vector<float> key_cache_;          // n_layers x max_context x kv_dim
  std::vector<float> value_cache_;        // n_layers x max_context x kv_dim
  std::vector<float> rope_cos_;           // max_context x head_dim/2
  std::vector<float> rope_sin_;           // max_context x head_dim/2
  std::unique_ptr<std::byte[]> scratch_;  // q8 activations, 64-byte aligned inside
  ByteSpan scratch_span_;
};

}  // namespace flashlm::engine

#endif  // FLASHLM_ENGINE_TRANSFORMER_H_
