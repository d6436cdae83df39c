#include "engine/generator.h"

#include <algorithm>
#include <cmath>

#include "storage/io_stats.h"

namespace flashlm::engine {
namespace {

double MsBetween(uint64_t t0_ns, uint64_t t1_ns) { return static_cast<double>(t1_ns - t0_ns) / 1e6; }

// Length of the longest suffix of `text` that is a proper prefix of some stop string.
size_t HeldBackLength(std::string_view text, const std::vector<std::string>& stops) {
  size_t hold = 0;
  for (const std::string& s : stops) {
    for (size_t len = std::min(text.size(), s.size() - 1); len > hold; --len) {
      if (text.substr(text.size() - len) == std::string_view(s).substr(0, len)) {
        hold = len;
        break;
      }
    }
  }
  return hold;
}

}  // namespace

Result<std::span<const float>> Prefill(Transformer& model, std::span<const int32_t> tokens,
                                       uint32_t pos, uint32_t seq, const BatchLogitsFn& on_batch) {
  if (tokens.empty()) return InvalidArgumentError("no tokens to run");
  std::span<const float> logits;
  for (size_t first = 0; first < tokens.size();) {
    const uint32_t n =
        static_cast<uint32_t>(std::min<size_t>(model.max_batch(), tokens.size() - first));
    ASSIGN_OR_RETURN(logits,
                     model.Forward(tokens.subspan(first, n), pos + static_cast<uint32_t>(first), seq));
    if (on_batch) RETURN_IF_ERROR(on_batch(first, n, logits));
    first += n;
  }
  return logits;
}

Status Generator::Setup(std::span<const int32_t> prompt, const GenerateOptions& options,
                        Sampler& sampler) {
  const uint32_t ctx = model_.max_context();
  if (prompt.empty()) return InvalidArgumentError("empty prompt (it must hold at least BOS)");
  if (prompt.size() >= ctx) {
    return InvalidArgumentError("prompt of " + std::to_string(prompt.size()) +
                                " tokens does not fit the context of " + std::to_string(ctx));
  }
  if (options.cached_prefix >= prompt.size()) {
    return InvalidArgumentError("a cached prefix must leave at least one prompt token to run");
  }
  started_ = false;
  begun_ = false;
  done_ = false;
  prefilled_ = 0;
  sampler_ = &sampler;
  options_ = options;
  stats_ = GenerationStats();
  stats_.prompt_tokens = static_cast<uint32_t>(prompt.size());
  stats_.stop_reason = "length";
  stats_.token_ms.reserve(options.max_new_tokens);
  ids_.clear();
  ids_.reserve(prompt.size() + options.max_new_tokens);
  ids_.assign(prompt.begin(), prompt.end());
  // Text held back is at most a stop string's length plus one token's bytes.
  size_t longest_stop = 0;
  for (const std::string& s : options.stop_strings) longest_stop = std::max(longest_stop, s.size());
  text_.clear();
  text_.reserve(1024 + longest_stop);
  piece_.reserve(256);
  out_.reserve(1024 + longest_stop);
  utf8_ = Utf8Stream();
  step_ = 0;
  first_sample_ns_ = 0;
  start_ns_ = storage::NowNs();
  decode_start_ns_ = start_ns_;
  return Status::Ok();
}

Status Generator::Start(std::span<const int32_t> prompt, const GenerateOptions& options,
                        Sampler& sampler) {
  RETURN_IF_ERROR(Setup(prompt, options, sampler));
  ASSIGN_OR_RETURN(logits_, Prefill(model_, prompt.subspan(options.cached_prefix),
                                    options.cached_prefix, options.sequence));
  pos_ = static_cast<uint32_t>(prompt.size());
  decode_start_ns_ = storage::NowNs();
  stats_.prefill_ms = MsBetween(start_ns_, decode_start_ns_);
  started_ = true;
  return Status::Ok();
}

Status Generator::Begin(std::span<const int32_t> prompt, const GenerateOptions& options,
                        Sampler& sampler) {
  RETURN_IF_ERROR(Setup(prompt, options, sampler));
  begun_ = true;
  prefilled_ = options.cached_prefix;
  return Status::Ok();
}

Generator::Input Generator::NextInput(uint32_t max_tokens) const {
  Input in;
  if (!begun_ || done_ || max_tokens == 0) return in;
  if (prefilled_ < stats_.prompt_tokens) {
    const uint32_t n = std::min(max_tokens, stats_.prompt_tokens - prefilled_);
    in.tokens = std::span<const int32_t>(ids_).subspan(prefilled_, n);
    in.position = prefilled_;
    return in;
  }
  if (step_ == 0 || step_ >= options_.max_new_tokens || pos_ >= model_.max_context()) return in;
  in.tokens = std::span<const int32_t>(ids_).last(1);
  in.position = pos_;
  return in;
}

Result<Generator::Step> Generator::Advance(uint32_t n, std::span<const float> logits) {
  if (!begun_) return FailedPreconditionError("Generator::Advance before Begin");
  out_.clear();
  Step step;
  if (done_) {
    step.done = true;
    return step;
  }
  const uint64_t now = storage::NowNs();
  if (prefilled_ < stats_.prompt_tokens) {
    if (n == 0 || n > stats_.prompt_tokens - prefilled_ || logits.empty()) {
      return FailedPreconditionError("Generator::Advance: not the prompt chunk NextInput gave");
    }
    prefilled_ += n;
    if (prefilled_ < stats_.prompt_tokens) return step;
    // The prompt is in: sample the first token from its last logits, as Start + Next would.
    logits_ = logits;
    pos_ = stats_.prompt_tokens;
    decode_start_ns_ = now;
    stats_.prefill_ms = MsBetween(start_ns_, decode_start_ns_);
    started_ = true;
    return Sample(now);
  }
  if (n == 0) {
    if (step_ >= options_.max_new_tokens) return End(nullptr);
    if (pos_ >= model_.max_context()) return End("context");
    return FailedPreconditionError("Generator::Advance: the step needs a forward pass");
  }
  if (n != 1 || step_ == 0 || logits.empty()) {
    return FailedPreconditionError("Generator::Advance: not the token NextInput gave");
  }
  logits_ = logits;
  ++pos_;
  // A decode step's time: from the previous sample (the caller's batch ran in between).
  return Sample(last_sample_ns_);
}

void Generator::FlushHeld() {
  text_.append(utf8_.Flush());
  out_.append(text_);
  text_.clear();
}

void Generator::Finish(const char* reason) {
  if (reason != nullptr) stats_.stop_reason = reason;
  done_ = true;
  const uint64_t now = storage::NowNs();
  // decode_ms covers the steps after the first token.
  const double first_sample_ms =
      first_sample_ns_ ? MsBetween(decode_start_ns_, first_sample_ns_) : 0.0;
  stats_.decode_ms = std::max(0.0, MsBetween(decode_start_ns_, now) - first_sample_ms);
  stats_.total_ms = MsBetween(start_ns_, now);
}

void Generator::Cancel() {
  if ((started_ || begun_) && !done_) Finish("cancelled");
}

Generator::Step Generator::End(const char* reason) {
  Step step;
  FlushHeld();
  Finish(reason);
  step.done = true;
  step.text = out_;
  return step;
}

Result<Generator::Step> Generator::Next() {
  if (!started_ || begun_) return FailedPreconditionError("Generator::Next before Start");
  Step step;
  out_.clear();
  if (done_) {
    step.done = true;
    return step;
  }
  if (step_ >= options_.max_new_tokens) return End(nullptr);
  const uint64_t t0 = storage::NowNs();
  if (step_ > 0) {
    if (pos_ >= model_.max_context()) return End("context");
    const int32_t last = ids_.back();
    ASSIGN_OR_RETURN(logits_, model_.Forward(std::span<const int32_t>(&last, 1), pos_,
                                             options_.sequence));
    ++pos_;
  }
  return Sample(t0);
}

Generator::Step Generator::Sample(uint64_t t0) {
  Step step;
  const int32_t next = sampler_->Sample(logits_, ids_);
  const uint64_t sampled = storage::NowNs();
  last_sample_ns_ = sampled;
  if (step_ == 0) {
    stats_.ttft_ms = MsBetween(start_ns_, sampled);
    first_sample_ns_ = sampled;
  } else {
    stats_.token_ms.push_back(MsBetween(t0, sampled));
  }
  ++step_;
  step.token = next;
  if (next == tokenizer_.eos_id() && !options_.ignore_eos) {
    Step end = End("eos");
    end.token = next;
    return end;
  }
  piece_.clear();
  tokenizer_.AppendPiece(next, ids_.back(), piece_);
  ids_.push_back(next);
  ++stats_.generated_tokens;
  text_.append(utf8_.Push(piece_));
  // Stop strings: cut at the first occurrence; otherwise emit what cannot start one.
  size_t cut = std::string::npos;
  for (const std::string& s : options_.stop_strings) {
    if (!s.empty()) cut = std::min(cut, text_.find(s));
  }
  if (cut != std::string::npos) {
    out_.assign(text_, 0, cut);
    text_.clear();
    Finish("stop_string");
    step.done = true;
    step.text = out_;
    return step;
  }
  const size_t hold = HeldBackLength(text_, options_.stop_strings);
  out_.assign(text_, 0, text_.size() - hold);
  text_.erase(0, text_.size() - hold);
  if (step_ >= options_.max_new_tokens) {
    // The last token's text goes out with the held-back rest.
    text_.insert(0, out_);
    out_.clear();
    Step end = End(nullptr);
    end.token = next;
    return end;
  }
  step.text = out_;
  return step;
}

Result<GenerationStats> Generator::Generate(std::span<const int32_t> prompt,
                                            uint32_t max_new_tokens, Sampler& sampler,
                                            const std::vector<std::string>& stop_strings,
                                            const std::function<void(std::string_view)>& on_text,
                                            const std::function<bool()>& cancelled) {
  GenerateOptions options;
  options.max_new_tokens = max_new_tokens;
  options.stop_strings = stop_strings;
  options.ignore_eos = ignore_eos_;
  options.cached_prefix = cached_prefix_;
  RETURN_IF_ERROR(Start(prompt, options, sampler));
  while (true) {
    if (cancelled && cancelled()) {
      Cancel();
      break;
    }
      ASSIGN_OR_RETURN(Step step, Next());
    if (on_text && !step.text.empty()) on_text(step.text);
    if (step.done) break;
  }
  return stats_;
}

Result<PerplexityResult> Perplexity(Transformer& model, std::span<const int32_t> tokens,
                                    uint32_t ctx) {
  if (tokens.size() < 2) return InvalidArgumentError("perplexity needs at least two tokens");
  if (ctx < 2 || ctx > model.max_context()) {
    return InvalidArgumentError("perplexity context must be in [2, " +
                                std::to_string(model.max_context()) + "]");
  }
  const uint32_t vocab = model.config().vocab_size;
  PerplexityResult r;
  for (size_t w0 = 0; w0 + 1 < tokens.size(); w0 += ctx - 1) {
    // A window starts at the last token of the previous one, so every token is scored once.
    const size_t wlen = std::min<size_t>(ctx, tokens.size() - w0);
    RETURN_IF_ERROR(Prefill(model, tokens.subspan(w0, wlen), 0, 0,
                            [&](size_t first, uint32_t n, std::span<const float> logits) {
                              for (uint32_t t = 0; t < n; ++t) {
                                const size_t target = first + t + 1;
                                if (target >= wlen) break;
                                const float* l = logits.data() + uint64_t{t} * vocab;
                                float mx = l[0];
                                for (uint32_t v = 1; v < vocab; ++v) mx = std::max(mx, l[v]);
                                double sum = 0;
                                for (uint32_t v = 0; v < vocab; ++v) {
                                  sum += std::exp(static_cast<double>(l[v] - mx));
                                }
                                r.nll_sum += std::log(sum) + mx - l[tokens[w0 + target]];
                                ++r.scored_tokens;
                              }
                              return Status::Ok();
                            })
                        .status());
  }
  r.perplexity = std::exp(r.nll_sum / static_cast<double>(r.scored_tokens));
  return r;
}

namespace {

// -log softmax(logits)[target].
double Nll(std::span<const float> logits, int32_t target) {
  float mx = logits[0];
  for (float v : logits) mx = std::max(mx, v);
  double sum = 0;
  for (float v : logits) sum += std::exp(static_cast<double>(v - mx));
  return std::log(sum) + mx - logits[static_cast<size_t>(target)];
}

}  // namespace

Result<PerplexityResult> ContinuationPerplexity(Transformer& model, std::span<const int32_t> tokens,
                                                uint32_t ctx, uint32_t prompt_tokens) {
  if (prompt_tokens < 1) return InvalidArgumentError("the prompt needs at least one token");
  if (ctx <= prompt_tokens || ctx > model.max_context()) {
    return InvalidArgumentError("continuation perplexity: the window must be in [" +
                                std::to_string(prompt_tokens + 1) + ", " +
                                std::to_string(model.max_context()) + "]");
  }
  const uint32_t vocab = model.config().vocab_size;
  PerplexityResult r;
  std::vector<uint32_t> pos(model.max_batch());
  for (size_t w0 = 0; w0 + prompt_tokens + 1 <= tokens.size(); w0 += ctx) {
    const std::span<const int32_t> w =
        tokens.subspan(w0, std::min<size_t>(ctx, tokens.size() - w0));
    std::span<const float> logits;
    for (uint32_t first = 0; first < prompt_tokens;) {
      const uint32_t n = std::min(model.max_batch(), prompt_tokens - first);
      TokenBatch b;
      b.tokens = w.subspan(first, n);
      for (uint32_t t = 0; t < n; ++t) pos[t] = first + t;
      const uint32_t last[1] = {n - 1};
      b.positions = std::span<const uint32_t>(pos).first(n);
      b.logits_for = last;
      ASSIGN_OR_RETURN(logits, model.Forward(b));
      first += n;
    }
    for (size_t t = prompt_tokens; t < w.size(); ++t) {
      r.nll_sum += Nll(logits.first(vocab), w[t]);
      ++r.scored_tokens;
      if (t + 1 == w.size()) break;
      ASSIGN_OR_RETURN(logits, model.Forward(w.subspan(t, 1), static_cast<uint32_t>(t)));
    }
  }
  if (r.scored_tokens == 0) {
    return InvalidArgumentError("continuation perplexity: no window longer than the prompt");
  }
  r.perplexity = std::exp(r.nll_sum / static_cast<double>(r.scored_tokens));
  return r;
}

}  // namespace flashlm::engine
