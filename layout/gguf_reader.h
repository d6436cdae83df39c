// GGUF reader (versions 2 and 3; layout in layout/gguf_format.h). GgufFile is the parsed header:
// metadata and tensor directory, every length and offset bounds-checked against the source size.
// OpenGguf wraps a parsed file as a Checkpoint for the LLaMA architecture.
//
// A GgufFile is a plain value. The Checkpoint owns its ByteSource and is not thread-safe.
#ifndef FLASHLM_LAYOUT_GGUF_READER_H_
#define FLASHLM_LAYOUT_GGUF_READER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "layout/byte_source.h"
#include "layout/checkpoint.h"
#include "layout/gguf_format.h"
#include "storage/status.h"

namespace flashlm::layout {

struct GgufTensor {
  std::string name;
  uint32_t ggml_type = 0;
  DType dtype = DType::kF32;
  std::vector<uint64_t> ne;   // innermost first, as in the file
  uint64_t offset_bytes = 0;  // absolute, in the source
  uint64_t size_bytes = 0;
};

struct GgufFile {
  uint32_t version = 0;
  uint64_t alignment = kGgufDefaultAlignment;
  uint64_t data_offset_bytes = 0;   // start of the data section
  std::vector<GgufKV> metadata;     // file order
  std::vector<GgufTensor> tensors;  // file order

  // nullptr when absent; lives as long as this GgufFile.
  const GgufValue* Find(std::string_view key) const;

  // Parses the header of `src`. Errors: Corruption (bad magic, truncation, lengths/offsets past
  // the end or overflowing, bad alignment, duplicate names, bad dims), NotSupported (version 1 or
  // > 3, a tensor type flashlm does not read — named, e.g. "q5_1").
  static Result<GgufFile> Parse(ByteSource& src);
};

// Derives the LLaMA config / tokenizer from GGUF metadata. Errors: NotSupported naming a
// non-llama architecture or tokenizer model, Corruption for missing or ill-typed keys.
Result<ModelConfig> GgufModelConfig(const GgufFile& file);
Result<Vocab> GgufVocab(const GgufFile& file);

// Opens a GGUF checkpoint: parse, config, vocab, tensor shapes checked against the config.
Result<std::unique_ptr<Checkpoint>> OpenGguf(std::unique_ptr<ByteSource> src);

}  // namespace flashlm::layout

#endif  // FLASHLM_LAYOUT_GGUF_READER_H_
