// Generation, step by step: Generator prefills a prompt (Start), then each Next() samples one
// token, turns it into text and runs the forward pass for it. The CLI drives it to the end with
// Generate(); a server drives Next() itself, between requests, and stops when a client goes away.
// Stops at EOS, after max_new_tokens, at the end of the context, when the text produced so far
// contains one of the stop strings (the stop string itself is not emitted; text that could still
// become a stop string is held back until it cannot), or when a cancel check says so.
//
// Prefill is the one loop that runs a token sequence through the model in batches of its
// max_batch; generation, perplexity and activation counting all use it.
// Not thread-safe. Everything a step needs is sized at Start (ids, timings, text buffers): Next
// allocates nothing.
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

// Runs `tokens` of sequence `seq` at positions pos, pos+1, ... through `model` in batches of at
// most max_batch tokens. After each batch, on_batch (optional) gets the index of its first token
// in `tokens`, its size and the model's logits for it (the view lives during the call). Returns
// the logits of the last batch (valid until the model's next Forward).
// Errors: InvalidArgument (no tokens), Forward's, on_batch's.
using BatchLogitsFn =
    std::function<Status(size_t first, uint32_t n, std::span<const float> logits)>;
Result<std::span<const float>> Prefill(Transformer& model, std::span<const int32_t> tokens,
                                       uint32_t pos, uint32_t seq = 0,
                                       const BatchLogitsFn& on_batch = nullptr);

struct GenerationStats {
  uint32_t prompt_tokens = 0;
  uint32_t generated_tokens = 0;
  double prefill_ms = 0;  // prompt forward passes
  double ttft_ms = 0;     // start to first sampled token
  double decode_ms = 0;   // forward passes of generated tokens after the first
  double total_ms = 0;
  std::string stop_reason;       // "eos", "length", "context", "stop_string", "cancelled"
  std::vector<double> token_ms;  // per decoded token (forward + sample)

  double prefill_tokens_per_s() const {
    return prefill_ms > 0 ? prompt_tokens * 1000.0 / prefill_ms : 0.0;
  }
  // Tokens produced by decode steps (every generated token but the first, which the prefill made).
  double decode_tokens_per_s() const {
    return decode_ms > 0 && generated_tokens > 1 ? (generated_tokens - 1) * 1000.0 / decode_ms
                                                 : 0.0;
  }
};

struct GenerateOptions {
  uint32_t max_new_tokens = 128;
  std::vector<std::string> stop_strings;
  bool ignore_eos = false;  // keep going past EOS (benchmarks want a fixed token count)
  uint32_t sequence = 0;    // the model's sequence (KV cache slot) to generate in
  // Prompt tokens whose K/V the sequence holds already (restored from a prompt cache,
  // engine/prompt_cache.h): prefill runs the prompt from this position on. < the prompt's size.
  uint32_t cached_prefix = 0;
};

class Generator {
 public:
  // What one step produced.
  struct Step {
    bool done = false;      // generation has ended (stats().stop_reason says why)
    int32_t token = -1;     // the sampled token (-1 when none was, e.g. at the context's end)
    std::string_view text;  // text that became printable (valid until the next call)
  };

  Generator(Transformer& model, const Tokenizer& tokenizer)
      : model_(model), tokenizer_(tokenizer) {}

  // Prefills `prompt` (non-empty, leaving at least one free position in the context). `sampler`
  // must outlive the generation. Errors: InvalidArgument (empty prompt, prompt >= context,
  // cached_prefix >= prompt), Forward's.
  Status Start(std::span<const int32_t> prompt, const GenerateOptions& options, Sampler& sampler);
  // One step. Errors: FailedPrecondition (no Start), Forward's.
  Result<Step> Next();
  // Ends the generation early: stop_reason "cancelled"; the held-back text is dropped.
  void Cancel();

