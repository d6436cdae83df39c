// Fuzzes the text/protobuf side of HF checkpoints: config.json, tokenizer.json and the
// SentencePiece tokenizer.model reader.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "layout/hf_tokenizer.h"
#include "layout/safetensors_reader.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace flashlm;
  const ConstByteSpan bytes(reinterpret_cast<const std::byte*>(data), size);
  layout::ParseHfConfig(std::string_view(reinterpret_cast<const char*>(data), size))
      .status()
      .IgnoreError();
  auto a = layout::MemorySource(bytes);
  layout::ParseTokenizerJson(*a).status().IgnoreError();
  auto b = layout::MemorySource(bytes);
  layout::ParseSentencePieceModel(*b).status().IgnoreError();
  return 0;
}
