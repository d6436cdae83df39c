// The canonical tensor set of a LLaMA-family model (see layout/checkpoint.h): names and shapes
// derived from a ModelConfig. Readers check what they found against it; synth writes it.
// Stateless, thread-safe.
#ifndef FLASHLM_LAYOUT_LLAMA_TENSORS_H_
#define FLASHLM_LAYOUT_LLAMA_TENSORS_H_

#include <string>
#include <vector>

#include "layout/checkpoint.h"
#include "layout/model_config.h"
#include "storage/status.h"

namespace flashlm::layout {

// The tensors of one layer, by role, in file order.
enum class LayerTensor : uint8_t {
  kAttnNorm,
  kAttnQ,
  kAttnK,
  kAttnV,
  kAttnOutput,
  kFfnNorm,
  kFfnGate,
  kFfnUp,
  kFfnDown,
};
inline constexpr LayerTensor kLayerTensors[] = {
    LayerTensor::kAttnNorm, LayerTensor::kAttnQ,   LayerTensor::kAttnK,
    LayerTensor::kAttnV,    LayerTensor::kAttnOutput, LayerTensor::kFfnNorm,
    LayerTensor::kFfnGate,  LayerTensor::kFfnUp,   LayerTensor::kFfnDown};

// "blk.<layer>.attn_q.weight" and so on: the one place canonical layer names are spelled.
std::string LayerTensorName(uint32_t layer, LayerTensor role);
// Its shape under `config`: {rows, cols} for matrices (rows = output features), {n} for norms.
std::vector<uint64_t> LayerTensorShape(const ModelConfig& config, LayerTensor role);

// In file order: token_embd, then per layer attn_norm, attn_q, attn_k, attn_v, attn_output,
// ffn_norm, ffn_gate, ffn_up, ffn_down, then output_norm and (unless tied) output. The dtype of
// each entry is f32 (callers pick their own).
std::vector<TensorInfo> ExpectedLlamaTensors(const ModelConfig& config);

// Checks that `tensors` holds every expected tensor with the expected shape. Extra tensors are
// allowed. Errors: Corruption naming the missing tensor or the mismatched shape ("<source>: ...").
Status CheckLlamaTensors(const ModelConfig& config, const std::vector<TensorInfo>& tensors,
                         const std::string& source);

// config.Validate() for a config read from a file: an InvalidArgument becomes Corruption
// ("<source>: model config: ..."), NotSupported stays NotSupported.
Status ValidateLoadedConfig(const ModelConfig& config, const std::string& source);

std::string ShapeString(const std::vector<uint64_t>& shape);  // "[512, 64]"

}  // namespace flashlm::layout

#endif  // FLASHLM_LAYOUT_LLAMA_TENSORS_H_