  // Caller-driven stepping, for a scheduler that runs the tokens of several generators (each in
  // its own options.sequence) in one Forward:
  //   Begin(prompt, options, sampler)   Start's checks and set-up, without running the model;
  //   NextInput(max_tokens)             what the model must run next for this generator: the next
  //                                     chunk of the prompt (at most max_tokens, from its
  //                                     position), else the last sampled token; no tokens when
  //                                     the next step needs no pass (generation is ending);
  //   Advance(n, logits)                the caller ran NextInput's first n tokens (all of a decode
  //                                     input; 0 when Input had none) in options.sequence, and
  //                                     `logits` are the model's for the last of them. While the
  //                                     prompt is still being prefilled the Step has no token and
  //                                     is not done; once it is all in, Advance samples at once.
  // Next() must not be mixed with Advance on one generation. Errors: Begin as Start's (without
  // Forward's); Advance: FailedPrecondition (no Begin, n not matching NextInput).
  struct Input {
    std::span<const int32_t> tokens;  // valid until the next call on this generator
    uint32_t position = 0;            // of tokens[0] in the sequence
  };
  Status Begin(std::span<const int32_t> prompt, const GenerateOptions& options, Sampler& sampler);
  Input NextInput(uint32_t max_tokens) const;
  Result<Step> Advance(uint32_t n, std::span<const float> logits);
  bool prefilling() const { return begun_ && prefilled_ < stats_.prompt_tokens; }
  bool done() const { return done_; }

  // Start, then Next until done, passing text to on_text (may be empty). `cancelled` (may be
  // empty) is asked before every step; true ends the generation with stop_reason "cancelled".
  Result<GenerationStats> Generate(std::span<const int32_t> prompt, uint32_t max_new_tokens,
                                   Sampler& sampler, const std::vector<std::string>& stop_strings,
                                   const std::function<void(std::string_view)>& on_text,
                                   const std::function<bool()>& cancelled = nullptr);

  // Timings and counts; final once a step returned done.
  const GenerationStats& stats() const { return stats_; }
  // The ids so far: prompt + generated.
  const std::vector<int32_t>& ids() const { return ids_; }
  // Keep generating past EOS (benchmarks want a fixed token count); applies to Generate.
  void set_ignore_eos(bool ignore) { ignore_eos_ = ignore; }
  // GenerateOptions::cached_prefix for Generate.
  void set_cached_prefix(uint32_t tokens) { cached_prefix_ = tokens; }

 private:
  void FlushHeld();                 // held-back text and partial UTF-8 go out
  void Finish(const char* reason);  // done: stop reason (nullptr keeps it) and final timings
  Status Setup(std::span<const int32_t> prompt, const GenerateOptions& options, Sampler& sampler);
  // Samples from logits_ (the step's forward pass, if any, has run since t0_ns).
  Step Sample(uint64_t t0_ns);
  Step End(const char* reason);

  Transformer& model_;
  const Tokenizer& tokenizer_;
  Sampler* sampler_ = nullptr;
  GenerateOptions options_;
  GenerationStats stats_;
  std::vector<int32_t> ids_;
  std::string text_, piece_, out_;  // produced but not yet emitted; one token's bytes; emitted
  Utf8Stream utf8_;
  std::span<const float> logits_;
  uint32_t pos_ = 0, step_ = 0;
  bool started_ = false, done_ = false, ignore_eos_ = false;
  uint32_t cached_prefix_ = 0;  // for Generate
  bool begun_ = false;          // caller-driven (Begin)
  uint32_t prefilled_ = 0;      // prompt tokens run (caller-driven)
  uint64_t last_sample_ns_ = 0;
  uint64_t start_ns_ = 0, decode_start_ns_ = 0, first_sample_ns_ = 0;
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
// Perplexity of continuations given prompts: `tokens` is split into windows of `ctx` tokens
// (the last window may be shorter; one shorter than prompt_tokens + 1 is not scored); in each,
// the first prompt_tokens are the prompt, prefilled in passes of at most max_batch tokens that
// ask for their last token's logits only (as generation does: what lazy prefill prunes in), and
// every later token is run one per pass (as decoding does) and scored from the logits before it.
// Errors: InvalidArgument (prompt_tokens < 1, ctx <= prompt_tokens or beyond the model's
// context, no window long enough), Forward's.
Result<PerplexityResult> ContinuationPerplexity(Transformer& model, std::span<const int32_t> tokens,
                                                uint32_t ctx, uint32_t prompt_tokens);

}  // namespace flashlm::engine

#endif  // FLASHLM_ENGINE_GENERATOR_H_
