#include "layout/checkpoint.h"

#include <vector>

#include "layout/store_reader.h"

namespace flashlm::layout {

uint64_t TensorInfo::num_values() const {
  uint64_t n = 1;
  for (uint64_t d : shape) n *= d;
  return shape.empty() ? 0 : n;
}

const TensorInfo* Checkpoint::FindTensor(std::string_view name) const {
  for (const TensorInfo& t : tensors()) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

Status Checkpoint::ReadTensorF32(const TensorInfo& info, std::span<float> out) {
  if (out.size() != info.num_values()) {
    return InvalidArgumentError("ReadTensorF32: output size does not match tensor " + info.name);
  }
  std::vector<std::byte> raw(info.size_bytes());
  RETURN_IF_ERROR(ReadTensor(info, raw));
  const uint64_t row_bytes = RowBytes(info.dtype, info.cols());
  for (uint64_t r = 0; r < info.rows(); ++r) {
    RETURN_IF_ERROR(DequantizeRow(info.dtype, ConstByteSpan(raw).subspan(r * row_bytes, row_bytes),
                                  out.subspan(r * info.cols(), info.cols())));
  }
  return Status::Ok();
}

// store: a flashlm store folder is recognised before any checkpoint reader is tried.
Result<std::unique_ptr<Checkpoint>> OpenCheckpoint(std::string_view path,
                                                   const OpenOptions& options) {
  if (StoreReader::LooksLikeStore(path)) {
    ASSIGN_OR_RETURN(std::unique_ptr<StoreReader> store, StoreReader::Open(path));
    return std::unique_ptr<Checkpoint>(std::move(store));
  }
  // readers: GGUF, safetensors and llama2.c detection goes here.
  return NotSupportedError("cannot open '" + std::string(path) +
                           "': not a flashlm store, and no checkpoint readers are built yet");
}

}  // namespace flashlm::layout
