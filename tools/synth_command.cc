// `flashlm synth`: writes a random-weight LLaMA-shaped GGUF (see layout/synth.h).
#include <CLI/CLI.hpp>
#include <cstdio>
#include <optional>
#include <string>

#include "layout/synth.h"
#include "tools/cli_util.h"
#include "tools/commands.h"

namespace flashlm::tools {

CommandRunner RegisterSynth(CLI::App& app) {
  struct Flags {
    std::string shape, dtype = "f32", out, vocab_from, activation = "silu";
    std::optional<uint32_t> dim, hidden, layers, heads, kv_heads, vocab, context;
    uint64_t seed = 1;
    float fire_rate = 0, hot_skew = 1.0f;
  };
  auto f = std::make_shared<Flags>();
  CLI::App* cmd = app.add_subcommand(
      "synth", "Write a random-weight LLaMA-shaped GGUF that llama.cpp loads, for benchmarks");
  cmd->add_option("--shape", f->shape, "tiny, 15m, 110m, 1b or 7b (then override with the flags)");
  cmd->add_option("--dim", f->dim, "Embedding width");
  cmd->add_option("--hidden", f->hidden, "FFN neurons per layer");
  cmd->add_option("--layers", f->layers, "Number of layers");
  cmd->add_option("--heads", f->heads, "Attention heads");
  cmd->add_option("--kv-heads", f->kv_heads, "KV heads (default: --heads)");
  cmd->add_option("--vocab", f->vocab, "Vocabulary size (generated vocab)");
  cmd->add_option("--context", f->context, "Declared context length");
  cmd->add_option("--dtype", f->dtype,
                  "f32, f16, bf16, q8_0, q4_0, q4_K, q6_K, or q4_K_M (llama.cpp's mix: output and "
                  "ffn_down q6_K, the rest q4_K); norms stay f32");
  cmd->add_option("--seed", f->seed, "Random seed");
  cmd->add_option("--out", f->out, "Output .gguf path")->required();
  cmd->add_option("--vocab-from", f->vocab_from, "Copy tokenizer.* metadata from this GGUF");
  cmd->add_option("--activation", f->activation, "silu or relu");
  cmd->add_option("--fire-rate", f->fire_rate,
                  "relu: fraction of FFN neurons that fire per token (0 = unshaped)");
  cmd->add_option("--hot-skew", f->hot_skew, "relu: Zipf exponent of the per-neuron firing rate");
  return [cmd, f] {
    if (!cmd->parsed()) return -1;
    layout::SynthOptions o;
    if (!f->shape.empty()) {
      Result<layout::ModelConfig> c = layout::SynthShape(f->shape);
      if (!c.ok()) return ReportError("synth", c.status());
      o.config = *c;
    } else if (!f->dim || !f->hidden || !f->layers || !f->heads) {
      return ReportError(
          "synth", InvalidArgumentError("give --shape, or all of --dim --hidden --layers --heads"));
    } else {
      o.config.vocab_size = 32000;
      o.config.max_seq_len = 2048;
    }
    layout::ModelConfig& c = o.config;
    if (f->dim) c.dim = *f->dim;
    if (f->hidden) c.hidden_dim = *f->hidden;
    if (f->layers) c.n_layers = *f->layers;
    if (f->heads) c.n_heads = *f->heads;
    if (f->kv_heads) {
      c.n_kv_heads = *f->kv_heads;
    } else if (f->heads) {
      c.n_kv_heads = *f->heads;
    }
    if (f->vocab) c.vocab_size = *f->vocab;
    if (f->context) c.max_seq_len = *f->context;
    if (c.n_heads == 0 || c.dim % c.n_heads != 0) {
      return ReportError("synth", InvalidArgumentError("--dim must be a multiple of --heads"));
    }
    c.head_dim = c.dim / c.n_heads;
    if (f->activation == "relu") {
      c.activation = layout::Activation::kRelu;
    } else if (f->activation != "silu") {
      return ReportError("synth", InvalidArgumentError("--activation must be silu or relu"));
    }
    if (f->dtype == "q4_K_M") {
      o.q4_k_m = true;
    } else {
      Result<layout::DType> dt = layout::ParseDType(f->dtype);
      if (!dt.ok()) return ReportError("synth", dt.status());
      o.dtype = *dt;
    }
    o.seed = f->seed;
    o.out_path = f->out;
    o.vocab_from = f->vocab_from;
    o.fire_rate = f->fire_rate;
    o.hot_skew = f->hot_skew;
    int last_tenth = -1;
    o.progress = [&last_tenth](uint64_t done, uint64_t total, std::string_view name) {
      const int tenth = total ? static_cast<int>(done * 10 / total) : 10;
      if (tenth == last_tenth) return;
      last_tenth = tenth;
      std::fprintf(stderr, "synth: %3d%%  %s / %s  (%.*s)\n", tenth * 10, FormatBytes(done).c_str(),
                   FormatBytes(total).c_str(), static_cast<int>(name.size()), name.data());
    };
    std::fprintf(stderr,
                 "synth: dim %u hidden %u layers %u heads %u kv_heads %u vocab %s dtype %s -> %s\n",
                 c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads,
                 f->vocab_from.empty() ? std::to_string(c.vocab_size).c_str() : "(from file)",
                 f->dtype.c_str(), f->out.c_str());
    Status s = layout::SynthesizeGguf(o);
    if (!s.ok()) return ReportError("synth", s);
    std::printf("%s\n", f->out.c_str());
    return kExitOk;
  };
}

}  // namespace flashlm::tools
