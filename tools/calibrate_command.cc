// flashlm calibrate STORE --text FILE --target-sparsity S: per-layer thresholds for
// `--sparsity threshold` (CATS-style: a neuron is skipped for a token when |act(gate x)| is at
// most its layer's cut), so that about S of the FFN's neurons are skipped per token.
//
// The text is tokenized (BOS first) and run densely in consecutive windows of --ctx tokens, as
// `activations` does; engine/gate_calibrator.h turns the gate outputs into cuts. The file goes
// beside the store (STORE/ffn_thresholds.json, or --out), tied to the store's identity and
// checksummed (layout/ffn_thresholds.h). A store runs under --mem-budget like generate does.
#include <CLI/CLI.hpp>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <string>

#include "engine/activation_counter.h"
#include "engine/gate_calibrator.h"
#include "engine/generator.h"
#include "engine/session.h"
#include "layout/ffn_thresholds.h"
#include "layout/store_reader.h"
#include "storage/file.h"
#include "tools/cli_util.h"
#include "tools/commands.h"
#include "tools/observed_run.h"
#include "tools/session_flags.h"

namespace flashlm::tools {
namespace {

struct CalibrateFlags {
  std::string path, text, out;
  double target = -1;
  int64_t ctx = 0;
  bool ctx_set = false;
  SessionFlags session;
};

int RunCalibrate(const CalibrateFlags& f) {
  constexpr const char* kCmd = "calibrate";
  if (!(f.target >= 0.0 && f.target < 1.0)) {
    return ReportError(kCmd, InvalidArgumentError("--target-sparsity must be in [0, 1)"));
  }
  if (Status st = CheckWindowFlag(f.ctx, f.ctx_set); !st.ok()) return ReportError(kCmd, st);
  engine::SessionOptions options;
  if (Status st = ApplySessionFlags(f.session, &options); !st.ok()) return ReportError(kCmd, st);
  if (Status st = RequireDenseStore(f.path, "thresholds are", "calibration", &options); !st.ok()) {
    return ReportError(kCmd, st);
  }
  auto opened = OpenObservedSession(f.path, f.text, f.ctx, options, f.session.budgeted());
  if (!opened.ok()) return ReportError(kCmd, opened.status());
  const std::unique_ptr<engine::Session>& session = opened->session;
  const std::vector<int32_t>& tokens = opened->tokens;
  engine::Transformer& model = session->model();
  const layout::ModelConfig& config = model.config();
  // The thresholds are only usable where the gate is read apart from [up | down].
  for (uint32_t l = 0; l < config.n_layers; ++l) {
    auto g = session->store()->reader().FfnGeometry(l);
    if (!g.ok() || g->has_gate()) {
      return ReportError(
          kCmd, InvalidArgumentError(f.path + " has no gate+up-down bundles in FFN layer " +
                                     std::to_string(l) +
                                     ": --sparsity threshold reads the gate apart from [up | down] "
                                     "(flashlm repack --bundle gate+up-down)"));
    }
  }
  auto calibrator = engine::GateCalibrator::Create(config.n_layers, config.hidden_dim,
                                                   config.activation == layout::Activation::kRelu);
  if (!calibrator.ok()) return ReportError(kCmd, calibrator.status());

  Result<double> seconds = RunObserved(model, calibrator->get(), tokens);
  if (!seconds.ok()) return ReportError(kCmd, seconds.status());
  auto cuts = (*calibrator)->Thresholds(f.target);
  if (!cuts.ok()) return ReportError(kCmd, cuts.status());

  layout::FfnThresholds t;
  t.store_identity = session->store()->reader().identity();
  t.hidden_dim = config.hidden_dim;
  t.target_sparsity = f.target;
  t.tokens = tokens.size();
  for (const engine::GateCalibrator::Cut& c : *cuts) {
    t.thresholds.push_back(c.threshold);
    t.calibrated_sparsity.push_back(c.sparsity);
  }
  const std::string out =
      f.out.empty() ? f.path + "/" + std::string(layout::kFfnThresholdsFileName) : f.out;
  if (Status st = layout::SaveFfnThresholds(t, out); !st.ok()) return ReportError(kCmd, st);

  std::printf("calibrate: %zu tokens (windows of %u) in %.2f s, target sparsity %g\n",
              tokens.size(), model.max_context(), *seconds, f.target);
  std::printf("layer  threshold |act(gate x)|  skipped on the calibration text\n");
  for (uint32_t l = 0; l < config.n_layers; ++l) {
    std::printf("%5u  %22.6g  %30.4f\n", l, static_cast<double>(t.thresholds[l]),
                t.calibrated_sparsity[l]);
  }
  std::printf("wrote %s (use: --sparsity threshold%s)\n", out.c_str(),
              f.out.empty() ? "" : (" --thresholds " + out).c_str());
  return kExitOk;
}

}  // namespace

CommandRunner RegisterCalibrate(CLI::App& app) {
  auto flags = std::make_shared<CalibrateFlags>();
  CLI::App* cmd = app.add_subcommand(
      "calibrate", "Per-layer FFN thresholds for --sparsity threshold, over a calibration text");
  cmd->footer(
      "Runs the text densely (windows of --ctx tokens, every token once) and sets each layer's\n"
      "cut on |act(gate x)| at the --target-sparsity quantile of its values (CATS,\n"
      "arXiv:2404.08763). With --sparsity threshold a neuron then adds nothing to a token whose\n"
      "|act(gate x)| is at most the cut, and only the other neurons' [up | down] bundles are\n"
      "read (stores with gate+up-down bundles). The file (docs/format.md) is tied to the store\n"
      "and checksummed: a damaged file or one from another store is refused.");
  cmd->add_option("store", flags->path, "Store folder")->required();
  cmd->add_option("--text", flags->text, "Calibration text file")->required();
  cmd->add_option("--target-sparsity", flags->target,
                  "Fraction of neurons to skip per token, in [0, 1)")
      ->required();
  cmd->add_option("--out", flags->out, "Thresholds file (default STORE/ffn_thresholds.json)");
  CLI::Option* ctx = cmd->add_option(
      "--ctx", flags->ctx, "Window length in tokens (default: the model's context, at most 512)");
  AddSessionFlags(cmd, &flags->session);
  return [cmd, flags, ctx] {
    if (!cmd->parsed()) return -1;
    flags->ctx_set = ctx->count() > 0;
    return RunCalibrate(*flags);
  };
}

}  // namespace flashlm::tools
