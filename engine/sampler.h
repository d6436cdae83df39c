// Sampler: picks the next token from logits. Greedy when temperature is 0; otherwise, in order:
// repetition penalty over the last `repeat_last_n` tokens (llama.cpp's rule: positive logits are
// divided by the penalty, negative ones multiplied), top-k, softmax at the temperature, top-p
// (smallest prefix of the sorted distribution whose mass reaches p), min-p (drop tokens below
// min_p times the top probability), then a draw from a seeded xorshift generator.
// Buffers are sized at Create; Sample allocates nothing. Not thread-safe.
#ifndef FLASHLM_ENGINE_SAMPLER_H_
#define FLASHLM_ENGINE_SAMPLER_H_

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "storage/status.h"

namespace flashlm::engine {

struct SamplerOptions {
  float temperature = 0.8f;     // 0 = greedy
  uint32_t top_k = 40;          // 0 = all tokens
  float top_p = 0.95f;          // (0, 1]; 1 = off
  float min_p = 0.0f;           // [0, 1); 0 = off
  float repeat_penalty = 1.0f;  // >= 1... any > 0; 1 = off
  uint32_t repeat_last_n = 64;
  uint64_t seed = 0;
};

class Sampler {
 public:
  // Errors: InvalidArgument naming the bad value (negative temperature, top_p outside (0, 1],
  // min_p outside [0, 1), non-positive penalty, zero vocabulary).
  static Result<std::unique_ptr<Sampler>> Create(uint32_t vocab_size, const SamplerOptions& o);

  // `logits` holds vocab_size values; `history` are the tokens so far (for the penalty).
  int32_t Sample(std::span<const float> logits, std::span<const int32_t> history);

  // Next uniform in [0, 1) from the seeded generator (exposed for tests).
  float NextUniform();

 private:
  Sampler(uint32_t vocab_size, const SamplerOptions& o);
  struct Candidate {
    int32_t id;
    float logit;
  };
  uint32_t vocab_size_;
  SamplerOptions options_;
  uint64_t state_;
  std::vector<Candidate> candidates_;  // vocab_size
  std::vector<float> probs_;           // vocab_size
};

}  // namespace flashlm::engine

#endif  // FLASHLM_ENGINE_SAMPLER_H_
