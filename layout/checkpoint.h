// Checkpoint: a model read from some source (GGUF, Hugging Face safetensors, llama2.c, or a
// flashlm store) in one canonical form. Everything downstream (repack, the engine's in-DRAM
// loader, tests comparing formats) sees only this interface.
//
// Canonical form:
//  - Tensor names are GGUF's: token_embd.weight, output_norm.weight, output.weight (absent when
//    config().tied_embeddings), blk.N.{attn_norm,attn_q,attn_k,attn_v,attn_output,ffn_norm,
//    ffn_gate,ffn_up,ffn_down}.weight.
//  - Shapes are outermost first: a weight is {rows = out_features, cols = in_features},
//    row-major; a norm is {n}. (GGUF's ne[] is innermost first; readers reverse it.)
//  - q/k rows use Meta's interleaved RoPE convention (HF's rotate-half permutation is undone).
//  - Tensor bytes are in the tensor's own dtype, rows packed back to back (RowBytes per row).
// A Checkpoint is not thread-safe; ReadTensor may do I/O.
#ifndef FLASHLM_LAYOUT_CHECKPOINT_H_
#define FLASHLM_LAYOUT_CHECKPOINT_H_

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "layout/dtype.h"
#include "layout/model_config.h"
#include "storage/bytes.h"
#include "storage/status.h"

namespace flashlm::layout {

struct TensorInfo {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<uint64_t> shape;  // outermost first
  uint64_t rows() const { return shape.size() == 1 ? 1 : shape[0]; }
  uint64_t cols() const { return shape.empty() ? 0 : shape.back(); }
  uint64_t num_values() const;
  uint64_t size_bytes() const { return rows() * RowBytes(dtype, cols()); }
};

class Checkpoint {
 public:
  virtual ~Checkpoint() = default;

  // "gguf", "safetensors", "llama2c", "store".
  virtual std::string_view format() const = 0;
  virtual const ModelConfig& config() const = 0;
  // Empty (kind kNone) when the source carries no tokenizer.
  virtual const Vocab& vocab() const = 0;
  virtual const std::vector<TensorInfo>& tensors() const = 0;

  // Reads the tensor's bytes (its own dtype, canonical layout) into `out`, which must hold
  // exactly info.size_bytes(). Errors: InvalidArgument (wrong size), IoError, Corruption.
  virtual Status ReadTensor(const TensorInfo& info, ByteSpan out) = 0;

  // nullptr when absent. The pointer lives as long as this Checkpoint.
  const TensorInfo* FindTensor(std::string_view name) const;

  // Reads and converts to f32; `out` holds info.num_values() floats.
  Status ReadTensorF32(const TensorInfo& info, std::span<float> out);
};

struct OpenOptions {
  // llama2.c tokenizer.bin (or tokenizer.model / tokenizer.json); when given it must be a
  // regular file (NotFound otherwise, never ignored).
  std::string tokenizer_path;
};

// Detects the kind of `path` (GGUF file, HF folder or .safetensors file, llama2.c .bin, or a
// flashlm store folder) and opens it. Errors: NotFound, Corruption (names what is malformed),
// NotSupported (names the unsupported architecture or dtype).
Result<std::unique_ptr<Checkpoint>> OpenCheckpoint(std::string_view path,
                                                   const OpenOptions& options = {});

}  // namespace flashlm::layout

#endif  // FLASHLM_LAYOUT_CHECKPOINT_H_
