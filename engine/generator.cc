#include "engine/generator.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>

namespace flashlm::engine {
namespace {

double MsSince(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

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

std::string GenerationStats::ToJson(const std::vector<int32_t>* ids) const {
  char buf[512];
  std::snprintf(buf, sizeof(buf),
                "{\"prompt_tokens\": %u, \"generated_tokens\": %u, \"ttft_ms\": %.3f, "
                "\"prefill_ms\": %.3f, \"prefill_tokens_per_s\": %.3f, \"decode_ms\": %.3f, "
                "\"decode_tokens_per_s\": %.3f, \"total_ms\": %.3f, \"stop_reason\": \"%s\"",
                prompt_tokens, generated_tokens, ttft_ms, prefill_ms, prefill_tokens_per_s(),
                decode_ms, decode_tokens_per_s(), total_ms, stop_reason.c_str());
  std::string out = buf;
  out += ", \"token_ms\": [";
  for (size_t i = 0; i < token_ms.size(); ++i) {
    std::snprintf(buf, sizeof(buf), "%s%.3f", i ? ", " : "", token_ms[i]);
    out += buf;
  }
  out += "]";
  if (ids != nullptr) {
    out += ", \"ids\": [";
    for (size_t i = 0; i < ids->size(); ++i) {
      if (i) out += ", ";
      out += std::to_string((*ids)[i]);
    }
    out += "]";
  }
  out += "}\n";
  return out;
}

Result<GenerationStats> Generator::Generate(std::span<const int32_t> prompt,
                                            uint32_t max_new_tokens, Sampler& sampler,
                                            const std::vector<std::string>& stop_strings,
                                            const std::function<void(std::string_view)>& on_text) {
  const uint32_t ctx = model_.max_context();
  if (prompt.empty()) return InvalidArgumentError("empty prompt (it must hold at least BOS)");
  if (prompt.size() >= ctx) {
    return InvalidArgumentError("prompt of " + std::to_string(prompt.size()) +
                                " tokens does not fit the context of " + std::to_string(ctx));
  }
  GenerationStats stats;
  stats.prompt_tokens = static_cast<uint32_t>(prompt.size());
  stats.token_ms.reserve(max_new_tokens);
  ids_.clear();
  ids_.reserve(prompt.size() + max_new_tokens);
  ids_.assign(prompt.begin(), prompt.end());
  std::string text, piece;  // text: produced but not yet emitted
  text.reserve(4096);
  piece.reserve(256);
  Utf8Stream utf8;
  const auto start = std::chrono::steady_clock::now();

  // Prefill in batches of max_batch.
  std::span<const float> logits;
  uint32_t pos = 0;
  while (pos < prompt.size()) {
    const uint32_t n = std::min<uint32_t>(model_.max_batch(), prompt.size() - pos);
    ASSIGN_OR_RETURN(logits, model_.Forward(prompt.subspan(pos, n), pos));
    pos += n;
  }
  stats.prefill_ms = MsSince(start);
  stats.stop_reason = "length";
  const auto decode_start = std::chrono::steady_clock::now();
  bool stopped = false;
  for (uint32_t i = 0; i < max_new_tokens; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    if (i > 0) {
      if (pos >= ctx) {
        stats.stop_reason = "context";
        break;
      }
      const int32_t last = ids_.back();
      ASSIGN_OR_RETURN(logits, model_.Forward(std::span<const int32_t>(&last, 1), pos));
      ++pos;
    }
    const int32_t next = sampler.Sample(logits, ids_);
    if (i == 0)
      stats.ttft_ms = MsSince(start);
    else
      stats.token_ms.push_back(MsSince(t0));
    if (next == tokenizer_.eos_id() && !ignore_eos_) {
      stats.stop_reason = "eos";
      break;
    }
    piece.clear();
    tokenizer_.AppendPiece(next, ids_.back(), piece);
    ids_.push_back(next);
    ++stats.generated_tokens;
    text.append(utf8.Push(piece));
    // Stop strings: cut at the first occurrence; otherwise emit what cannot start one.
    size_t cut = std::string::npos;
    for (const std::string& s : stop_strings) {
      if (!s.empty()) cut = std::min(cut, text.find(s));
    }
    if (cut != std::string::npos) {
      if (on_text && cut > 0) on_text(std::string_view(text).substr(0, cut));
      text.clear();
      stats.stop_reason = "stop_string";
      stopped = true;
      break;
    }
    const size_t hold = HeldBackLength(text, stop_strings);
    if (on_text && text.size() > hold)
      on_text(std::string_view(text).substr(0, text.size() - hold));
    text.erase(0, text.size() - hold);
  }
  if (!stopped) {
    text.append(utf8.Flush());
    if (on_text && !text.empty()) on_text(text);
  }
  stats.decode_ms = MsSince(decode_start);
  // decode_ms covers the steps after the first token.
  double first_sample_ms = stats.ttft_ms - stats.prefill_ms;
  stats.decode_ms = std::max(0.0, stats.decode_ms - first_sample_ms);
  stats.total_ms = MsSince(start);
  return stats;
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
    uint32_t pos = 0;
    while (pos < wlen) {
      const uint32_t n = std::min<uint32_t>(model.max_batch(), wlen - pos);
      ASSIGN_OR_RETURN(std::span<const float> logits,
                       model.Forward(tokens.subspan(w0 + pos, n), pos));
      for (uint32_t t = 0; t < n; ++t) {
        const size_t target = w0 + pos + t + 1;
        if (pos + t + 1 >= wlen) break;
        const float* l = logits.data() + uint64_t{t} * vocab;
        float mx = l[0];
        for (uint32_t v = 1; v < vocab; ++v) mx = std::max(mx, l[v]);
        double sum = 0;
        for (uint32_t v = 0; v < vocab; ++v) sum += std::exp(static_cast<double>(l[v] - mx));
        r.nll_sum += std::log(sum) + mx - l[tokens[target]];
        ++r.scored_tokens;
      }
      pos += n;
    }
  }
  r.perplexity = std::exp(r.nll_sum / static_cast<double>(r.scored_tokens));
  return r;
}

}  // namespace flashlm::engine
