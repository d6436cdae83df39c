// Fuzzes the safetensors header parser and the HF tensor mapping (q/k un-permutation) with the
// seed model's config.
#include <cstddef>
#include <cstdint>

#include "fuzz/fuzz_util.h"
#include "layout/safetensors_reader.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace flashlm;
  auto ckpt = layout::OpenSafetensorsSource(
      fuzz::SeedConfig(),
      layout::MemorySource(ConstByteSpan(reinterpret_cast<const std::byte*>(data), size)));
  if (ckpt.ok()) fuzz::ReadEverything(**ckpt);
  return 0;
}
