// flashlm plan MODEL: the design brief's arithmetic for a model, a context, a budget and a device
// — memory by part, the KV cache by the brief's formula, the minimum budget, the residency plan
// the engine would use, and the decode speed that DRAM and flash bandwidth allow. MODEL is a
// store (measured from its catalog), a checkpoint or a named shape (--shape, estimated as repack
// would store it). Everything is computed by engine::PlanModel / engine::Predict; this file
// parses flags and prints.
#include <CLI/CLI.hpp>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <thread>

#include "engine/model_plan.h"
#include "engine/transformer.h"
#include "engine/speed_bounds.h"
#include "layout/dtype.h"
#include "storage/bytes.h"
#include "storage/file.h"
#include "storage/read_probe.h"
#include "tools/cli_util.h"
#include "tools/commands.h"
#include "tools/session_flags.h"

namespace flashlm::tools {
namespace {

constexpr char kCommand[] = "plan";

struct Flags {
  std::string model;
  std::string shape;
  std::string dtype;
  std::string bundle = "gate-up-down";
  std::string align = "auto";
  int64_t ctx = 0;
  int64_t batch = 1;
  std::string kv_dtype = "f32";
  double dram_gbps = 0;
  std::string flash;
  double fire_rate = 1.0;
  bool json = false;
  SessionFlags session;
};

struct KvDtype {
  std::string name;
  double bytes = 4;
};

Result<KvDtype> ParseKvDtype(const std::string& name) {
  if (name == "int8") return KvDtype{name, 1.0};  // the brief's: one byte, no scales
  ASSIGN_OR_RETURN(layout::DType d, layout::ParseDType(name));
  if (d != layout::DType::kF32 && d != layout::DType::kF16 && d != layout::DType::kQ8_0) {
    return InvalidArgumentError("--kv-dtype must be f32, f16, q8_0 or int8");
  }
  return KvDtype{name, engine::KvValueBytes(d)};
}

std::string Gb(double bytes) {  // "3.79 GB (3.53 GiB)"
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.3g GB (%s)", bytes / 1e9,
                FormatBytes(static_cast<uint64_t>(bytes)).c_str());
  return buf;
}

nlohmann::json GroupsJson(const engine::ModelPlan& m) {
  nlohmann::json a = nlohmann::json::array();
  for (const engine::WeightGroup& g : m.groups) {
    a.push_back({{"name", g.name},
                 {"dtype", g.dtype},
                 {"tensors", g.tensors},
                 {"values", g.values},
                 {"bytes", g.bytes}});
  }
  return a;
}

nlohmann::json PlanJson(const engine::ResidencyPlan& p) {
  nlohmann::json parts = nlohmann::json::object();
  for (const auto& [name, bytes] : p.fixed_parts) parts[name] = bytes;
  uint64_t pinned = 0, dense = 0;
  for (uint32_t n : p.pinned_bundles) pinned += n;
  for (uint8_t d : p.dense_pinned) dense += d;
  return {{"budget_bytes", p.budget_bytes},
          {"planned_bytes", p.total_bytes()},
          {"minimum_bytes", p.minimum_bytes},
          {"always_resident_bytes", p.fixed_bytes},
          {"always_resident", parts},
          {"embedding_resident", p.embedding_resident},
          {"classifier_resident", p.classifier_resident},
          {"attention_layers_resident", dense},
          {"attention_resident_bytes", p.pinned_dense_bytes},
          {"attention_stream_bytes", p.dense_stream_bytes},
          {"bundles_resident", pinned},
          {"bundles_resident_bytes", p.pinned_bundle_bytes},
          {"chunk_bundles", p.chunk_bundles},
          {"chunk_buffers", p.chunk_buffers},
          {"chunk_stream_bytes", p.chunk_stream_bytes}};
}

nlohmann::json SpeedJson(const engine::Prediction& p, double dram_gbps) {
  nlohmann::json streams = nlohmann::json::array();
  for (const engine::FlashStream& s : p.cost.streams) {
    streams.push_back({{"what", s.what},
                       {"bytes_per_token", s.bytes},
                       {"read_bytes", s.read_bytes},
                       {"reads_in_flight", s.depth},
                       {"sequential", s.sequential},
                       {"overlapped", s.overlapped},
                       {"mib_per_s", s.mib_per_s}});
  }
  return {{"dram_gbps", dram_gbps},
          {"weight_bytes_per_token", p.cost.weight_bytes},
          {"kv_bytes_per_token", p.cost.kv_bytes},
          {"flash_bytes_per_token", p.cost.flash_bytes},
          {"flash_streams", streams},
          {"dram_tok_s", p.bounds.dram_tok_s},
          {"flash_tok_s", p.bounds.flash_tok_s},
          {"tok_s", p.bounds.tok_s},
          {"serial_tok_s", p.bounds.serial_tok_s},
          {"binding", p.bounds.binding}};
}

int Run(Flags f) {
  const auto usage = [](const std::string& m) {
    return ReportError(kCommand, InvalidArgumentError(m));
  };
  if (f.model.empty() == f.shape.empty()) return usage("give a MODEL or --shape, not both");
  if (f.ctx < 0 || f.ctx > (int64_t{1} << 24)) return usage("--ctx must be in [0, 16777216]");
  if (f.batch < 1 || f.batch > 4096) return usage("--batch must be in [1, 4096]");
  if (!(f.fire_rate > 0 && f.fire_rate <= 1)) return usage("--fire-rate must be in (0, 1]");
  if (!(f.dram_gbps >= 0 && f.dram_gbps < 1e5)) return usage("--dram-gbps must be positive");
  Result<KvDtype> kv = ParseKvDtype(f.kv_dtype);
  if (!kv.ok()) return ReportError(kCommand, kv.status());

  engine::ModelPlanOptions mo;
  mo.shape = f.shape;
  mo.tokenizer_path = f.session.tokenizer;
  if (!f.dtype.empty()) {
    Result<layout::DType> d = layout::ParseDType(f.dtype);
    if (!d.ok()) return ReportError(kCommand, d.status().WithContext("--dtype"));
    mo.repack.dtype = *d;
  }
  if (f.bundle == "gate+up-down") {
    mo.repack.bundle_kind = layout::BundleKind::kGateSeparate;
  } else if (f.bundle != "gate-up-down") {
    return usage("--bundle must be gate-up-down or gate+up-down");
  }
  if (f.align == "auto") {  // as repack would choose for a store written beside the model
    std::filesystem::path parent = std::filesystem::path(f.model).parent_path();
    mo.repack.alignment_bytes =
        storage::DirectIoAlignmentIn(parent.empty() ? "." : parent.string());
  } else {
    Result<uint64_t> align = ParseSize(f.align);
    if (!align.ok()) return ReportError(kCommand, align.status().WithContext("--align"));
    mo.repack.alignment_bytes = *align;
  }
  engine::SessionOptions so;
  if (Status s = ApplySessionFlags(f.session, &so); !s.ok()) return ReportError(kCommand, s);
  if (so.kv.paged) {  // the plan's --kv-dtype is the paged cache's too (int8 plans as q8_0)
    so.kv.dtype = f.kv_dtype == "f16"    ? layout::DType::kF16
                  : f.kv_dtype == "f32" ? layout::DType::kF32
                                        : layout::DType::kQ8_0;
  }
  mo.streaming = so.streaming;
  Result<engine::ModelPlan> planned = engine::PlanModel(f.model, mo);
  if (!planned.ok()) return ReportError(kCommand, planned.status());
  engine::ModelPlan& m = *planned;
  const uint32_t declared_ctx = m.config.max_seq_len;
  const uint64_t ctx = f.ctx ? static_cast<uint64_t>(f.ctx) : declared_ctx;
  if (ctx > m.config.max_seq_len) m.config.max_seq_len = static_cast<uint32_t>(ctx);
  so.transformer.max_context = static_cast<uint32_t>(ctx);
  so.transformer.max_sequences = static_cast<uint32_t>(f.batch);
  const uint32_t threads =
      so.threads ? so.threads : std::max(1u, std::thread::hardware_concurrency());

  std::optional<storage::FlashProfile> profile;
  if (f.flash == "measure") {
    if (m.probe_file.empty()) {
      return usage("--flash measure needs a model file to read (a store or a checkpoint file); "
                   "pass --flash PROFILE.json from `flashlm iobench --json`");
    }
    // A quick profile on the model's own file: 4 KiB to 1 MiB, random and sequential, 1 and 16
    // reads in flight, 0.25 s each (about 4 s; the page cache does not serve O_DIRECT reads).
    Result<storage::FlashProfile> p = storage::FlashProfile::Measure(
        m.probe_file, {4096, 65536, 1 << 20}, {1, 16}, 0.25);
    if (!p.ok()) return ReportError(kCommand, p.status().WithContext("--flash measure"));
    profile = *p;
  } else if (!f.flash.empty()) {
    Result<storage::FlashProfile> p = storage::FlashProfile::Load(f.flash);
    if (!p.ok()) return ReportError(kCommand, p.status().WithContext("--flash"));
    profile = *p;
  }
  const bool dram_measured = f.dram_gbps == 0;
  const double dram = dram_measured ? engine::MeasureDramReadGBps(threads) : f.dram_gbps;

  engine::CostOptions co;
  co.context = ctx;
  co.kv_value_bytes = kv->bytes;
  co.batch = static_cast<uint64_t>(f.batch);
  co.fire_fraction = f.fire_rate;
  engine::SessionOptions unlimited = so;
  unlimited.budget_bytes = 0;
  Result<engine::Prediction> all =
      engine::Predict(m, unlimited, threads, co, dram, profile ? &*profile : nullptr);
  if (!all.ok()) return ReportError(kCommand, all.status());
  Result<engine::Prediction> at = all;
  if (so.budget_bytes != 0) {
    at = engine::Predict(m, so, threads, co, dram, profile ? &*profile : nullptr);
  }
  const engine::ResidencyPlan& full = all->session.plan;
  const double kv_at = engine::KvCacheBytes(m.config, ctx, kv->bytes, co.batch);
  const double kv_brief = 2.0 * 1.0 * double(ctx) * m.config.dim * m.config.n_layers;
  uint64_t recommend_chunk = 0;
  if (profile) {
    const uint64_t good = engine::ReadBytesReaching(*profile, 0.9);
    recommend_chunk = std::max<uint64_t>(1, CeilDiv(good, m.needs.bundles.stride_bytes));
  }

  if (f.json) {
    nlohmann::json j;
    j["model"] = {{"kind", m.kind},
                  {"source", m.source},
                  {"measured", m.measured},
                  {"dim", m.config.dim},
                  {"hidden_dim", m.config.hidden_dim},
                  {"layers", m.config.n_layers},
                  {"heads", m.config.n_heads},
                  {"kv_heads", m.config.n_kv_heads},
                  {"head_dim", m.config.head_dim},
                  {"vocab", m.config.vocab_size},
                  {"declared_context", declared_ctx}};
    j["weights"] = {{"groups", GroupsJson(m)},
                    {"bytes", m.weight_bytes},
                    {"parameters", m.parameters},
                    {"flash_bytes", m.flash_bytes},
                    {"bundle_bytes", m.needs.bundles.bundle_bytes},
                    {"bundle_stride_bytes", m.needs.bundles.stride_bytes}};
    j["kv_cache"] = {{"dtype", kv->name},
                     {"value_bytes", kv->bytes},
                     {"context", ctx},
                     {"batch", f.batch},
                     {"bytes", kv_at},
                     {"brief_int8_bytes", kv_brief},
                     {"engine_bytes", all->session.kv_bytes}};
    j["memory"] = {{"activation_bytes", all->session.activation_bytes},
                   {"tokenizer_bytes", m.tokenizer_bytes},
                   {"everything_resident_bytes", full.total_bytes()},
                   {"minimum_budget_bytes", full.minimum_bytes}};
    j["threads"] = threads;
    j["dram_measured"] = dram_measured;
    if (profile) {
      j["flash_profile"] = {{"source", profile->source}, {"queue_depth_max", profile->depth_max()}};
    }
    j["resident"] = {{"plan", PlanJson(full)}, {"speed", SpeedJson(*all, dram)}};
    if (so.budget_bytes != 0) {
      if (at.ok()) {
        j["budget"] = {{"plan", PlanJson(at->session.plan)}, {"speed", SpeedJson(*at, dram)}};
      } else {
        j["budget"] = {{"error", at.status().message()}};
      }
    }
    if (recommend_chunk) j["recommended"] = {{"chunk_bundles", recommend_chunk}};
    std::printf("%s\n", j.dump(2).c_str());
    if (!at.ok()) return ReportError(kCommand, InvalidArgumentError(at.status().message()));
    return kExitOk;
  }

  const layout::ModelConfig& c = m.config;
  std::printf("model: %s %s (%s)\n", m.kind.c_str(), m.source.c_str(),
              m.measured ? "measured from its catalog"
                         : "estimated as `flashlm repack` would store it");
  std::printf("  dim %u, FFN %u, %u layers, %u heads (%u KV heads of %u), vocab %u, context %u%s\n",
              c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim, c.vocab_size,
              declared_ctx,
              ctx > declared_ctx ? " (planned beyond it: needs RoPE scaling)" : "");
  std::printf("weights: %.3g G parameters\n", m.parameters / 1e9);
  for (const engine::WeightGroup& g : m.groups) {
    std::printf("  %-12s %-10s %5llu tensors %12s\n", g.name.c_str(), g.dtype.c_str(),
                static_cast<unsigned long long>(g.tensors), FormatBytes(g.bytes).c_str());
  }
  std::printf("  total %s; on flash %s with alignment padding\n", Gb(m.weight_bytes).c_str(),
              FormatBytes(m.flash_bytes).c_str());
  std::printf("  the brief's 4-bit figure, parameters x 0.5 bytes: %s\n",
              Gb(m.parameters * 0.5).c_str());
  std::printf("KV cache: 2 x %.4g bytes (%s) x %llu positions x %u (KV heads x head dim) x %u "
              "layers%s = %s\n",
              kv->bytes, kv->name.c_str(), static_cast<unsigned long long>(ctx),
              c.n_kv_heads * c.head_dim, c.n_layers,
              f.batch > 1 ? (" x " + std::to_string(f.batch) + " sequences").c_str() : "",
              Gb(kv_at).c_str());
  std::printf("  the brief's formula (int8, 1 byte, d = dim %u, one sequence): %s\n", c.dim,
              Gb(kv_brief).c_str());
  if (kv->name != "f32") {
    std::printf("  note: the engine holds its KV cache at f32 today (%s); memory and the "
                "residency plan below count that, the speed bounds count %s\n",
                FormatBytes(all->session.kv_bytes).c_str(), kv->name.c_str());
  }
  const uint64_t predictor_bytes =
      engine::Transformer::PredictorBytesNeeded(all->session.transformer);
  std::printf("memory: activations and scratch %s, KV cache (engine) %s, tokenizer %s%s\n",
              FormatBytes(all->session.activation_bytes - predictor_bytes).c_str(),
              FormatBytes(all->session.kv_bytes).c_str(), FormatBytes(m.tokenizer_bytes).c_str(),
              predictor_bytes > 0
                  ? (", FFN predictor " + FormatBytes(predictor_bytes)).c_str()
                  : "");
  std::printf("  everything resident: %s; minimum budget: %s (%llu bytes)\n",
              FormatBytes(full.total_bytes()).c_str(), FormatBytes(full.minimum_bytes).c_str(),
              static_cast<unsigned long long>(full.minimum_bytes));
  char fire_text[32];
  std::snprintf(fire_text, sizeof fire_text, "%.3g", f.fire_rate);
  const std::string fire = fire_text;
  const auto print_speed = [&](const engine::Prediction& p, const char* label) {
    std::printf("speed bounds %s (batch %lld, context %llu, %s%s):\n", label,
                static_cast<long long>(f.batch), static_cast<unsigned long long>(ctx),
                f.fire_rate < 1 ? "FFN fire rate " : "dense FFN",
                f.fire_rate < 1 ? fire.c_str() : "");
    std::printf("  DRAM: %s of weights + %s of KV per step at %.1f GB/s%s -> %.2f tok/s\n",
                Gb(p.cost.weight_bytes).c_str(), Gb(p.cost.kv_bytes).c_str(), dram,
                dram_measured ? " (measured here)" : "", p.bounds.dram_tok_s);
    if (p.cost.streams.empty()) {
      std::printf("  flash: nothing streams\n");
    } else {
      for (const engine::FlashStream& s : p.cost.streams) {
        std::printf("  flash: %-15s %10s per step in %s reads of %s, %.0f in flight%s",
                    s.what.c_str(), FormatBytes(static_cast<uint64_t>(s.bytes)).c_str(),
                    s.sequential ? "sequential" : "scattered",
                    FormatBytes(static_cast<uint64_t>(s.read_bytes)).c_str(), s.depth,
                    s.overlapped ? "" : ", not read ahead");
        if (profile) std::printf(" at %.0f MiB/s", s.mib_per_s);
        std::printf("\n");
      }
      if (profile) {
        std::printf("  flash-bound: %.2f tok/s (profile %s)\n", p.bounds.flash_tok_s,
                    profile->source.c_str());
      } else {
        std::printf("  flash-bound: unknown (pass --flash PROFILE.json from `flashlm iobench "
                    "--json`)\n");
      }
    }
    std::printf("  bound: %.2f tok/s, %s binds%s\n", p.bounds.tok_s, p.bounds.binding.c_str(),
                profile && !p.cost.streams.empty()
                    ? (" (reads not overlapped with compute: " +
                       std::to_string(p.bounds.serial_tok_s).substr(0, 6) + " tok/s)")
                          .c_str()
                    : "");
  };
  print_speed(*all, "with everything resident");
  if (so.budget_bytes != 0) {
    if (!at.ok()) {
      return ReportError(kCommand, InvalidArgumentError(at.status().message()));
    }
    std::printf("%s", at->session.plan.Describe().c_str());
    print_speed(*at, ("at --mem-budget " + FormatBytes(so.budget_bytes)).c_str());
  }
  std::printf("recommended: ");
  if (so.budget_bytes != 0 && full.total_bytes() <= so.budget_bytes) {
    std::printf("everything fits in the budget (%s): nothing streams",
                FormatBytes(full.total_bytes()).c_str());
  } else if (so.budget_bytes == 0) {
    std::printf("%s keeps everything resident; below that, --mem-budget %s or more",
                FormatBytes(full.total_bytes()).c_str(), FormatBytes(full.minimum_bytes).c_str());
  } else {
    std::printf("--mem-budget %s or more (%s keeps everything resident)",
                FormatBytes(full.minimum_bytes).c_str(), FormatBytes(full.total_bytes()).c_str());
  }
  if (recommend_chunk && so.budget_bytes != 0 && at.ok() && at->session.plan.streams()) {
    std::printf("; --chunk-bundles %llu (reads of %s reach 90%% of the profile's best bandwidth)",
                static_cast<unsigned long long>(recommend_chunk),
                FormatBytes(recommend_chunk * m.needs.bundles.stride_bytes).c_str());
  }
  std::printf("\n");
  return kExitOk;
}

}  // namespace

