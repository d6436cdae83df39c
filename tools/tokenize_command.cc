// flashlm tokenize STORE_OR_VOCAB TEXT [--no-bos]: prints the token ids as "[1, 2, 3]".
#include <CLI/CLI.hpp>
#include <cstdio>
#include <string>

#include "tools/cli_util.h"
#include "tools/commands.h"
#include "engine/session.h"

namespace flashlm::tools {

CommandRunner RegisterTokenize(CLI::App& app) {
  CLI::App* cmd = app.add_subcommand(
      "tokenize", "Print the token ids of TEXT (store, GGUF incl. vocab-only, or tokenizer.bin)");
  auto path = std::make_shared<std::string>();
  auto text = std::make_shared<std::string>();
  auto no_bos = std::make_shared<bool>(false);
  auto special = std::make_shared<bool>(false);
  cmd->add_option("store", *path, "Store, checkpoint or tokenizer file")->required();
  cmd->add_option("text", *text, "Text to tokenize")->required();
  cmd->add_flag("--no-bos", *no_bos, "Do not prepend BOS");
  cmd->add_flag("--special", *special, "Recognise control tokens written in the text");
  return [=] {
    if (!cmd->parsed()) return -1;
    auto tok = engine::OpenTokenizer(*path);
    if (!tok.ok()) return ReportError("tokenize", tok.status());
    const std::vector<int32_t> ids = (*tok)->Encode(*text, !*no_bos, *special);
    std::string out = "[";
    for (size_t i = 0; i < ids.size(); ++i) {
      if (i) out += ", ";
      out += std::to_string(ids[i]);
    }
    out += "]\n";
    std::fputs(out.c_str(), stdout);
    return kExitOk;
  };
}

}  // namespace flashlm::tools
