// flashlm perplexity STORE --text FILE [--ctx N]: perplexity of a text file under the model.
#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <string>

#include "engine/generator.h"
#include "engine/session.h"
#include "storage/file.h"
#include "tools/cli_util.h"
#include "tools/commands.h"
#include "tools/session_flags.h"

namespace flashlm::tools {

CommandRunner RegisterPerplexity(CLI::App& app) {
  CLI::App* cmd = app.add_subcommand("perplexity", "Perplexity of a text file");
  auto path = std::make_shared<std::string>();
  auto text_path = std::make_shared<std::string>();
  auto ctx = std::make_shared<int64_t>(0);  // 0: the model's context, at most 512
  auto flags = std::make_shared<SessionFlags>();
  auto prompt_tokens = std::make_shared<int64_t>(0);
  cmd->add_option("store", *path, "Store folder or checkpoint")->required();
  cmd->add_option("--text", *text_path, "Text file")->required();
  CLI::Option* ctx_opt = cmd->add_option(
      "--ctx", *ctx, "Window length in tokens (default: the model's context, at most 512)");
  cmd->add_option("--prompt-tokens", *prompt_tokens,
                  "Score continuations only: in each window the first N tokens are a prompt, "
                  "prefilled as generation does, the rest decoded one per pass and scored "
                  "(0: every token, the default)");
  AddSessionFlags(cmd, flags.get());
  return [=] {
    if (!cmd->parsed()) return -1;
    if ((ctx_opt->count() > 0 || *ctx != 0) && (*ctx < 2 || *ctx > engine::kContextMax)) {
      return ReportError("perplexity",
                         InvalidArgumentError("--ctx must be in [2, " +
                                              std::to_string(engine::kContextMax) + "]"));
    }
    engine::SessionOptions options;
    if (Status st = ApplySessionFlags(*flags, &options); !st.ok()) {
      return ReportError("perplexity", st);
    }
    if (*prompt_tokens < 0 || *prompt_tokens > engine::kContextMax) {
      return ReportError("perplexity",
                         InvalidArgumentError("--prompt-tokens must be in [0, " +
                                              std::to_string(engine::kContextMax) + "]"));
    }
    Result<std::string> text = storage::ReadFileBounded(*text_path, kTextBytesMax);
    if (!text.ok()) return ReportError("perplexity", text.status().WithContext("--text"));
    options.transformer.all_logits = true;
    if (flags->batch == 0) options.transformer.max_batch = 64;
    options.transformer.max_context = static_cast<uint32_t>(*ctx);
    options.default_context_max = 512;
    auto session = engine::Session::Open(*path, options);
    if (!session.ok()) return ReportError("perplexity", session.status());
    if (flags->budgeted() || flags->kv_paged()) {
      std::fputs((*session)->Describe().c_str(), stderr);
    }
    const uint32_t window = (*session)->model().max_context();
    std::vector<int32_t> tokens = (*session)->tokenizer().Encode(*text, true);
    const auto t0 = std::chrono::steady_clock::now();
    auto r = *prompt_tokens > 0
                 ? engine::ContinuationPerplexity((*session)->model(), tokens, window,
                                                  static_cast<uint32_t>(*prompt_tokens))
                 : engine::Perplexity((*session)->model(), tokens, window);
    const double forward_ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    if (!r.ok()) return ReportError("perplexity", r.status());
    std::printf("perplexity: %.4f over %llu tokens (ctx %lld)\n", r->perplexity,
                static_cast<unsigned long long>(r->scored_tokens), static_cast<long long>(window));
    if (flags->budgeted()) {
      std::fprintf(stderr, "%s\n",
                   IoStatsLine(engine::IoReport::Make((*session)->stats(), forward_ms)).c_str());
      if (const std::string ffn = FfnStatsLine((*session)->stats()); !ffn.empty()) {
        std::fprintf(stderr, "%s\n", ffn.c_str());
      }
    }
    if ((*session)->model().lazy()) {
      std::fprintf(stderr, "%s\n", LazyStatsLine((*session)->stats()).c_str());
    }
    if ((*session)->paged_kv() != nullptr) {
      std::fprintf(stderr, "%s\n", KvStatsLine(**session, (*session)->stats()).c_str());
    }
    return kExitOk;
  };
}

}  // namespace flashlm::tools
