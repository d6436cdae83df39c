// flashlm train-predictor STORE --text FILE --rank R: the low-rank FFN predictors of
// `--sparsity predictor` (LLM in a flash), trained by flashlm itself.
//
// The text is tokenized (BOS first) and run densely in consecutive windows of --ctx tokens, as
// `calibrate` does; engine/predictor_trainer.h keeps each layer's FFN inputs and which neurons
// fired (up to --sample-mib of them), trains one predictor per layer on all but the last
// --heldout share of the tokens and measures recall and precision on that share. The file goes
// beside the store (STORE/ffn_predictor.bin, or --out), tied to the store's identity and
// checksummed (layout/ffn_predictor.h). A store runs under --mem-budget like generate does.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>

#include "engine/activation_counter.h"
#include "engine/generator.h"
#include "engine/predictor_trainer.h"
#include "engine/session.h"
#include "layout/ffn_predictor.h"
#include "layout/store_reader.h"
#include "storage/file.h"
#include "tools/cli_util.h"
#include "tools/commands.h"
#include "tools/observed_run.h"
#include "tools/session_flags.h"

namespace flashlm::tools {
namespace {

constexpr int64_t kSampleMibMax = int64_t{1} << 16;  // 64 GiB: a bound, not a suggestion

struct TrainPredictorFlags {
  std::string path, text, out;
  int64_t rank = 0, epochs = 10, seed = 1, sample_mib = 256, ctx = 0;
  double fire_fraction = 0.1, lr = 1e-3, heldout = 0.2;
  bool ctx_set = false;
  SessionFlags session;
};

int RunTrainPredictor(const TrainPredictorFlags& f) {
  constexpr const char* kCmd = "train-predictor";
  if (f.rank < 1 || f.rank > layout::kFfnPredictorRankMax) {
    return ReportError(kCmd, InvalidArgumentError("--rank must be in [1, " +
                                                  std::to_string(layout::kFfnPredictorRankMax) +
                                                  "] (and at most the model's dim)"));
  }
  if (f.epochs < 1 || f.epochs > 10000) {
    return ReportError(kCmd, InvalidArgumentError("--epochs must be in [1, 10000]"));
  }
  if (f.sample_mib < 1 || f.sample_mib > kSampleMibMax) {
    return ReportError(kCmd, InvalidArgumentError("--sample-mib must be in [1, " +
                                                  std::to_string(kSampleMibMax) + "]"));
  }
  if (!(f.fire_fraction > 0 && f.fire_fraction < 1)) {
    return ReportError(kCmd, InvalidArgumentError("--fire-fraction must be in (0, 1)"));
  }
  if (!(f.heldout > 0 && f.heldout < 1)) {
    return ReportError(kCmd, InvalidArgumentError("--heldout must be in (0, 1)"));
  }
  if (!(f.lr > 0 && f.lr < 10))
    return ReportError(kCmd, InvalidArgumentError("--lr must be in (0, 10)"));
  if (f.seed < 0) return ReportError(kCmd, InvalidArgumentError("--seed must be >= 0"));
  if (Status st = CheckWindowFlag(f.ctx, f.ctx_set); !st.ok()) return ReportError(kCmd, st);
  engine::SessionOptions options;
  if (Status st = ApplySessionFlags(f.session, &options); !st.ok()) return ReportError(kCmd, st);
  if (Status st = RequireDenseStore(f.path, "a predictor is", "training", &options); !st.ok()) {
    return ReportError(kCmd, st);
  }
  auto opened = OpenObservedSession(f.path, f.text, f.ctx, options, f.session.budgeted());
  if (!opened.ok()) return ReportError(kCmd, opened.status());
  const std::unique_ptr<engine::Session>& session = opened->session;
  std::vector<int32_t>& tokens = opened->tokens;
  engine::Transformer& model = session->model();
  const layout::ModelConfig& config = model.config();
  if (f.rank > config.dim) {
    return ReportError(kCmd, InvalidArgumentError("--rank must be at most the model's dim (" +
                                                  std::to_string(config.dim) + ")"));
  }
  const bool relu = config.activation == layout::Activation::kRelu;
  const uint64_t token_bytes =
      engine::PredictorTrainer::TokenBytes(config.n_layers, config.dim, config.hidden_dim, relu);
  const uint64_t tokens_max =
      std::max<uint64_t>(1, (static_cast<uint64_t>(f.sample_mib) << 20) / token_bytes);
  auto trainer = engine::PredictorTrainer::Create(config.n_layers, config.dim, config.hidden_dim,
                                                  relu, tokens_max);
  if (!trainer.ok()) return ReportError(kCmd, trainer.status());

  if (tokens.size() > tokens_max) tokens.resize(tokens_max);  // the rest would not be kept
  Result<double> collect_s = RunObserved(model, trainer->get(), tokens);
  if (!collect_s.ok()) return ReportError(kCmd, collect_s.status());

  engine::PredictorTrainOptions to;
  to.rank = static_cast<uint32_t>(f.rank);
  to.fire_fraction = static_cast<float>(f.fire_fraction);
  to.epochs = static_cast<uint32_t>(f.epochs);
  to.learning_rate = static_cast<float>(f.lr);
  to.heldout = static_cast<float>(f.heldout);
  to.seed = static_cast<uint64_t>(f.seed);
  engine::PredictorTrainer::Report report;
  const auto start = std::chrono::steady_clock::now();
  Result<layout::FfnPredictor> p = (*trainer)->Train(to, session->pool(), &report);
  if (!p.ok()) return ReportError(kCmd, p.status());
  const double train_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  p->store_identity = session->store()->reader().identity();
  const std::string out =
      f.out.empty() ? f.path + "/" + std::string(layout::kFfnPredictorFileName) : f.out;
  if (Status st = layout::SaveFfnPredictor(*p, out); !st.ok()) return ReportError(kCmd, st);

  std::printf(
      "train-predictor: %llu tokens (windows of %u) collected in %.2f s; rank %lld, "
      "%s; %llu training, %llu held out, %lld epochs in %.2f s\n",
      static_cast<unsigned long long>((*trainer)->tokens()), model.max_context(), *collect_s,
      static_cast<long long>(f.rank),
      relu ? "fires = gate x > 0"
           : ("fires = |h| above the layer's " + std::to_string(f.fire_fraction) + " top share")
                 .c_str(),
      static_cast<unsigned long long>(report.train_tokens),
      static_cast<unsigned long long>(report.heldout_tokens), static_cast<long long>(f.epochs),
      train_s);
  std::printf("held-out recall / precision / share predicted, by cut on the probability:\n");
  std::printf("layer  loss    ");
  for (float c : engine::kPredictorReportCuts) std::printf("  cut %-19.2f", c);
  std::printf("\n");
  for (size_t l = 0; l < report.layers.size(); ++l) {
    std::printf("%5zu  %.4f", l, report.train_loss[l]);
    for (const engine::PredictorQuality& q : report.layers[l]) {
      std::printf("  %.3f / %.3f / %.3f", q.recall, q.precision, q.predicted_fraction);
    }
    std::printf("\n");
  }
  const uint64_t bytes = p->layers.size() * p->LayerValues() * sizeof(float);
  const uint64_t held = p->layers.size() * p->LayerBytes(true);
  std::printf(
      "wrote %s (%.2f MiB of f32 predictor weights, held in DRAM as f16: %.2f MiB; use: "
      "--sparsity predictor%s)\n",
      out.c_str(), bytes / 1048576.0, held / 1048576.0,
      f.out.empty() ? "" : (" --predictor " + out).c_str());
  return kExitOk;
}

}  // namespace

CommandRunner RegisterTrainPredictor(CLI::App& app) {
  auto flags = std::make_shared<TrainPredictorFlags>();
  CLI::App* cmd = app.add_subcommand(
      "train-predictor", "Low-rank FFN predictors for --sparsity predictor, over a text");
  cmd->footer(
      "Runs the text densely (windows of --ctx tokens), keeps each layer's FFN inputs and which\n"
      "neurons fired (ReLU: gate x > 0; SiLU: |act(gate x) * (up x)| in the layer's top\n"
      "--fire-fraction), and trains per layer logits = B (A x) + bias (rank --rank, binary\n"
      "cross-entropy, Adam) on all but the last --heldout share of the tokens, on which it\n"
      "reports recall and precision. The file (docs/format.md) is tied to the store and\n"
      "checksummed: a damaged file or one from another store is refused.");
  cmd->add_option("store", flags->path, "Store folder")->required();
  cmd->add_option("--text", flags->text, "Training text file")->required();
  cmd->add_option("--rank", flags->rank, "Rank of each layer's predictor (1 .. dim)")->required();
  cmd->add_option("--fire-fraction", flags->fire_fraction,
                  "SiLU models: share of (token, neuron) pairs labelled as firing, in (0, 1)")
      ->capture_default_str();
  cmd->add_option("--epochs", flags->epochs, "Passes over the training tokens")
      ->capture_default_str();
  cmd->add_option("--lr", flags->lr, "Adam's learning rate")->capture_default_str();
  cmd->add_option("--heldout", flags->heldout, "Share of the tokens (the last ones) held out")
      ->capture_default_str();
  cmd->add_option("--seed", flags->seed, "Seed of the initial weights and the shuffles")
      ->capture_default_str();
  cmd->add_option("--sample-mib", flags->sample_mib,
                  "At most this many MiB of collected activations (tokens beyond are not run)")
      ->capture_default_str();
  cmd->add_option("--out", flags->out, "Predictor file (default STORE/ffn_predictor.bin)");
  CLI::Option* ctx = cmd->add_option(
      "--ctx", flags->ctx, "Window length in tokens (default: the model's context, at most 512)");
  AddSessionFlags(cmd, &flags->session);
  return [cmd, flags, ctx] {
    if (!cmd->parsed()) return -1;
    flags->ctx_set = ctx->count() > 0;
    return RunTrainPredictor(*flags);
  };
}

}  // namespace flashlm::tools
