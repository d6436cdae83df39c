#include "engine/weights.h"

#include <string>

#include "layout/llama_tensors.h"

namespace flashlm::engine {

using layout::DType;
using layout::LayerTensor;

Status CheckMatrix(const layout::TensorInfo& info, std::span<const uint64_t> shape) {
  if (info.shape.size() != 2 || shape.size() != 2 || info.rows() != shape[0] ||
      info.cols() != shape[1]) {
    return CorruptionError("tensor " + info.name + " has shape " + layout::ShapeString(info.shape) +
                           ", the config implies " +
                           layout::ShapeString(std::vector<uint64_t>(shape.begin(), shape.end())));
  }
  if (!MatMulSupports(info.dtype)) {
    return NotSupportedError("tensor " + info.name + " has dtype " +
                             std::string(layout::DTypeName(info.dtype)) +
                             ", which the engine cannot multiply");
  }
  return Status::Ok();
}

Result<MatrixView> DramWeightStore::LoadMatrix(layout::Checkpoint& ckpt, const std::string& name,
                                               std::span<const uint64_t> shape) {
  const layout::TensorInfo* info = ckpt.FindTensor(name);
  if (info == nullptr) return NotFoundError("checkpoint has no tensor " + name);
  // bf16 (the one dtype without a kernel): converted to f32 once, here.
  const bool convert = !MatMulSupports(info->dtype);
  layout::TensorInfo as_loaded = *info;
  if (convert) as_loaded.dtype = DType::kF32;
  RETURN_IF_ERROR(CheckMatrix(as_loaded, shape));
  const uint64_t rows = shape[0], cols = shape[1];
  const uint64_t bytes = rows * layout::RowBytes(as_loaded.dtype, cols);
  auto buf = std::make_unique<std::byte[]>(bytes);
  if (convert) {
    std::span<float> out(reinterpret_cast<float*>(buf.get()), rows * cols);
    RETURN_IF_ERROR(ckpt.ReadTensorF32(*info, out).WithContext("reading " + name));
  } else {
    RETURN_IF_ERROR(
        ckpt.ReadTensor(*info, ByteSpan(buf.get(), bytes)).WithContext("reading " + name));
  }
  MatrixView view{as_loaded.dtype, static_cast<uint32_t>(rows), static_cast<uint32_t>(cols),
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
  RETURN_IF_ERROR(c.Validate());
  const uint64_t table[] = {c.vocab_size, c.dim};
  ASSIGN_OR_RETURN(s->embedding_, s->LoadMatrix(ckpt, "token_embd.weight", table));
  ASSIGN_OR_RETURN(s->output_norm_, s->LoadVector(ckpt, "output_norm.weight", c.dim));
  if (ckpt.FindTensor("output.weight") != nullptr) {
    ASSIGN_OR_RETURN(s->classifier_, s->LoadMatrix(ckpt, "output.weight", table));
  } else if (c.tied_embeddings) {
    s->classifier_ = s->embedding_;
  } else {
    return NotFoundError("checkpoint has no tensor output.weight and embeddings are not tied");
  }
  s->layers_.resize(c.n_layers);
  for (uint32_t l = 0; l < c.n_layers; ++l) {
    LayerWeights& w = s->layers_[l];
    for (LayerTensor role : layout::kLayerTensors) {
      const std::string name = layout::LayerTensorName(l, role);
      const std::vector<uint64_t> shape = layout::LayerTensorShape(c, role);
      if (shape.size() == 1) {
        ASSIGN_OR_RETURN(std::span<const float> v, s->LoadVector(ckpt, name, shape[0]));
        (role == LayerTensor::kAttnNorm ? w.attn_norm : w.ffn_norm) = v;
        continue;
      }
      ASSIGN_OR_RETURN(MatrixView m, s->LoadMatrix(ckpt, name, shape));
      switch (role) {
        case LayerTensor::kAttnQ: w.wq = m; break;
        case LayerTensor::kAttnK: w.wk = m; break;
        case LayerTensor::kAttnV: w.wv = m; break;
        case LayerTensor::kAttnOutput: w.wo = m; break;
        case LayerTensor::kFfnGate: w.gate = m; break;
        case LayerTensor::kFfnUp: w.up = m; break;
        case LayerTensor::kFfnDown: w.down = m; break;
        default: break;
      }
    }
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