CommandRunner RegisterPlan(CLI::App& app) {
  auto flags = std::make_shared<Flags>();
  CLI::App* cmd = app.add_subcommand(
      "plan", "Memory and speed arithmetic for a model, a context, a budget and a device");
  cmd->add_option("MODEL", flags->model, "Store folder, GGUF, HF folder or llama2.c .bin");
  cmd->add_option("--shape", flags->shape, "A named shape instead: tiny, 15m, 110m, 1b, 7b");
  cmd->add_option("--dtype", flags->dtype,
                  "Matrices' dtype as repack would store them (f32, f16, q8_0, q4_0)");
  cmd->add_option("--bundle", flags->bundle, "Bundle kind as repack would store them")
      ->capture_default_str();
  cmd->add_option("--align", flags->align,
                  "Extent alignment as repack would store them (auto: repack's default, the "
                  "direct-I/O alignment of the model's folder)")
      ->capture_default_str();
  cmd->add_option("--ctx", flags->ctx, "Context in tokens (default: the model's)");
  cmd->add_option("--batch", flags->batch, "Sequences decoded together")->capture_default_str();
  cmd->add_option("--kv-dtype", flags->kv_dtype, "KV cache dtype: f32, f16, q8_0, int8")
      ->capture_default_str();
  cmd->add_option("--dram-gbps", flags->dram_gbps,
                  "Usable DRAM bandwidth in GB/s (default: measured here)");
  cmd->add_option("--flash", flags->flash,
                  "Flash profile: `flashlm iobench --json` output, or `measure` (a quick probe of "
                  "the model's file)");
  cmd->add_option("--fire-rate", flags->fire_rate,
                  "Fraction of FFN neurons that fire per token (1 = dense)")
      ->capture_default_str();
  cmd->add_flag("--json", flags->json, "Print the plan as JSON (docs/format.md)");
  AddSessionFlags(cmd, &flags->session);
  return [cmd, flags] {
    if (!cmd->parsed()) return -1;
    return Run(*flags);
  };
}

}  // namespace flashlm::tools
