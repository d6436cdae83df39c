#include "layout/llama_tensors.h"

#include <unordered_map>

namespace flashlm::layout {

std::string LayerTensorName(uint32_t layer, LayerTensor role) {
  static const char* const kSuffix[] = {
      "attn_norm.weight", "attn_q.weight",   "attn_k.weight", "attn_v.weight",  "attn_output.weight",
      "ffn_norm.weight",  "ffn_gate.weight", "ffn_up.weight", "ffn_down.weight"};
  return "blk." + std::to_string(layer) + "." + kSuffix[static_cast<int>(role)];
}

std::vector<uint64_t> LayerTensorShape(const ModelConfig& c, LayerTensor role) {
  const uint64_t q_dim = static_cast<uint64_t>(c.n_heads) * c.head_dim;
  const uint64_t kv_dim = static_cast<uint64_t>(c.n_kv_heads) * c.head_dim;
  switch (role) {
    case LayerTensor::kAttnNorm:
    case LayerTensor::kFfnNorm:
      return {c.dim};
    case LayerTensor::kAttnQ:
      return {q_dim, c.dim};
    case LayerTensor::kAttnK:
    case LayerTensor::kAttnV:
      return {kv_dim, c.dim};
    case LayerTensor::kAttnOutput:
      return {c.dim, q_dim};
    case LayerTensor::kFfnGate:
    case LayerTensor::kFfnUp:
      return {c.hidden_dim, c.dim};
    case LayerTensor::kFfnDown:
      return {c.dim, c.hidden_dim};
  }
  return {};
}

std::vector<TensorInfo> ExpectedLlamaTensors(const ModelConfig& c) {
  std::vector<TensorInfo> t;
  auto add = [&t](std::string name, std::vector<uint64_t> shape) {
    t.push_back(TensorInfo{std::move(name), DType::kF32, std::move(shape)});
  };
  add("token_embd.weight", {c.vocab_size, c.dim});
  for (uint32_t l = 0; l < c.n_layers; ++l) {
    for (LayerTensor role : kLayerTensors) add(LayerTensorName(l, role), LayerTensorShape(c, role));
  }
  add("output_norm.weight", {c.dim});
  if (!c.tied_embeddings) add("output.weight", {c.vocab_size, c.dim});
  return t;
}

Status ValidateLoadedConfig(const ModelConfig& config, const std::string& source) {
  Status s = config.Validate();
  if (s.ok()) return s;
  if (s.code() == StatusCode::kInvalidArgument) {
    return CorruptionError(source + ": " + std::string(s.message()));
  }
  return s.WithContext(source);
}

std::string ShapeString(const std::vector<uint64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

Status CheckLlamaTensors(const ModelConfig& config, const std::vector<TensorInfo>& tensors,
                         const std::string& source) {
  std::unordered_map<std::string_view, const TensorInfo*> by_name;
  for (const TensorInfo& t : tensors) by_name[t.name] = &t;
  for (const TensorInfo& want : ExpectedLlamaTensors(config)) {
    auto it = by_name.find(want.name);
    if (it == by_name.end()) {
      return CorruptionError(source + ": missing tensor " + want.name);
    }
    if (it->second->shape != want.shape) {
      return CorruptionError(source + ": tensor " + want.name + " has shape " +
                             ShapeString(it->second->shape) + ", expected " +
                             ShapeString(want.shape) + " from the model config");
    }
  }
  return Status::Ok();
}

}  // namespace flashlm::layout
