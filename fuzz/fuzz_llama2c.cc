// Fuzzes the llama2.c checkpoint parser (legacy and version 1) and its tokenizer.bin parser.
#include <cstddef>
#include <cstdint>

#include "fuzz/fuzz_util.h"
#include "layout/llama2c_reader.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace flashlm;
  const ConstByteSpan bytes(reinterpret_cast<const std::byte*>(data), size);
  auto ckpt = layout::OpenLlama2c(layout::MemorySource(bytes), nullptr);
  if (ckpt.ok()) fuzz::ReadEverything(**ckpt);
  auto tok = layout::MemorySource(bytes);
  layout::ParseLlama2cTokenizer(*tok, 260).status().IgnoreError();
  return 0;
}
