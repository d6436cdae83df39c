// Generator: the generation loop. Prefills the prompt as batches, then decodes one token at a
// time, sampling each, streaming text through a callback and measuring per-token timings.
// Stops at EOS, after max_new_tokens, at the end of the context, or when the text produced so
// far contains one of the stop strings (the stop string itself is not emitted; text that could
// still become a stop string is held back until it cannot).
// Not thread-safe; owns nothing but its stats and text buffers (sized at construction).
#ifndef FLASHLM_ENGINE_GENERATOR_H_
#define FLASHLM_ENGINE_GENERATOR_H_

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "engine/sampler.h"
#include "engine/tokenizer.h"
#include "engine/transformer.h"
#include "storage/status.h"

namespace flashlm::engine {

struct GenerationStats {
  uint32_t prompt_tokens = 0;
  uint32_t generated_tokens = 0;
  double prefill_ms = 0;  // prompt forward passes
  double ttft_ms = 0;     // start to first sampled token
  double decode_ms = 0;   // forward passes of generated tokens after the first
  double total_ms = 0;
  std::string stop_reason;       // "eos", "length", "context", "stop_string"
  std::vector<double> token_ms;  // per decoded token (forward + sample)

  double prefill_tokens_per_s() const {
    return prefill_ms > 0 ? prompt_tokens * 1000.0 / prefill_ms : 0.0;
  }
  // Tokens produced by decode steps (every generated token but the first, which the prefill made).
  double decode_tokens_per_s() const {
    return decode_ms > 0 && generated_tokens > 1 ? (generated_tokens - 1) * 1000.0 / decode_ms
                                                 : 0.0;
  }
  // One JSON object; `ids` (optional) are added as "ids".
  std::string ToJson(const std::vector<int32_t>* ids = nullptr) const;
};

class Generator {
 public:
  Generator(Transformer& model, const Tokenizer& tokenizer)
      : model_(model), tokenizer_(tokenizer) {}

  // Generates up to `max_new_tokens` after `prompt` (which must be non-empty and fit the context
  // with at least one free position). `on_text` receives UTF-8 text as it becomes printable;
  // `on_token` (optional) each sampled id. The ids (prompt + generated) are left in ids().
  // Errors: InvalidArgument (empty prompt, prompt >= context), Forward's errors.
  Result<GenerationStats> Generate(std::span<const int32_t> prompt, uint32_t max_new_tokens,
                                   Sampler& sampler, const std::vector<std::string>& stop_strings,
                                   const std::function<void(std::string_view)>& on_text);

  const std::vector<int32_t>& ids() const { return ids_; }
  // Keep generating past EOS (benchmarks want a fixed token count).
  void set_ignore_eos(bool ignore) { ignore_eos_ = ignore; }

 private:
  Transformer& model_;
  const Tokenizer& tokenizer_;
  std::vector<int32_t> ids_;
  bool ignore_eos_ = false;
};

// Perplexity of `tokens` (the first is a BOS or context token, never scored): the text is split
// into windows of `ctx` tokens, each run from position 0; every token after the first of its
// window is scored. The model must have been created with all_logits. Returns exp(mean NLL).
// Errors: InvalidArgument (fewer than 2 tokens, ctx < 2 or beyond the model's context).
struct PerplexityResult {
  double perplexity = 0;
  uint64_t scored_tokens = 0;
  double nll_sum = 0;
};
Result<PerplexityResult> Perplexity(Transformer& model, std::span<const int32_t> tokens,
                                    uint32_t ctx);

}  // namespace flashlm::engine

#endif  // FLASHLM_ENGINE_GENERATOR_H_
