// Fuzzes the GGUF parser, config/vocab derivation and tensor reads.
#include <cstddef>
#include <cstdint>

#include "fuzz/fuzz_util.h"
#include "layout/gguf_reader.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace flashlm;
  auto ckpt = layout::OpenGguf(
      layout::MemorySource(ConstByteSpan(reinterpret_cast<const std::byte*>(data), size)));
  if (ckpt.ok()) fuzz::ReadEverything(**ckpt);
  return 0;
}
