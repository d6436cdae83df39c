// Shared by the fuzz targets: the model shape the seeds use, and a helper that reads every
// tensor of an accepted checkpoint (bounded, so a valid but huge claim cannot exhaust memory).
#ifndef FLASHLM_FUZZ_FUZZ_UTIL_H_
#define FLASHLM_FUZZ_FUZZ_UTIL_H_

#include <cstdint>
#include <vector>

#include "layout/checkpoint.h"

namespace flashlm::fuzz {

inline layout::ModelConfig SeedConfig() {
  layout::ModelConfig c;
  c.dim = 32;
  c.hidden_dim = 32;
  c.n_layers = 1;
  c.n_heads = 2;
  c.n_kv_heads = 1;
  c.head_dim = 16;
  c.vocab_size = 260;
  c.max_seq_len = 64;
  return c;
}

inline void ReadEverything(layout::Checkpoint& c) {
  for (const layout::TensorInfo& t : c.tensors()) {
    if (t.size_bytes() > (64u << 20) || t.num_values() > (16u << 20)) continue;
    std::vector<float> values(t.num_values());
    c.ReadTensorF32(t, values).IgnoreError();
  }
}

}  // namespace flashlm::fuzz

#endif  // FLASHLM_FUZZ_FUZZ_UTIL_H_
