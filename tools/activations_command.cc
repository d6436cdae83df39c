// flashlm activations STORE --text FILE --out STATS.json: per-layer, per-neuron firing
// frequencies of the FFN over a calibration text, in the JSON `repack --activations` reads.
//
// The text is tokenized with the model's tokenizer (BOS first) and run in consecutive windows of
// --ctx tokens, each from position 0; every token is evaluated once. A neuron fires on a token
// by the rules of engine/activation_counter.h: h != 0 for ReLU models, the top --top-fraction of
// |h| for SiLU models, or |h| > --threshold when given. A store runs under --mem-budget like
// generate does (the bundle FFN reports every neuron's h), so calibration works out of core.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>

#include "engine/activation_counter.h"
#include "engine/generator.h"
#include "engine/session.h"
#include "layout/bundle_layout.h"
#include "storage/file.h"
#include "tools/cli_util.h"
#include "tools/commands.h"
#include "tools/observed_run.h"
#include "tools/session_flags.h"

namespace flashlm::tools {
namespace {

struct ActivationsFlags {
  std::string path, text, out;
  int64_t ctx = 0;  // 0 (not given): the model's context, at most 512
  bool ctx_set = false;
  SessionFlags session;
  double top_fraction = 0.2;
  double threshold = 0.0;
  bool top_fraction_set = false;
  bool threshold_set = false;
};

std::string RuleName(const engine::FiringOptions& o, uint32_t top_k, uint32_t hidden) {
  char buf[128];
  switch (o.rule) {
    case engine::FiringRule::kNonZero:
      return "h != 0 (ReLU)";
    case engine::FiringRule::kTopFraction:
      std::snprintf(buf, sizeof buf, "top %g of |h| per token (%u of %u neurons)", o.top_fraction,
                    top_k, hidden);
      return buf;
    case engine::FiringRule::kThreshold:
      std::snprintf(buf, sizeof buf, "|h| > %g", static_cast<double>(o.threshold));
      return buf;
  }
  return "?";
}

int RunActivations(const ActivationsFlags& f) {
  constexpr const char* kCmd = "activations";
  if (Status st = CheckWindowFlag(f.ctx, f.ctx_set); !st.ok()) return ReportError(kCmd, st);
  engine::SessionOptions options;
  if (Status st = ApplySessionFlags(f.session, &options); !st.ok()) return ReportError(kCmd, st);
  if (f.top_fraction_set && f.threshold_set) {
    return ReportError(kCmd, InvalidArgumentError("give --top-fraction or --threshold, not both"));
  }
  if (f.top_fraction_set && !(f.top_fraction > 0.0 && f.top_fraction <= 1.0)) {
    return ReportError(kCmd, InvalidArgumentError("--top-fraction must be in (0, 1]"));
  }
  if (f.threshold_set && !(std::isfinite(f.threshold) && f.threshold >= 0.0)) {
    return ReportError(kCmd, InvalidArgumentError("--threshold must be a number >= 0"));
  }
  const std::filesystem::path out_dir = std::filesystem::path(f.out).parent_path();
  if (!out_dir.empty() && !std::filesystem::is_directory(out_dir)) {
    return ReportError(
        kCmd, InvalidArgumentError("cannot write " + f.out + ": no folder " + out_dir.string()));
  }
  auto opened = OpenObservedSession(f.path, f.text, f.ctx, options, f.session.budgeted());
  if (!opened.ok()) return ReportError(kCmd, opened.status());
  const std::unique_ptr<engine::Session>& session = opened->session;
  const std::vector<int32_t>& tokens = opened->tokens;
  engine::Transformer& model = session->model();
  const layout::ModelConfig& config = model.config();

  engine::FiringOptions firing = engine::DefaultFiringOptions(config);
  if (f.top_fraction_set) {
    firing.rule = engine::FiringRule::kTopFraction;
    firing.top_fraction = f.top_fraction;
  } else if (f.threshold_set) {
    firing.rule = engine::FiringRule::kThreshold;
    firing.threshold = static_cast<float>(f.threshold);
  }
  auto counter = engine::ActivationCounter::Create(config.n_layers, config.hidden_dim, firing);
  if (!counter.ok()) return ReportError(kCmd, counter.status());

  const uint32_t window = model.max_context();
  Result<double> seconds = RunObserved(model, counter->get(), tokens);
  if (!seconds.ok()) return ReportError(kCmd, seconds.status());
  auto stats = (*counter)->Frequencies();
  if (!stats.ok()) return ReportError(kCmd, stats.status());
  if (Status s = layout::SaveActivationStats(*stats, f.out); !s.ok()) return ReportError(kCmd, s);

  std::printf("activations: %zu tokens (windows of %lld) in %.2f s, %u layers x %u neurons\n",
              tokens.size(), static_cast<long long>(window), *seconds, config.n_layers,
              config.hidden_dim);
  std::printf("fires when: %s\n", RuleName(firing, (*counter)->top_k(), config.hidden_dim).c_str());
  // Locality: how much of all firing the hottest fifth of the neurons accounts for (1.0 = all
  // of it; 0.2 = none beyond uniform).
  std::printf("layer  mean freq  neurons with freq >= 0.5  hottest 20%% share of firing\n");
  for (uint32_t l = 0; l < config.n_layers; ++l) {
    std::vector<float> fr = stats->layers[l];
    std::sort(fr.begin(), fr.end(), std::greater<float>());
    double sum = 0, top = 0;
    uint32_t hot = 0;
    const size_t top_n = std::max<size_t>(1, (fr.size() + 2) / 5);
    for (size_t i = 0; i < fr.size(); ++i) {
      sum += fr[i];
      hot += fr[i] >= 0.5f;
      if (i < top_n) top += fr[i];
    }
    std::printf("%5u  %9.4f  %14.1f%% (%6u)  %28.3f\n", l, sum / fr.size(), 100.0 * hot / fr.size(),
                hot, sum > 0 ? top / sum : 0.0);
  }
  std::printf("wrote %s\n", f.out.c_str());
  return kExitOk;
}

}  // namespace

CommandRunner RegisterActivations(CLI::App& app) {
  auto flags = std::make_shared<ActivationsFlags>();
  CLI::App* cmd = app.add_subcommand(
      "activations",
      "Per-neuron FFN firing frequencies over a calibration text (input of repack --activations)");
  cmd->footer(
      "A neuron fires on a token when, with h = act(gate x) * (up x) of that token and layer:\n"
      "  ReLU models: h != 0, i.e. the ReLU output is positive (PowerInfer's activated neuron);\n"
      "  SiLU models: |h| is among the top --top-fraction (default 0.2, rounded to whole neurons,\n"
      "    at least 1) of that token's |h| in that layer (our choice; h is almost never 0);\n"
      "  --threshold T instead: |h| > T (a magnitude cut-off, as in CATS, arXiv:2404.08763).\n"
      "Frequency = tokens the neuron fired on / tokens evaluated. The text is run in windows of\n"
      "--ctx tokens, every token once. A store runs under --mem-budget as generate does.\n"
      "Output: the JSON of docs/format.md, 'Activation statistics file'.");
  cmd->add_option("store", flags->path,
                  "Store folder or checkpoint (GGUF, HF folder, llama2.c .bin with --tokenizer)")
      ->required();
  cmd->add_option("--text", flags->text, "Calibration text file")->required();
  cmd->add_option("--out", flags->out, "Statistics JSON to write")->required();
  CLI::Option* ctx = cmd->add_option(
      "--ctx", flags->ctx, "Window length in tokens (default: the model's context, at most 512)");
  AddSessionFlags(cmd, &flags->session);
  CLI::Option* top = cmd->add_option("--top-fraction", flags->top_fraction,
                                     "Fraction of neurons that fire per token, by |h| (SiLU "
                                     "default 0.2; also applies to ReLU models when given)");
  CLI::Option* thr = cmd->add_option("--threshold", flags->threshold,
                                     "Fire when |h| > T (instead of top-fraction)");
  return [cmd, flags, top, thr, ctx] {
    if (!cmd->parsed()) return -1;
    flags->ctx_set = ctx->count() > 0;
    flags->top_fraction_set = top->count() > 0;
    flags->threshold_set = thr->count() > 0;
    return RunActivations(*flags);
  };
}

}  // namespace flashlm::tools
