// flashlm perplexity STORE --text FILE [--ctx N]: perplexity of a text file under the model.
#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>

#include "engine/generator.h"
#include "tools/cli_util.h"
#include "tools/commands.h"
#include "tools/engine_session.h"
#include "tools/streaming_session.h"

namespace flashlm::tools {

CommandRunner RegisterPerplexity(CLI::App& app) {
  CLI::App* cmd = app.add_subcommand("perplexity", "Perplexity of a text file");
  auto path = std::make_shared<std::string>();
  auto text_path = std::make_shared<std::string>();
  auto tokenizer = std::make_shared<std::string>();
  auto ctx = std::make_shared<int64_t>(512);
  auto threads = std::make_shared<int64_t>(0);
  cmd->add_option("store", *path, "Store folder or checkpoint")->required();
  cmd->add_option("--text", *text_path, "Text file")->required();
  cmd->add_option("--ctx", *ctx, "Window length in tokens (at most the model's maximum)");
  cmd->add_option("--threads", *threads, "Threads (default: all cores)");
  cmd->add_option("--tokenizer", *tokenizer, "llama2.c tokenizer.bin for a llama2.c .bin");
  auto streaming = std::make_shared<StreamingFlags>();  // ooc
  AddStreamingFlags(cmd, streaming.get());
  return [=] {
    if (!cmd->parsed()) return -1;
    if (*ctx < 2 || *ctx > (1 << 24)) {
      return ReportError("perplexity", InvalidArgumentError("--ctx must be >= 2"));
    }
    if (*threads < 0 || *threads > 1024) {
      return ReportError("perplexity", InvalidArgumentError("--threads must be in [0, 1024]"));
    }
    std::ifstream in(*text_path, std::ios::binary);
    if (!in) return ReportError("perplexity", NotFoundError("cannot open " + *text_path));
    std::stringstream ss;
    ss << in.rdbuf();
    engine::TransformerOptions options;
    options.all_logits = true;
    options.max_batch = 64;
    options.max_context = static_cast<uint32_t>(*ctx);
    auto so = ToStreamingOptions(*streaming);
    if (!so.ok()) return ReportError("perplexity", so.status());
    so->transformer = options;
    auto session =
        !streaming->enabled()
            ? OpenEngineSession(*path, *tokenizer, static_cast<uint32_t>(*threads), options)
            : OpenStreamingSession(*path, static_cast<uint32_t>(*threads), *so);
    if (!session.ok()) return ReportError("perplexity", session.status());
    std::vector<int32_t> tokens = session->tokenizer->Encode(ss.str(), true);
    const auto t0 = std::chrono::steady_clock::now();
    auto r = engine::Perplexity(*session->model, tokens, static_cast<uint32_t>(*ctx));
    const double forward_ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    if (!r.ok()) return ReportError("perplexity", r.status());
    std::printf("perplexity: %.4f over %llu tokens (ctx %lld)\n", r->perplexity,
                static_cast<unsigned long long>(r->scored_tokens), static_cast<long long>(*ctx));
    if (session->streaming) {
      std::fprintf(stderr, "%s\n",
                   IoStatsLine(session->streaming->stats(), tokens.size(), forward_ms).c_str());
    }
    return kExitOk;
  };
}

}  // namespace flashlm::tools
