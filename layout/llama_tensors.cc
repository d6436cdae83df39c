#include "layout/llama_tensors.h"

#include <unordered_map>

namespace flashlm::layout {

std::vector<TensorInfo> ExpectedLlamaTensors(const ModelConfig& c) {
  const uint64_t q_dim = static_cast<uint64_t>(c.n_heads) * c.head_dim;
  const uint64_t kv_dim = static_cast<uint64_t>(c.n_kv_heads) * c.head_dim;
  std::vector<TensorInfo> t;
  auto add = [&t](std::string name, std::vector<uint64_t> shape) {
    t.push_back(TensorInfo{std::move(name), DType::kF32, std::move(shape)});
  };
  add("token_embd.weight", {c.vocab_size, c.dim});
  for (uint32_t l = 0; l < c.n_layers; ++l) {
    const std::string p = "blk." + std::to_string(l) + ".";
    add(p + "attn_norm.weight", {c.dim});
    add(p + "attn_q.weight", {q_dim, c.dim});
    add(p + "attn_k.weight", {kv_dim, c.dim});
    add(p + "attn_v.weight", {kv_dim, c.dim});
    add(p + "attn_output.weight", {c.dim, q_dim});
    add(p + "ffn_norm.weight", {c.dim});
    add(p + "ffn_gate.weight", {c.hidden_dim, c.dim});
    add(p + "ffn_up.weight", {c.hidden_dim, c.dim});
    add(p + "ffn_down.weight", {c.dim, c.hidden_dim});
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
