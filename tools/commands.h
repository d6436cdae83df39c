// Each subcommand lives in its own tools/<name>_command.cc and registers itself on the app.
// Register* adds the subcommand and its flags; the returned callback runs it and yields the
// process exit code.
#ifndef FLASHLM_TOOLS_COMMANDS_H_
#define FLASHLM_TOOLS_COMMANDS_H_

#include <functional>

namespace CLI {
class App;
}

namespace flashlm::tools {

using CommandRunner = std::function<int()>;

// One line per subcommand; main() calls each.
CommandRunner RegisterVersion(CLI::App& app);

// storage
CommandRunner RegisterIobench(CLI::App& app);  // tools/iobench_command.cc


// layout
CommandRunner RegisterSynth(CLI::App& app);


// store
CommandRunner RegisterRepack(CLI::App& app);
CommandRunner RegisterInspect(CLI::App& app);
CommandRunner RegisterVerify(CLI::App& app);


// engine
CommandRunner RegisterGenerate(CLI::App& app);
CommandRunner RegisterTokenize(CLI::App& app);
CommandRunner RegisterPerplexity(CLI::App& app);
// activations (issue 5)
CommandRunner RegisterActivations(CLI::App& app);  // tools/activations_command.cc
CommandRunner RegisterCalibrate(CLI::App& app);    // tools/calibrate_command.cc
CommandRunner RegisterTrainPredictor(CLI::App& app);  // tools/train_predictor_command.cc
CommandRunner RegisterPlan(CLI::App& app);         // tools/plan_command.cc
CommandRunner RegisterBench(CLI::App& app);        // tools/bench_command.cc

// server (issue 13)
CommandRunner RegisterServe(CLI::App& app);  // tools/serve_command.cc



}  // namespace flashlm::tools

#endif  // FLASHLM_TOOLS_COMMANDS_H_
