#include "engine/sampler.h"

#include <algorithm>
#include <cmath>
#include <string>

namespace flashlm::engine {

Result<std::unique_ptr<Sampler>> Sampler::Create(uint32_t vocab_size, const SamplerOptions& o) {
  if (vocab_size == 0) return InvalidArgumentError("sampler: empty vocabulary");
  if (!(o.temperature >= 0.0f) || !std::isfinite(o.temperature)) {
    return InvalidArgumentError("temperature must be >= 0, got " + std::to_string(o.temperature));
  }
  if (!(o.top_p > 0.0f && o.top_p <= 1.0f)) {
    return InvalidArgumentError("top-p must be in (0, 1], got " + std::to_string(o.top_p));
  }
  if (!(o.min_p >= 0.0f && o.min_p < 1.0f)) {
    return InvalidArgumentError("min-p must be in [0, 1), got " + std::to_string(o.min_p));
  }
  if (!(o.repeat_penalty > 0.0f) || !std::isfinite(o.repeat_penalty)) {
    return InvalidArgumentError("repetition penalty must be > 0, got " +
                                std::to_string(o.repeat_penalty));
  }
  return std::unique_ptr<Sampler>(new Sampler(vocab_size, o));
}

Sampler::Sampler(uint32_t vocab_size, const SamplerOptions& o)
    : vocab_size_(vocab_size), options_(o), candidates_(vocab_size), probs_(vocab_size) {
  // splitmix64 of the seed, never zero (xorshift's fixed point).
  uint64_t z = o.seed + 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  state_ = (z ^ (z >> 31)) | 1;
}

float Sampler::NextUniform() {
  state_ ^= state_ >> 12;
  state_ ^= state_ << 25;
  state_ ^= state_ >> 27;
  const uint64_t r = state_ * 0x2545F4914F6CDD1Dull;
  return static_cast<float>(r >> 40) / 16777216.0f;  // 24 bits
}

int32_t Sampler::Sample(std::span<const float> logits, std::span<const int32_t> history) {
  const uint32_t n = vocab_size_;
  for (uint32_t i = 0; i < n; ++i) candidates_[i] = {static_cast<int32_t>(i), logits[i]};
  if (options_.repeat_penalty != 1.0f && options_.repeat_last_n > 0) {
    const size_t from =
        history.size() > options_.repeat_last_n ? history.size() - options_.repeat_last_n : 0;
    // Penalise each distinct recent token once: mark by flipping through probs_ as a flag.
    for (size_t i = from; i < history.size(); ++i) {
      const int32_t id = history[i];
      if (id >= 0 && static_cast<uint32_t>(id) < n) probs_[id] = 0.0f;
    }
    for (size_t i = from; i < history.size(); ++i) {
      const int32_t id = history[i];
      if (id < 0 || static_cast<uint32_t>(id) >= n || probs_[id] != 0.0f) continue;
      probs_[id] = 1.0f;
      float& l = candidates_[id].logit;
      l = l > 0.0f ? l / options_.repeat_penalty : l * options_.repeat_penalty;
    }
  }
  auto by_logit = [](const Candidate& a, const Candidate& b) {
    return a.logit > b.logit || (a.logit == b.logit && a.id < b.id);
  };
  if (options_.temperature == 0.0f) {
    return std::min_element(candidates_.begin(), candidates_.end(), by_logit)->id;
  }
  uint32_t k = options_.top_k == 0 ? n : std::min(options_.top_k, n);
  std::partial_sort(candidates_.begin(), candidates_.begin() + k, candidates_.end(), by_logit);
  // Softmax over the k best at the temperature.
  const float mx = candidates_[0].logit;
  float sum = 0.0f;
  for (uint32_t i = 0; i < k; ++i) {
    probs_[i] = std::exp((candidates_[i].logit - mx) / options_.temperature);
    sum += probs_[i];
  }
  for (uint32_t i = 0; i < k; ++i) probs_[i] /= sum;
  // top-p: keep the smallest prefix whose mass reaches p.
  if (options_.top_p < 1.0f) {
    float cum = 0.0f;
    for (uint32_t i = 0; i < k; ++i) {
      cum += probs_[i];
      if (cum >= options_.top_p) {
        k = i + 1;
        break;
      }
    }
  }
  // min-p: drop tokens below min_p * p(top).
  if (options_.min_p > 0.0f) {
    const float floor = options_.min_p * probs_[0];
    uint32_t keep = 1;
    while (keep < k && probs_[keep] >= floor) ++keep;
    k = keep;
  }
  float mass = 0.0f;
  for (uint32_t i = 0; i < k; ++i) mass += probs_[i];
  const float r = NextUniform() * mass;
  float cum = 0.0f;
  for (uint32_t i = 0; i < k; ++i) {
    cum += probs_[i];
    if (r < cum) return candidates_[i].id;
  }
  return candidates_[k - 1].id;
}

}  // namespace flashlm::engine
