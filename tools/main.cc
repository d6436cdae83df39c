// flashlm: one binary, one subcommand per tool. Exceptions stop here: CLI11's parse errors map to
// exit code 2, anything unexpected to 1. Library code returns Status and never throws.
#include <cstdio>
#include <exception>
#include <utility>
#include <vector>

#include <CLI/CLI.hpp>

#include "storage/logging.h"
#include "tools/cli_util.h"
#include "tools/commands.h"

namespace flashlm::tools {

CommandRunner RegisterVersion(CLI::App& app) {
  CLI::App* cmd = app.add_subcommand("version", "Print the flashlm version");
  return [cmd] {
    if (!cmd->parsed()) return -1;
    std::printf("flashlm %s\n", FLASHLM_VERSION);
    return kExitOk;
  };
}

}  // namespace flashlm::tools

int main(int argc, char** argv) {
  using namespace flashlm::tools;
  CLI::App app{"flashlm: run LLaMA-family models from flash under a fixed DRAM budget"};
  app.require_subcommand(1);
  bool verbose = false, quiet = false;
  app.add_flag("-v,--verbose", verbose, "Log informational messages to stderr");
  app.add_flag("-q,--quiet", quiet, "Log only errors");

  std::vector<CommandRunner> runners;
  runners.push_back(RegisterVersion(app));
  // storage
  runners.push_back(RegisterIobench(app));


  // layout
  runners.push_back(RegisterSynth(app));


  // store
  runners.push_back(RegisterRepack(app));
  runners.push_back(RegisterInspect(app));
  runners.push_back(RegisterVerify(app));


  // engine
  runners.push_back(RegisterGenerate(app));
  runners.push_back(RegisterTokenize(app));
  runners.push_back(RegisterPerplexity(app));
  // activations (issue 5)
  runners.push_back(RegisterActivations(app));
  runners.push_back(RegisterPlan(app));
  runners.push_back(RegisterBench(app));



  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int code = app.exit(e);
    return code == 0 ? kExitOk : kExitUsage;
  }
  flashlm::SetLogLevel(verbose ? flashlm::LogLevel::kInfo
                               : quiet ? flashlm::LogLevel::kError : flashlm::LogLevel::kWarning);
  try {
    for (auto& run : runners) {
      int code = run();
      if (code >= 0) return code;
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "flashlm: unexpected error: %s\n", e.what());
    return kExitFailure;
  }
  return kExitUsage;
}
