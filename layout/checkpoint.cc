#include "layout/checkpoint.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <system_error>
#include <vector>

#include "layout/byte_source.h"
#include "layout/gguf_reader.h"
#include "layout/llama2c_reader.h"
#include "layout/safetensors_reader.h"
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

Result<std::unique_ptr<Checkpoint>> OpenCheckpoint(std::string_view path,
                                                   const OpenOptions& options) {
  namespace fs = std::filesystem;
  const std::string p(path);
  std::error_code ec;
  const fs::file_status st = fs::status(p, ec);
  if (ec || !fs::exists(st)) return NotFoundError(p + ": no such file or folder");
  if (!options.tokenizer_path.empty() && !fs::is_regular_file(options.tokenizer_path, ec)) {
    return NotFoundError("tokenizer " + options.tokenizer_path + ": no such file");
  }
  if (fs::is_directory(st)) {
    // store: a flashlm store folder (catalog.mdb) is opened by the store reader.
    if (StoreReader::LooksLikeStore(p)) {
      ASSIGN_OR_RETURN(std::unique_ptr<StoreReader> store, StoreReader::Open(p));
      return std::unique_ptr<Checkpoint>(std::move(store));
    }
    // Hugging Face folders are recognised by config.json.
    if (fs::exists(fs::path(p) / "config.json")) return OpenHuggingFace(p, options);
    return NotSupportedError(p + ": folder is not a recognised checkpoint (no config.json)");
  }
  ASSIGN_OR_RETURN(std::unique_ptr<ByteSource> src, OpenFileSource(p));
  std::byte head[8] = {};
  const uint64_t head_bytes = std::min<uint64_t>(src->size_bytes(), sizeof(head));
  RETURN_IF_ERROR(src->ReadAt(0, std::span(head).first(head_bytes)));
  if (head_bytes >= 4 && std::memcmp(head, "GGUF", 4) == 0) return OpenGguf(std::move(src));
  if (p.ends_with(".safetensors")) return OpenHuggingFace(p, options);
  std::unique_ptr<ByteSource> tokenizer;
  if (!options.tokenizer_path.empty()) {
    ASSIGN_OR_RETURN(tokenizer, OpenFileSource(options.tokenizer_path));
  }
  return OpenLlama2c(std::move(src), std::move(tokenizer));
}

}  // namespace flashlm::layout
