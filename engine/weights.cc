#include "engine/weights.h"

#include <string>

namespace flashlm::engine {

using layout::DType;

Result<MatrixView> DramWeightStore::LoadMatrix(layout::Checkpoint& ckpt, const std::string& name,
                                               uint64_t rows, uint64_t cols) {
  const layout::TensorInfo* info = ckpt.FindTensor(name);
  if (info == nullptr) return NotFoundError("checkpoint has no tensor " + name);
  if (info->shape.size() != 2 || info->rows() != rows || info->cols() != cols) {
    return CorruptionError("tensor " + name + " has shape " + std::to_string(info->rows()) + "x" +
                           std::to_string(info->cols()) + ", the config implies " +
                           std::to_string(rows) + "x" + std::to_string(cols));
  }
  DType dtype = info->dtype;
  const bool convert = !MatMulSupports(dtype);  // bf16, q4_K, q6_K: to f32 once, at load
  if (convert) dtype = DType::kF32;
  const uint64_t bytes = rows * layout::RowBytes(dtype, cols);
  auto buf = std::make_unique<std::byte[]>(bytes);
  if (convert) {
    std::span<float> out(reinterpret_cast<float*>(buf.get()), rows * cols);
    RETURN_IF_ERROR(ckpt.ReadTensorF32(*info, out).WithContext("reading " + name));
  } else {
    RETURN_IF_ERROR(
        ckpt.ReadTensor(*info, ByteSpan(buf.get(), bytes)).WithContext("reading " + name));
  }
  MatrixView view{dtype, static_cast<uint32_t>(rows), static_cast<uint32_t>(cols),
                  ConstByteSpan(buf.get(), bytes)};
  resident_bytes_ += bytes;
  buffers_.push_back(std::move(buf));
  return view;
}

Result<std::span<const float>> DramWeightStore::LoadVector(layout::Checkpoint& ckpt,
                                                           const std::string& name, uint64_t n) {
  const layout::TensorInfo* info = ckpt.FindTensor(name);
  if (info == nullptr) return NotFoundError("checkpoint has no tensor " + name);
  if (info->num_values() != n) {
    return CorruptionError("tensor " + name + " has " + std::to_string(info->num_values()) +
                           " values, the config implies " + std::to_string(n));
  }
  auto buf = std::make_unique<std::byte[]>(n * sizeof(float));
  std::span<float> out(reinterpret_cast<float*>(buf.get()), n);
  RETURN_IF_ERROR(ckpt.ReadTensorF32(*info, out).WithContext("reading " + name));
  resident_bytes_ += n * sizeof(float);
  buffers_.push_back(std::move(buf));
  return std::span<const float>(out);
}

Result<std::unique_ptr<DramWeightStore>> DramWeightStore::Load(layout::Checkpoint& ckpt) {
  std::unique_ptr<DramWeightStore> s(new DramWeightStore());
  s->config_ = ckpt.config();
  const layout::ModelConfig& c = s->config_;
  if (c.dim == 0 || c.hidden_dim == 0 || c.n_layers == 0 || c.n_heads == 0 || c.n_kv_heads == 0 ||
      c.head_dim == 0 || c.vocab_size == 0 || c.n_heads % c.n_kv_heads != 0 ||
      c.head_dim % 2 != 0) {
    return InvalidArgumentError(
        "model config has a shape the engine cannot run (zero size, "
        "n_heads not a multiple of n_kv_heads, or odd head_dim)");
  }
  const uint64_t q_dim = uint64_t{c.n_heads} * c.head_dim;
  const uint64_t kv_dim = uint64_t{c.n_kv_heads} * c.head_dim;
  ASSIGN_OR_RETURN(s->embedding_, s->LoadMatrix(ckpt, "token_embd.weight", c.vocab_size, c.dim));
  ASSIGN_OR_RETURN(s->output_norm_, s->LoadVector(ckpt, "output_norm.weight", c.dim));
  if (ckpt.FindTensor("output.weight") != nullptr) {
    ASSIGN_OR_RETURN(s->classifier_, s->LoadMatrix(ckpt, "output.weight", c.vocab_size, c.dim));
  } else if (c.tied_embeddings) {
    s->classifier_ = s->embedding_;
  } else {
    return NotFoundError("checkpoint has no tensor output.weight and embeddings are not tied");
  }
  if (!MatMulSupports(s->embedding_.dtype)) {
    return NotSupportedError("token embedding dtype is not supported");
  }
  s->layers_.resize(c.n_layers);
  for (uint32_t l = 0; l < c.n_layers; ++l) {
    const std::string p = "blk." + std::to_string(l) + ".";
    LayerWeights& w = s->layers_[l];
    ASSIGN_OR_RETURN(w.attn_norm, s->LoadVector(ckpt, p + "attn_norm.weight", c.dim));
    ASSIGN_OR_RETURN(w.wq, s->LoadMatrix(ckpt, p + "attn_q.weight", q_dim, c.dim));
    ASSIGN_OR_RETURN(w.wk, s->LoadMatrix(ckpt, p + "attn_k.weight", kv_dim, c.dim));
    ASSIGN_OR_RETURN(w.wv, s->LoadMatrix(ckpt, p + "attn_v.weight", kv_dim, c.dim));
    ASSIGN_OR_RETURN(w.wo, s->LoadMatrix(ckpt, p + "attn_output.weight", c.dim, q_dim));
    ASSIGN_OR_RETURN(w.ffn_norm, s->LoadVector(ckpt, p + "ffn_norm.weight", c.dim));
    ASSIGN_OR_RETURN(w.gate, s->LoadMatrix(ckpt, p + "ffn_gate.weight", c.hidden_dim, c.dim));
    ASSIGN_OR_RETURN(w.up, s->LoadMatrix(ckpt, p + "ffn_up.weight", c.hidden_dim, c.dim));
    ASSIGN_OR_RETURN(w.down, s->LoadMatrix(ckpt, p + "ffn_down.weight", c.dim, c.hidden_dim));
  }
  return s;
}

Result<LayerWeights> DramWeightStore::AcquireLayer(uint32_t layer) {
  if (layer >= layers_.size()) return InvalidArgumentError("layer index out of range");
  return layers_[layer];
}

Status DramWeightStore::EmbedToken(uint32_t token, std::span<float> out) {
  return layout::DequantizeRow(embedding_.dtype, embedding_.row(token), out);
}

}  // namespace flashlm::engine
