// flashlm generate STORE -p PROMPT -n N [sampling flags]: streams the continuation to stdout
// (the prompt too with --echo) and prints prompt tokens, time to first token, prefill and decode
// speed on stderr (and as JSON with --stats-json FILE). With --prompt-cache FILE the prompt's KV
// is restored from FILE when the prompt starts with the tokens saved there (only the rest is
// run; the restore counts in the time to first token and the prefill time), and the prompt's KV
// is saved to FILE after the run when FILE did not hold exactly this prompt (engine/
// prompt_cache.h). A FILE made for another store, shape or KV dtype, or damaged, is an error.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include "engine/generator.h"
#include "engine/prompt_cache.h"
#include "engine/sampler.h"
#include "engine/session.h"
#include "storage/file.h"
#include "storage/io_stats.h"
#include "tools/cli_util.h"
#include "tools/commands.h"
#include "tools/session_flags.h"

namespace flashlm::tools {

namespace {
struct GenerateFlags {
  std::string path, prompt, stats_json, prompt_cache;
  int64_t n = 128;
  int64_t ctx = 0;
  engine::SamplerOptions sampling;
  int64_t top_k = 40, repeat_last_n = 64, seed = -1;
  bool echo = false, no_bos = false, ignore_eos = false;
  int64_t bench_prompt_tokens = 0;
  bool bench_fill_kv = false;
  std::vector<std::string> stops;
  SessionFlags session;  // --threads, --tokenizer, --mem-budget and its tuning
};
}  // namespace

CommandRunner RegisterGenerate(CLI::App& app) {
  CLI::App* cmd = app.add_subcommand("generate", "Generate text from a store or checkpoint");
  auto f = std::make_shared<GenerateFlags>();
  cmd->add_option("store", f->path, "Store folder or checkpoint (GGUF, HF folder, llama2.c .bin)")
      ->required();
  cmd->add_option("-p,--prompt", f->prompt, "Prompt text (empty: start from BOS alone)");
  cmd->add_option("-n,--n-predict", f->n, "Tokens to generate");
  cmd->add_option("--temp", f->sampling.temperature, "Temperature (0 = greedy)");
  cmd->add_option("--top-k", f->top_k, "Top-k (0 = off)");
  cmd->add_option("--top-p", f->sampling.top_p, "Top-p in (0, 1]");
  cmd->add_option("--min-p", f->sampling.min_p, "Min-p in [0, 1)");
  cmd->add_option("--repeat-penalty", f->sampling.repeat_penalty, "Repetition penalty (1 = off)");
  cmd->add_option("--repeat-last-n", f->repeat_last_n, "Tokens the penalty looks back over");
  cmd->add_option("--seed", f->seed, "Sampling seed (default: from the clock)");
  cmd->add_option("--ctx", f->ctx, "Context length (default: the model's, at most 4096)");
  cmd->add_option("--stop", f->stops, "Stop when this string is produced (repeatable)");
  cmd->add_option("--stats-json", f->stats_json, "Write the statistics as JSON to FILE");
  cmd->add_option("--prompt-cache", f->prompt_cache,
                  "Restore the prompt's KV from FILE when it starts with the tokens saved there; "
                  "save it there after the run (a store only)");
  AddSessionFlags(cmd, &f->session);
  cmd->add_flag("--echo", f->echo, "Print the prompt before the continuation");
  cmd->add_flag("--no-bos", f->no_bos, "Do not prepend BOS to the prompt");
  cmd->add_flag("--ignore-eos", f->ignore_eos, "Do not stop at EOS (benchmarks)");
  cmd->add_flag("--bench-fill-kv", f->bench_fill_kv,
                "Benchmarks: with --bench-prompt-tokens N, fill the KV cache's first N-1 positions "
                "with synthetic normal(0,1) K/V rows instead of prefilling them (only the last "
                "prompt token is computed): measures decode at a long context where prefill is "
                "too slow. The output is meaningless as text");
  cmd->add_option("--bench-prompt-tokens", f->bench_prompt_tokens,
                  "Benchmarks: ignore -p and use BOS plus N-1 fixed token ids as the prompt");
  return [cmd, f] {
    if (!cmd->parsed()) return -1;
    auto usage = [](const std::string& msg) {
      return ReportError("generate", InvalidArgumentError(msg));
    };
    if (f->n < 0) return usage("-n must be >= 0");
    if (f->ctx < 0 || f->ctx > engine::kContextMax) return usage("--ctx out of range");
    if (f->top_k < 0) return usage("--top-k must be >= 0");
    if (f->repeat_last_n < 0) return usage("--repeat-last-n must be >= 0");
    f->sampling.top_k = static_cast<uint32_t>(std::min<int64_t>(f->top_k, UINT32_MAX));
    f->sampling.repeat_last_n =
        static_cast<uint32_t>(std::min<int64_t>(f->repeat_last_n, UINT32_MAX));
    f->sampling.seed =
        f->seed >= 0 ? static_cast<uint64_t>(f->seed) : static_cast<uint64_t>(std::time(nullptr));
    // Validate sampling before the (slow) model load.
    if (auto s = engine::Sampler::Create(1, f->sampling); !s.ok()) {
      return ReportError("generate", s.status());
    }
    engine::SessionOptions options;
    if (Status st = ApplySessionFlags(f->session, &options); !st.ok()) {
      return ReportError("generate", st);
    }
    options.transformer.max_context = static_cast<uint32_t>(f->ctx);
    auto session = engine::Session::Open(f->path, options);
    if (!session.ok()) return ReportError("generate", session.status());
    if (f->session.budgeted() || f->session.kv_paged()) {
      std::fputs((*session)->Describe().c_str(), stderr);
    }
    engine::Transformer& model = (*session)->model();
    const engine::Tokenizer& tok = (*session)->tokenizer();
    const uint32_t ctx = model.max_context();
    std::vector<int32_t> prompt = tok.Encode(f->prompt, !f->no_bos && tok.bos_id() >= 0);
    if (f->bench_prompt_tokens > 0) {
      if (f->bench_prompt_tokens > ctx) return usage("--bench-prompt-tokens exceeds the context");
      prompt.assign(1, tok.bos_id() >= 0 ? tok.bos_id() : 0);
      for (int64_t i = 1; i < f->bench_prompt_tokens; ++i) {
        prompt.push_back(static_cast<int32_t>((i * 7919) % model.config().vocab_size));
      }
    }
    if (prompt.empty()) prompt.push_back(tok.bos_id() >= 0 ? tok.bos_id() : 0);
    if (prompt.size() >= ctx) {
      return usage("prompt of " + std::to_string(prompt.size()) +
                   " tokens does not fit the context of " + std::to_string(ctx));
    }
    if (static_cast<uint64_t>(f->n) > ctx || prompt.size() + f->n - 1 > ctx) {
      return usage("prompt (" + std::to_string(prompt.size()) + " tokens) plus -n " +
                   std::to_string(f->n) + " exceeds the context of " + std::to_string(ctx));
    }
    auto sampler = engine::Sampler::Create(model.config().vocab_size, f->sampling);
    if (!sampler.ok()) return ReportError("generate", sampler.status());
    if (f->echo) {
      std::fputs(f->prompt.c_str(), stdout);
      std::fflush(stdout);
    }
    // The prompt cache: restore what it holds of this prompt.
    engine::PromptCacheKey cache_key;
    uint32_t cached = 0;
    bool cache_holds_prompt = false;
    double cache_load_ms = 0;
    if (!f->prompt_cache.empty()) {
      if ((*session)->store() == nullptr) {
        return usage("--prompt-cache needs a flashlm store (the cache is tied to its identity)");
      }
      if (f->session.lazy_prefill < 1.0) {
        // A pruned prompt's KV lacks the pruned positions' upper layers (they live in the aux
        // cache, which the prompt cache does not save): saving or restoring it would be wrong.
        return usage("--prompt-cache does not run with --lazy-prefill below 1 yet");
      }
      cache_key = engine::PromptCacheKey::For((*session)->store_identity(), model.config(),
                                              model.kv_cache().dtype());
      const uint64_t t0 = storage::NowNs();
      auto pc = engine::PromptCache::Load(f->prompt_cache, cache_key, ctx);
      if (pc.ok()) {
        cached = pc->ReusableTokens(prompt);
        cache_holds_prompt =
            std::equal(pc->tokens().begin(), pc->tokens().end(), prompt.begin(), prompt.end());
        if (cached > 0) {
          if (Status st = pc->Restore(model.kv_cache(), 0, cached); !st.ok()) {
            return ReportError("generate", st);
          }
        }
      } else if (pc.status().code() != StatusCode::kNotFound) {
        return ReportError("generate", pc.status());
      }
      cache_load_ms = static_cast<double>(storage::NowNs() - t0) / 1e6;
    }
    if (f->bench_fill_kv) {
      if (f->bench_prompt_tokens < 2)
        return usage("--bench-fill-kv needs --bench-prompt-tokens N >= 2");
      if (!f->prompt_cache.empty()) return usage("--bench-fill-kv does not go with --prompt-cache");
      const uint64_t t0 = storage::NowNs();
      cached = static_cast<uint32_t>(prompt.size() - 1);
      if (Status st =
              engine::FillSyntheticKv(model.kv_cache(), model.config().n_layers, 0, cached, 1);
          !st.ok()) {
        return ReportError("generate", st);
      }
      std::fprintf(stderr,
                   "bench: %u positions of synthetic K/V written in %.1f ms (not prefilled)\n",
                   cached, static_cast<double>(storage::NowNs() - t0) / 1e6);
      (*session)->ResetStats();
    }
    engine::Generator gen(model, tok);
    gen.set_ignore_eos(f->ignore_eos);
    gen.set_cached_prefix(cached);
    auto stats = gen.Generate(prompt, static_cast<uint32_t>(f->n), **sampler, f->stops,
                              [](std::string_view text) {
                                std::fwrite(text.data(), 1, text.size(), stdout);
                                std::fflush(stdout);
                              });
    if (!stats.ok()) return ReportError("generate", stats.status());
    std::fputc('\n', stdout);
    stats->ttft_ms += cache_load_ms;
    stats->prefill_ms += cache_load_ms;
    nlohmann::json cache_json;
    if (!f->prompt_cache.empty()) {
      double save_ms = 0;
      if (!cache_holds_prompt) {
        const uint64_t t0 = storage::NowNs();
        if (Status st =
                engine::SavePromptCache(f->prompt_cache, cache_key, model.kv_cache(), 0, prompt);
            !st.ok()) {
          return ReportError("generate", st);
        }
        save_ms = static_cast<double>(storage::NowNs() - t0) / 1e6;
      }
      std::fprintf(stderr, "prompt cache: %u of %zu prompt tokens restored in %.1f ms", cached,
                   prompt.size(), cache_load_ms);
      if (!cache_holds_prompt) std::fprintf(stderr, ", prompt saved in %.1f ms", save_ms);
      std::fputc('\n', stderr);
      cache_json = {{"restored_tokens", cached},
                    {"prompt_tokens", prompt.size()},
                    {"load_ms", cache_load_ms},
                    {"saved", !cache_holds_prompt},
                    {"save_ms", save_ms}};
    }
    std::fprintf(stderr,
                 "prompt tokens: %u, generated tokens: %u, time to first token: %.1f ms, "
                 "prefill: %.2f tok/s, decode: %.2f tok/s (stop: %s)\n",
                 stats->prompt_tokens, stats->generated_tokens, stats->ttft_ms,
                 stats->prefill_tokens_per_s(), stats->decode_tokens_per_s(),
                 stats->stop_reason.c_str());
    nlohmann::json json = GenerationJson(*stats, &gen.ids());
    // A checkpoint's decode reads its weights from DRAM: the rate it reached over them.
    if (const uint64_t bytes = (*session)->decode_weight_bytes(); bytes > 0) {
      const double gbps = static_cast<double>(bytes) * stats->decode_tokens_per_s() / 1e9;
      std::fprintf(stderr, "decode reads %.3f GB of weights a token: %.1f GB/s\n",
                   static_cast<double>(bytes) / 1e9, gbps);
      json["weight_bytes_per_token"] = bytes;
      json["decode_weight_gb_per_s"] = gbps;
    }
    if (!cache_json.is_null()) json["prompt_cache"] = cache_json;
    if (f->session.budgeted()) {
      const engine::IoReport io =
          engine::IoReport::Make((*session)->stats(), stats->prefill_ms + stats->decode_ms);
      std::fprintf(stderr, "%s\n", IoStatsLine(io).c_str());
      if (const std::string ffn = FfnStatsLine(io.counters); !ffn.empty()) {
        std::fprintf(stderr, "%s\n", ffn.c_str());
        json["ffn"] = FfnStatsJson(io.counters);
      }
      json["io"] = IoStatsJson(io, uint64_t{stats->prompt_tokens} + stats->generated_tokens,
                               (*session)->planned_bytes());
    }
    if ((*session)->paged_kv() != nullptr) {
      const engine::EngineStats es = (*session)->stats();
      std::fprintf(stderr, "%s\n", KvStatsLine(**session, es).c_str());
      json["kv"] = KvStatsJson(**session, es);
    }
    if (model.lazy()) {
      const engine::EngineStats es = (*session)->stats();
      std::fprintf(stderr, "%s\n", LazyStatsLine(es).c_str());
      json["lazy"] = LazyStatsJson(es);
    }
    if (!f->stats_json.empty()) {
      if (Status st = storage::WriteFileAtomically(f->stats_json, AsBytes(json.dump(1) + "\n"));
          !st.ok()) {
        return ReportError("generate", st.WithContext("--stats-json"));
      }
    }
    return kExitOk;
  };
}

}  // namespace flashlm::tools
