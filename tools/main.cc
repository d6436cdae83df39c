// flashlm: one binary, one subcommand per tool. Exceptions stop here: CLI11's parse errors map to
// exit code 2, anything unexpected to 1. Library code returns Status and never throws.
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <utility>
#include <vector>

#include <CLI/CLI.hpp>

#include "storage/logging.h"
#include "tools/cli_util.h"
#include "tools/commands.h"

namespace flashlm::tools {
namespace {

// Numeric options: CLI11 turns an empty value into 0 and takes "nan" and "inf" as numbers. Every
// INT/UINT/FLOAT option of every subcommand gets this check, so `-n ''` or `--temp nan` is a
// usage error (exit 2) wherever it appears.
void RefuseEmptyAndNonFiniteNumbers(CLI::App& app) {
  const CLI::Validator finite(
      [](std::string& value) -> std::string {
        if (value.empty()) return "empty value (a number is expected)";
        char* end = nullptr;
        const double v = std::strtod(value.c_str(), &end);
        if (end != value.c_str() && !std::isfinite(v)) return "not a finite number: " + value;
        return std::string();
      },
      "");
  for (CLI::App* sub : app.get_subcommands([](CLI::App*) { return true; })) {
    for (CLI::Option* opt : sub->get_options()) {
      const std::string type = opt->get_type_name();
      if (type == "INT" || type == "UINT" || type == "FLOAT" || type == "NUMBER") {
        opt->check(finite);
      }
    }
  }
}

// Output written to stdout is part of a command's result: a write error (a full disk, /dev/full,
// a closed pipe) turns success into exit 1 instead of passing silently.
int FinishStdout(int code) {
  errno = 0;
  const bool failed = std::ferror(stdout) != 0 || std::fflush(stdout) != 0;
  const int e = errno;
  if (std::fclose(stdout) != 0 || failed) {
    std::fprintf(stderr, "flashlm: error writing standard output: %s\n",
                 std::strerror(e != 0 ? e : errno));
    return code == kExitOk ? kExitFailure : code;
  }
  return code;
}

}  // namespace

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
  runners.push_back(RegisterCalibrate(app));
  runners.push_back(RegisterTrainPredictor(app));
  runners.push_back(RegisterPlan(app));
  runners.push_back(RegisterBench(app));
  runners.push_back(RegisterServe(app));



  RefuseEmptyAndNonFiniteNumbers(app);
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
      if (code >= 0) return FinishStdout(code);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "flashlm: unexpected error: %s\n", e.what());
    return kExitFailure;
  }
  return kExitUsage;
}
