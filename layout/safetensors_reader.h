// Safetensors files and Hugging Face LLaMA folders.
//
// A .safetensors file is: u64 header length N | N bytes of JSON {name: {dtype, shape,
// data_offsets: [begin, end]}, "__metadata__": {...}} | data (offsets relative to byte 8 + N).
// SafetensorsFile::Parse bounds-checks every entry (offsets, sizes, overflow, dtype).
//
// OpenHuggingFace opens a folder holding config.json and either model.safetensors or
// model.safetensors.index.json with shards. It maps HF names to the canonical ones
// (model.layers.N.self_attn.q_proj.weight -> blk.N.attn_q.weight, ...) and undoes the
// rotate-half permutation of q_proj/k_proj rows on read, so the rows follow Meta's interleaved
// RoPE convention. Tokenizer: OpenOptions::tokenizer_path, else tokenizer.model, else
// tokenizer.json, else none. The Checkpoint owns its sources and is not thread-safe.
#ifndef FLASHLM_LAYOUT_SAFETENSORS_READER_H_
#define FLASHLM_LAYOUT_SAFETENSORS_READER_H_

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "layout/byte_source.h"
#include "layout/checkpoint.h"

namespace flashlm::layout {

struct SafetensorsFile {
  struct Tensor {
    std::string name;
    DType dtype = DType::kF32;
    std::vector<uint64_t> shape;  // outermost first, as in the file
    uint64_t offset_bytes = 0;    // absolute
    uint64_t size_bytes = 0;
  };
  std::vector<Tensor> tensors;

  // Errors: Corruption (header length past the end, bad JSON, offsets out of range or not
  // matching the shape, overlapping the header), NotSupported (dtype other than F32/F16/BF16,
  // named).
  static Result<SafetensorsFile> Parse(ByteSource& src);
};

// Maps a HF config.json text to a ModelConfig. Errors: NotSupported naming a non-LLaMA
// model_type / architecture or unsupported option, Corruption for missing or ill-typed fields.
Result<ModelConfig> ParseHfConfig(std::string_view config_json);

// The HF row permutation of q_proj/k_proj: canonical (interleaved) row r of head h corresponds
// to HF row HfRowForCanonical(r). `n_heads` heads of `head_dim` rows each.
uint64_t HfRowForCanonical(uint64_t row, uint32_t head_dim);

// Opens a HF folder (or a single .safetensors file with config.json beside it).
Result<std::unique_ptr<Checkpoint>> OpenHuggingFace(std::string_view path,
                                                    const OpenOptions& options);

// Builds a Checkpoint from an already-parsed config and one in-memory/opened safetensors
// source (used by the fuzz target and tests).
Result<std::unique_ptr<Checkpoint>> OpenSafetensorsSource(const ModelConfig& config,
                                                          std::unique_ptr<ByteSource> src);

}  // namespace flashlm::layout

#endif  // FLASHLM_LAYOUT_SAFETENSORS_READER_H_
