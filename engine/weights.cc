#include "engine/weights.h"

#include <string>

#include "layout/llama_tensors.h"
#include "storage/check.h"

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

namespace {
// A matrix as the engine keeps it: its own dtype (every dtype a checkpoint can hold has kernels:
// f32, f16, bf16, q8_0, q4_0, q4_K, q6_K); one without them would be converted to f32 on load.
layout::TensorInfo AsLoaded(const layout::TensorInfo& info) {
  layout::TensorInfo as_loaded = info;
  if (!MatMulSupports(info.dtype)) as_loaded.dtype = DType::kF32;
  return as_loaded;
}

// Each matrix starts on a cache line of the shared buffer.
constexpr uint64_t kMatrixAlignment = 64;
}  // namespace

Result<DramWeightStore::PlannedMatrix> DramWeightStore::PlanMatrix(
    layout::Checkpoint& ckpt, const std::string& name, std::span<const uint64_t> shape) {
  const layout::TensorInfo* info = ckpt.FindTensor(name);
  if (info == nullptr) return NotFoundError("checkpoint has no tensor " + name);
  PlannedMatrix m{info, AsLoaded(*info)};
  RETURN_IF_ERROR(CheckMatrix(m.as_loaded, shape));
  return m;
}

Result<MatrixView> DramWeightStore::LoadMatrix(layout::Checkpoint& ckpt, const std::string& name,
                                               std::span<const uint64_t> shape, MatrixUse use) {
  ASSIGN_OR_RETURN(const PlannedMatrix m, PlanMatrix(ckpt, name, shape));
  const uint64_t bytes = m.as_loaded.size_bytes();
  // Load planned every matrix's bytes into matrices_ before the first LoadMatrix.
  CHECK_LE(matrices_used_ + bytes, matrices_.size_bytes());
  const ByteSpan buf(matrices_.data() + matrices_used_, bytes);
  matrices_used_ += AlignUp(bytes, kMatrixAlignment);
  if (m.as_loaded.dtype != m.info->dtype) {
    std::span<float> out(reinterpret_cast<float*>(buf.data()), bytes / sizeof(float));
    RETURN_IF_ERROR(ckpt.ReadTensorF32(*m.info, out).WithContext("reading " + name));
  } else {
    RETURN_IF_ERROR(ckpt.ReadTensor(*m.info, buf).WithContext("reading " + name));
  }
  resident_bytes_ += bytes;
  MatrixView view{m.as_loaded.dtype, static_cast<uint32_t>(shape[0]),
                  static_cast<uint32_t>(shape[1]), ConstByteSpan(buf.data(), bytes)};
  // f32 / q8_0 / q4_0 / q4_K / q6_K matrices that only MatMul reads are kept in 16-row strips,
  // so decode reads them with vector loads instead of transposing 16 rows in registers (f32:
  // as one stream, two rows at a time; docs/benchmarks.md).
  return use == MatrixUse::kMatMulOnly ? KeepInStrips(view, buf) : view;
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
  const bool has_output = ckpt.FindTensor("output.weight") != nullptr;
  // Every matrix in one buffer on transparent huge pages: the first touch of a 4 KiB page is
  // expensive on virtual machines, and a 1 GB model has a quarter of a million of them (loading
  // the 1b q8_0 GGUF took 6.4 s with a heap allocation per matrix, 0.7-0.8 s this way:
  // docs/benchmarks.md). The matrices are validated (names, shapes, dtypes) before anything is
  // allocated, so a checkpoint's declared sizes never size an allocation the config does not.
  uint64_t total = 0;
  auto plan = [&](const std::string& name, std::span<const uint64_t> shape) -> Status {
    ASSIGN_OR_RETURN(const PlannedMatrix m, PlanMatrix(ckpt, name, shape));
    total += AlignUp(m.as_loaded.size_bytes(), kMatrixAlignment);
    return Status::Ok();
  };
  RETURN_IF_ERROR(plan("token_embd.weight", table));
  if (has_output) RETURN_IF_ERROR(plan("output.weight", table));
  for (uint32_t l = 0; l < c.n_layers; ++l) {
    for (LayerTensor role : layout::kLayerTensors) {
      const std::vector<uint64_t> shape = layout::LayerTensorShape(c, role);
      if (shape.size() == 2) RETURN_IF_ERROR(plan(layout::LayerTensorName(l, role), shape));
    }
  }
  ASSIGN_OR_RETURN(s->matrices_, storage::AlignedBuffer::Allocate(total, kMatrixAlignment,
                                                                  /*huge_pages=*/true));
  // The embedding's rows are looked up one by one (and it is the classifier when tied).
  ASSIGN_OR_RETURN(s->embedding_,
                   s->LoadMatrix(ckpt, "token_embd.weight", table, MatrixUse::kRowsToo));
  ASSIGN_OR_RETURN(s->output_norm_, s->LoadVector(ckpt, "output_norm.weight", c.dim));
  if (has_output) {
    ASSIGN_OR_RETURN(s->classifier_,
                     s->LoadMatrix(ckpt, "output.weight", table, MatrixUse::kMatMulOnly));
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
      ASSIGN_OR_RETURN(MatrixView m, s->LoadMatrix(ckpt, name, shape, MatrixUse::kMatMulOnly));
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
  const bool tied = s->classifier_.bytes.data() == s->embedding_.bytes.data();
  s->decode_bytes_per_token_ =
      tied ? s->resident_bytes_
           : s->resident_bytes_ - s->embedding_.bytes.size() + s->embedding_.row_bytes();
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
