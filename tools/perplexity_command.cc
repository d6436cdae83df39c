// flashlm perplexity STORE --text FILE [--ctx N]: perplexity of a text file under the model.
#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>

#include "engine/generator.h"
#include "engine/session.h"
#include "tools/cli_util.h"
#include "tools/commands.h"
#include "tools/session_flags.h"

namespace flashlm::tools {

CommandRunner RegisterPerplexity(CLI::App& app) {
  CLI::App* cmd = app.add_subcommand("perplexity", "Perplexity of a text file");
  auto path = std::make_shared<std::string>();
  auto text_path = std::make_shared<std::string>();
  auto ctx = std::make_shared<int64_t>(512);
  auto flags = std::make_shared<SessionFlags>();
  cmd->add_option("store", *path, "Store folder or checkpoint")->required();
  cmd->add_option("--text", *text_path, "Text file")->required();
  cmd->add_option("--ctx", *ctx, "Window length in tokens (at most the model's maximum)");
  AddSessionFlags(cmd, flags.get());
  return [=] {
    if (!cmd->parsed()) return -1;
    if (*ctx < 2 || *ctx > (1 << 24)) {
      return ReportError("perplexity", InvalidArgumentError("--ctx must be >= 2"));
    }
    engine::SessionOptions options;
    if (Status st = ApplySessionFlags(*flags, &options); !st.ok()) {
      return ReportError("perplexity", st);
    }
    std::ifstream in(*text_path, std::ios::binary);
    if (!in) return ReportError("perplexity", NotFoundError("cannot open " + *text_path));
    std::stringstream ss;
    ss << in.rdbuf();
    options.transformer.all_logits = true;
    options.transformer.max_batch = 64;
    options.transformer.max_context = static_cast<uint32_t>(*ctx);
    auto session = engine::Session::Open(*path, options);
    if (!session.ok()) return ReportError("perplexity", session.status());
    if (flags->budgeted()) std::fputs((*session)->Describe().c_str(), stderr);
    std::vector<int32_t> tokens = (*session)->tokenizer().Encode(ss.str(), true);
    const auto t0 = std::chrono::steady_clock::now();
    auto r = engine::Perplexity((*session)->model(), tokens, static_cast<uint32_t>(*ctx));
    const double forward_ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    if (!r.ok()) return ReportError("perplexity", r.status());
    std::printf("perplexity: %.4f over %llu tokens (ctx %lld)\n", r->perplexity,
                static_cast<unsigned long long>(r->scored_tokens), static_cast<long long>(*ctx));
    if (flags->budgeted()) {
      std::fprintf(stderr, "%s\n",
                   IoStatsLine(engine::IoReport::Make((*session)->stats(), forward_ms)).c_str());
    }
    return kExitOk;
  };
}

}  // namespace flashlm::tools
