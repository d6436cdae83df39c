// GgufWriter: writes a GGUF v3 file (layout in layout/gguf_format.h) by streaming: the metadata
// and tensor directory are declared first, then tensor bytes are appended in declaration order,
// in chunks of any size, so a 7B model never has to be in memory. The file appears atomically:
// bytes go to "<path>.tmp" and Finish() fsyncs and renames it; a writer destroyed before
// Finish() removes the temporary file.
//
// Usage:
//   GgufWriter w;
//   w.AddMetadata("general.architecture", GgufValue::Str("llama"));
//   w.AddTensor("token_embd.weight", DType::kF32, {vocab, dim});
//   RETURN_IF_ERROR(w.Begin(path));
//   RETURN_IF_ERROR(w.Append(bytes));   // ... repeatedly, tensor after tensor
//   RETURN_IF_ERROR(w.Finish());
// Not thread-safe; owns its file descriptor.
#ifndef FLASHLM_LAYOUT_GGUF_WRITER_H_
#define FLASHLM_LAYOUT_GGUF_WRITER_H_

#include <cstdint>
#include <string>
#include <vector>

#include "layout/dtype.h"
#include "layout/gguf_format.h"
#include "storage/bytes.h"
#include "storage/status.h"

namespace flashlm::layout {

class GgufWriter {
 public:
  explicit GgufWriter(uint32_t alignment = kGgufDefaultAlignment);
  ~GgufWriter();
  GgufWriter(const GgufWriter&) = delete;
  GgufWriter& operator=(const GgufWriter&) = delete;

  // Declarations; only before Begin(). A repeated key or name fails Begin() (InvalidArgument).
  void AddMetadata(std::string key, GgufValue value);
  // `shape` is outermost first (canonical); the file gets ne[] innermost first. The innermost
  // dimension of a block type must be whole blocks.
  void AddTensor(std::string name, DType dtype, std::vector<uint64_t> shape);

  // Bytes a declared tensor takes (rows * RowBytes). Preconditions: index < tensor count.
  uint64_t TensorBytes(size_t index) const;

  // Creates "<path>.tmp" and writes the header. Errors: InvalidArgument (duplicates, bad shape,
  // alignment not a power of two), IoError.
  Status Begin(const std::string& path);
  // Appends tensor bytes; padding between tensors is inserted automatically.
  // Errors: FailedPrecondition (more bytes than declared, or before Begin), IoError.
  Status Append(ConstByteSpan bytes);
  // Checks every declared byte arrived, fsyncs, and renames onto the final path.
  // Errors: FailedPrecondition (tensors incomplete), IoError.
  Status Finish();

 private:
  struct Tensor {
    std::string name;
    DType dtype;
    std::vector<uint64_t> shape;
    uint64_t size_bytes = 0;
  };
  Status WriteAll(ConstByteSpan bytes);
  Status WritePadding(uint64_t n);

  uint32_t alignment_;
  std::vector<GgufKV> metadata_;
  std::vector<Tensor> tensors_;
  std::string path_, tmp_path_;
  int fd_ = -1;
  bool finished_ = false;
  size_t current_ = 0;              // tensor being appended
  uint64_t current_done_ = 0;       // bytes of it written
  std::vector<std::byte> out_buf_;  // [kOutBufBytes] write coalescing buffer
};

// Serialises one metadata value (type tag excluded) in GGUF encoding; exposed for tests.
void AppendGgufValue(const GgufValue& v, std::vector<std::byte>& out);

}  // namespace flashlm::layout

#endif  // FLASHLM_LAYOUT_GGUF_WRITER_H_
