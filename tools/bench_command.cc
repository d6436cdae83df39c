// flashlm bench STORE...: real decode (and prefill) across a sweep of settings, one session per
// point, the page cache dropped before each when run as root. Records tok/s, bytes and reads per
// token, mean read size, effective bandwidth, FFN hit rate and the I/O share of decode time, and
// beside each point what `flashlm plan` predicts for it (engine::Predict), with the error. The
// plot is the mission's picture: effective bandwidth reached in decode against the mean read
// size, over the raw read curve of the same disk (an iobench profile, --flash).
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "engine/generator.h"
#include "engine/model_plan.h"
#include "engine/sampler.h"
#include "engine/session.h"
#include "storage/bytes.h"
#include "storage/check.h"
#include "storage/file.h"
#include "storage/read_probe.h"
#include "tools/cli_util.h"
#include "tools/commands.h"
#include "tools/session_flags.h"

namespace flashlm::tools {
namespace {

constexpr char kCommand[] = "bench";

struct Flags {
  std::vector<std::string> stores;
  std::string budgets = "all";
  std::string chunk_bundles = "256";
  std::string coalesce = "on";
  std::string pipeline = "on";
  std::string threads = "0";
  std::string stream_buffers = "4";
  std::string sparsity = "auto";
  int64_t tokens = 32;
  int64_t prompt_tokens = 16;
  int64_t repeat = 3;
  std::string flash;
  double dram_gbps = 0;
  bool no_drop_caches = false;
  std::string csv, json, plot;
};

// One point of the sweep and what it measured (medians over the repeats).
struct Point {
  std::string store;
  std::string budget_spec;
  uint64_t budget = 0;
  uint32_t chunk_bundles = 0, stream_buffers = 0, threads = 0;
  bool coalesce = true, pipeline = true;
  std::string sparsity = "auto";  // asked for; `fire` is what was computed
  double fire = 1;                // FFN neurons computed / neurons (decode, median)
  double decode_tok_s = 0, prefill_tok_s = 0;
  double bytes_per_token = 0, reads_per_token = 0, mean_read_bytes = 0;
  double effective_mib_s = 0, io_share = 0, hit_rate = 0;
  double delivered_mib_s = 0;  // bytes read per token x decode tok/s: what the disk gave over wall time
  double planned_bytes = 0;
  double predicted_tok_s = 0, predicted_flash_tok_s = 0, predicted_dram_tok_s = 0;
  std::string binding;
  double dram_bytes = 0;     // per token (weights touched + KV), from the plan
  double flash_seconds = 0;  // per token at the profile's bandwidths (0: none or no profile)
  double flash_serial_seconds = 0;  // of which cannot overlap compute
  double dram_gbps = 0;      // the DRAM rate the prediction used
  std::string dram_from;     // "measured read bandwidth", "resident decode", "--dram-gbps"
  bool cache_dropped = false;
  bool skipped = false;  // the budget is below the minimum
};

Result<std::vector<std::string>> Split(const std::string& text, const char* flag) {
  std::vector<std::string> out;
  std::stringstream ss(text);
  for (std::string item; std::getline(ss, item, ',');) {
    if (item.empty()) return InvalidArgumentError(std::string(flag) + ": empty item in '" + text + "'");
    out.push_back(item);
  }
  if (out.empty()) return InvalidArgumentError(std::string(flag) + " is empty");
  return out;
}

// One --sparsity item: auto, dense, relu, threshold, predictor (the default cut) or
// predictor:CUT (CUT in [0, 1]). Errors: InvalidArgument naming the item.
Status ParseSparsity(const std::string& item, engine::TransformerOptions* t) {
  if (item == "auto") {
    t->sparsity = engine::FfnSparsity::kAuto;
  } else if (item == "dense") {
    t->sparsity = engine::FfnSparsity::kDense;
  } else if (item == "relu") {
    t->sparsity = engine::FfnSparsity::kRelu;
  } else if (item == "threshold") {
    t->sparsity = engine::FfnSparsity::kThreshold;
  } else if (item == "predictor") {
    t->sparsity = engine::FfnSparsity::kPredictor;
  } else if (item.rfind("predictor:", 0) == 0) {
    const std::string cut = item.substr(10);
    char* end = nullptr;
    const double v = std::strtod(cut.c_str(), &end);
    if (cut.empty() || end != cut.c_str() + cut.size() || !(v >= 0 && v <= 1)) {
      return InvalidArgumentError("--sparsity: the cut in '" + item + "' must be in [0, 1]");
    }
    t->sparsity = engine::FfnSparsity::kPredictor;
    t->predictor_cut = static_cast<float>(v);
  } else {
    return InvalidArgumentError("--sparsity: auto, dense, relu, threshold, predictor or "
                                "predictor:CUT, not '" + item + "'");
  }
  return Status::Ok();
}

Result<std::vector<uint32_t>> Numbers(const std::string& text, const char* flag, uint32_t lo,
                                      uint32_t hi) {
  ASSIGN_OR_RETURN(std::vector<std::string> items, Split(text, flag));
  std::vector<uint32_t> out;
  for (const std::string& s : items) {
    char* end = nullptr;
    const unsigned long long v = std::strtoull(s.c_str(), &end, 10);
    if (end == s.c_str() || *end != '\0' || v < lo || v > hi) {
      return InvalidArgumentError(std::string(flag) + ": '" + s + "' is not in [" +
                                  std::to_string(lo) + ", " + std::to_string(hi) + "]");
    }
    out.push_back(static_cast<uint32_t>(v));
  }
  return out;
}

Result<std::vector<bool>> Switches(const std::string& text, const char* flag) {
  ASSIGN_OR_RETURN(std::vector<std::string> items, Split(text, flag));
  std::vector<bool> out;
  for (const std::string& s : items) {
    if (s != "on" && s != "off") return InvalidArgumentError(std::string(flag) + ": on or off");
    out.push_back(s == "on");
  }
  return out;
}


struct Measured {
  double decode_tok_s = 0, prefill_tok_s = 0, bytes_per_token = 0, reads_per_token = 0;
  double mean_read_bytes = 0, effective_mib_s = 0, io_share = 0, hit_rate = 0, planned = 0;
  double fire = 1;
};

// One run: open, prefill `prompt`, then `tokens` greedy decode steps with the counters reset.
Result<Measured> RunOnce(const std::string& store, const engine::SessionOptions& so,
                         const std::vector<int32_t>& prompt, uint32_t tokens) {
  ASSIGN_OR_RETURN(std::unique_ptr<engine::Session> session, engine::Session::Open(store, so));
  engine::SamplerOptions greedy;
  greedy.temperature = 0;
  ASSIGN_OR_RETURN(std::unique_ptr<engine::Sampler> sampler,
                   engine::Sampler::Create(session->config().vocab_size, greedy));
  engine::Generator gen(session->model(), session->tokenizer());
  gen.set_ignore_eos(true);
  engine::GenerateOptions go;
  go.max_new_tokens = tokens + 1;
  go.ignore_eos = true;
  const auto t0 = std::chrono::steady_clock::now();
  RETURN_IF_ERROR(gen.Start(prompt, go, *sampler));
  const auto t1 = std::chrono::steady_clock::now();
  session->ResetStats();
  uint32_t steps = 0;
  while (steps < tokens) {
    ASSIGN_OR_RETURN(engine::Generator::Step step, gen.Next());
    if (step.done) break;
    ++steps;
  }
  const auto t2 = std::chrono::steady_clock::now();
  const double prefill_s = std::chrono::duration<double>(t1 - t0).count();
  const double decode_s = std::chrono::duration<double>(t2 - t1).count();
  const engine::EngineStats st = session->stats();
  const engine::IoReport io = engine::IoReport::Make(st, decode_s * 1e3);
  Measured m;
  const double passes = st.passes ? double(st.passes) : 1.0;
  m.decode_tok_s = steps / decode_s;
  m.prefill_tok_s = prompt.size() / prefill_s;
  m.bytes_per_token = double(st.bytes_read) / passes;
  m.reads_per_token = double(st.reads) / passes;
  m.mean_read_bytes = io.mean_read_bytes;
  m.effective_mib_s = io.effective_mib_per_s;
  m.io_share = decode_s > 0 ? io.io_wait_ms / (decode_s * 1e3) : 0;
  m.hit_rate = st.hit_rate();
  m.planned = double(session->planned_bytes());
  m.fire = st.ffn_computed_fraction();
  return m;
}

std::string Csv(const std::vector<Point>& points) {
  std::ostringstream o;
  o << "store,budget,budget_bytes,chunk_bundles,coalesce,pipeline,threads,stream_buffers,sparsity,"
       "fire,"
       "decode_tok_s,prefill_tok_s,bytes_per_token,reads_per_token,mean_read_bytes,"
       "effective_mib_s,delivered_mib_s,io_share,hit_rate,planned_bytes,predicted_tok_s,"
       "predicted_flash_tok_s,"
       "predicted_dram_tok_s,binding,dram_gbps,dram_from,cache_dropped\n";
  for (const Point& p : points) {
    o << p.store << "," << p.budget_spec << "," << p.budget << "," << p.chunk_bundles << ","
      << (p.coalesce ? "on" : "off") << "," << (p.pipeline ? "on" : "off") << "," << p.threads
      << "," << p.stream_buffers << "," << p.sparsity << "," << p.fire << "," << p.decode_tok_s << "," << p.prefill_tok_s << ","
      << p.bytes_per_token << "," << p.reads_per_token << "," << p.mean_read_bytes << ","
      << p.effective_mib_s << "," << p.delivered_mib_s << "," << p.io_share << "," << p.hit_rate << "," << p.planned_bytes
      << "," << p.predicted_tok_s << "," << p.predicted_flash_tok_s << ","
      << p.predicted_dram_tok_s << "," << p.binding << "," << p.dram_gbps << "," << p.dram_from
      << "," << (p.cache_dropped ? 1 : 0) << "\n";
  }
  return o.str();
}

nlohmann::json Json(const std::vector<Point>& points, const Flags& f, double dram) {
  nlohmann::json j;
  j["tokens"] = f.tokens;
  j["prompt_tokens"] = f.prompt_tokens;
  j["repeat"] = f.repeat;
  j["dram_gbps"] = dram;
  j["flash_profile"] = f.flash;
  j["points"] = nlohmann::json::array();
  for (const Point& p : points) {
    j["points"].push_back({{"store", p.store},
                           {"budget", p.budget_spec},
                           {"budget_bytes", p.budget},
                           {"chunk_bundles", p.chunk_bundles},
                           {"coalesce", p.coalesce},
                           {"pipeline", p.pipeline},
                           {"threads", p.threads},
                           {"stream_buffers", p.stream_buffers},
                           {"sparsity", p.sparsity},
                           {"ffn_computed_fraction", p.fire},
                           {"decode_tok_s", p.decode_tok_s},
                           {"prefill_tok_s", p.prefill_tok_s},
                           {"bytes_per_token", p.bytes_per_token},
                           {"reads_per_token", p.reads_per_token},
                           {"mean_read_bytes", p.mean_read_bytes},
                           {"effective_mib_s", p.effective_mib_s},
                           {"delivered_mib_s", p.delivered_mib_s},
                           {"io_share", p.io_share},
                           {"hit_rate", p.hit_rate},
                           {"planned_bytes", p.planned_bytes},
                           {"predicted_tok_s", p.predicted_tok_s},
                           {"predicted_flash_tok_s", p.predicted_flash_tok_s},
                           {"predicted_dram_tok_s", p.predicted_dram_tok_s},
                           {"binding", p.binding},
                           {"dram_gbps", p.dram_gbps},
                           {"dram_from", p.dram_from},
                           {"cache_dropped", p.cache_dropped}});
  }
  return j;
}

// Effective bandwidth in decode against mean read size, over the profile's raw curve.
Status WritePlot(const std::string& path, const std::vector<Point>& points,
                 const storage::FlashProfile* profile) {
  ASSIGN_OR_RETURN(const std::string terminal, GnuplotTerminal(path));
  size_t streamed = 0;
  for (const Point& p : points) streamed += p.mean_read_bytes > 0 && p.effective_mib_s > 0;
  if (streamed == 0) {
    return FailedPreconditionError("--plot " + path + ": no point of the sweep read from flash "
                                   "(give budgets below the model's size)");
  }
  const std::string data_path = path + ".dat", script_path = path + ".gp";
  {
    std::ofstream data(data_path);
    data << "# decode: mean read KiB, effective MiB/s, delivered MiB/s, label\n";
    for (const Point& p : points) {
      if (p.mean_read_bytes <= 0 || p.effective_mib_s <= 0) continue;
      data << p.mean_read_bytes / 1024.0 << " " << p.effective_mib_s << " " << p.delivered_mib_s
           << " \"" << p.budget_spec << "/c" << p.chunk_bundles << (p.coalesce ? "" : "/nc")
           << "/b" << p.stream_buffers << "\"\n";
    }
    // The profile's curves, one data block each.
    std::vector<std::string> titles;
    if (profile) {
      for (const storage::FlashCurve& c : profile->curves) {
        for (int seq = 0; seq < 2; ++seq) {
          const auto& pts = seq ? c.sequential : c.random;
          if (pts.empty()) continue;
          data << "\n\n";
          for (const auto& [bytes, mibs] : pts) data << bytes / 1024.0 << " " << mibs << "\n";
          titles.push_back(std::string("raw ") + (seq ? "sequential" : "random") + " reads, QD " +
                           std::to_string(c.depth) + " (iobench)");
        }
      }
    }
    std::ofstream gp(script_path);
    gp << "set terminal " << terminal << "\nset output '" << path << "'\n"
       << "set title 'flashlm bench: effective read bandwidth in decode vs read size'\n"
       << "set xlabel 'mean read size (KiB)'\nset ylabel 'MiB/s'\nset logscale x 2\n"
       << "set key left top\nset grid\n";
    gp << "plot '" << data_path << "' index 0 using 1:2 with points pt 7 ps 1.2 title 'decode: "
       << "bytes read / I/O wait', '' index 0 using 1:3 with points pt 5 ps 1.2 title 'decode: "
       << "bytes read / decode time', '' index 0 using 1:2:4 with labels offset 0,1 font ',8' "
       << "notitle";
    for (size_t i = 0; i < titles.size(); ++i) {
      gp << ", '' index " << i + 1 << " using 1:2 with linespoints dt "
         << (titles[i].find("sequential") != std::string::npos ? 3 : 2) << " title '" << titles[i]
         << "'";
    }
    gp << "\n";
    if (!data || !gp) return IoError("cannot write " + data_path + " or " + script_path);
  }
  const std::string cmd = "gnuplot '" + script_path + "' 2>/dev/null";
  const int rc = std::system(cmd.c_str());
  std::filesystem::remove(data_path);
  std::filesystem::remove(script_path);
  if (rc != 0) return InternalError("gnuplot failed (is gnuplot installed?) writing " + path);
  return Status::Ok();
}

int Run(const Flags& f) {
  const auto fail = [](const Status& s) { return ReportError(kCommand, s); };
  if (f.tokens < 1 || f.tokens > 4096) return fail(InvalidArgumentError("--tokens must be in [1, 4096]"));
  if (f.prompt_tokens < 1 || f.prompt_tokens > 4096) {
    return fail(InvalidArgumentError("--prompt-tokens must be in [1, 4096]"));
  }
  if (f.repeat < 1 || f.repeat > 100) return fail(InvalidArgumentError("--repeat must be in [1, 100]"));
  if (!(f.dram_gbps >= 0 && f.dram_gbps < 1e5)) {
    return fail(InvalidArgumentError("--dram-gbps must be positive"));
  }
  auto budgets = Split(f.budgets, "--budgets");
  auto chunks = Numbers(f.chunk_bundles, "--chunk-bundles", 1, 65536);
  auto threads = Numbers(f.threads, "--threads", 0, 1024);
  auto buffers = Numbers(f.stream_buffers, "--stream-buffers", 2, engine::kChunkBuffersMax);
  auto coalesce = Switches(f.coalesce, "--coalesce");
  auto pipeline = Switches(f.pipeline, "--pipeline");
  auto sparsities = Split(f.sparsity, "--sparsity");
  if (sparsities.ok()) {
    for (const std::string& sp : *sparsities) {
      engine::TransformerOptions t;
      if (Status s = ParseSparsity(sp, &t); !s.ok()) return fail(s);
    }
  }
  for (const Status& s : {budgets.status(), chunks.status(), threads.status(), buffers.status(),
                          coalesce.status(), pipeline.status(), sparsities.status()}) {
    if (!s.ok()) return fail(s);
  }
  std::optional<storage::FlashProfile> profile;
  if (!f.flash.empty()) {
    auto p = storage::FlashProfile::Load(f.flash);
    if (!p.ok()) return fail(p.status().WithContext("--flash"));
    profile = *p;
  }
  if (!f.plot.empty()) {
    const std::string ext = std::filesystem::path(f.plot).extension().string();
    if (ext != ".svg" && ext != ".png") {
      return fail(InvalidArgumentError("--plot " + f.plot + ": use a .svg or .png file name"));
    }
  }
  const uint32_t cores = std::max(1u, std::thread::hardware_concurrency());
  const double dram = f.dram_gbps > 0 ? f.dram_gbps : engine::MeasureDramReadGBps(cores);
  bool can_drop = !f.no_drop_caches;
  if (can_drop) {
    if (Status s = storage::DropPageCache(); !s.ok()) {
      std::fprintf(stderr, "bench: not dropping the page cache between points (%s)\n",
                   std::string(s.message()).c_str());
      can_drop = false;
    }
  }

  // Every store's plan (from its catalog) and the sweep's points.
  std::vector<Point> points;
  std::map<std::string, engine::ModelPlan> models;
  std::map<std::string, std::vector<int32_t>> prompts;
  for (const std::string& store : f.stores) {
    engine::ModelPlanOptions mo;
    auto m = engine::PlanModel(store, mo);
    if (!m.ok()) return fail(m.status());
    if (m->kind != "store") {
      return fail(InvalidArgumentError(store + " is not a store (flashlm repack it first)"));
    }
    std::vector<int32_t> prompt;
    for (int64_t i = 0; i < f.prompt_tokens; ++i) {
      prompt.push_back(static_cast<int32_t>(1 + (i * 7919) % (m->config.vocab_size - 1)));
    }
    if (f.prompt_tokens + f.tokens + 1 > m->config.max_seq_len) {
      return fail(InvalidArgumentError("--prompt-tokens + --tokens exceed " + store +
                                       "'s context of " + std::to_string(m->config.max_seq_len)));
    }
    prompts[store] = prompt;
    models.emplace(store, std::move(*m));
  }
  // Resident points first: their decode rate calibrates the predictions of the others.
  std::stable_partition(budgets->begin(), budgets->end(),
                        [](const std::string& b) { return b == "all"; });
  for (const std::string& store : f.stores) {
    for (const std::string& b : *budgets) {
      for (uint32_t c : *chunks) {
        for (bool co : *coalesce) {
          for (bool pi : *pipeline) {
           for (const std::string& sp : *sparsities) {
            for (uint32_t t : *threads) {
              for (uint32_t sb : *buffers) {
                Point p;
                p.store = store;
                p.budget_spec = b;
                p.chunk_bundles = c;
                p.coalesce = co;
                p.pipeline = pi;
                p.sparsity = sp;
                p.threads = t ? t : cores;
                p.stream_buffers = sb;
                points.push_back(p);
              }
            }
           }
          }
        }
      }
    }
  }

  std::map<std::pair<std::string, uint32_t>, double> calibrated;  // (store, threads) -> GB/s
  std::printf("%-16s %8s %6s %5s %4s %3s %3s %13s %5s %8s %10s %8s %10s %9s %9s %5s %5s %9s %7s\n",
              "store", "budget", "chunk", "coal", "pipe", "thr", "buf", "ffn", "fire", "tok/s", "MiB/token",
              "reads", "mean read", "eff MiB/s", "del MiB/s", "io%", "hit%", "plan tok/s", "error");
  for (size_t i = 0; i < points.size(); ++i) {
    Point& p = points[i];
    const engine::ModelPlan& m = models.at(p.store);
    engine::SessionOptions so;
    so.threads = p.threads;
    so.budgeted = true;
    so.streaming.chunk_bundles = p.chunk_bundles;
    so.streaming.chunk_buffers = p.stream_buffers;
    so.streaming.coalesce = p.coalesce;
    so.streaming.pipeline = p.pipeline;
    CHECK_OK(ParseSparsity(p.sparsity, &so.transformer));  // checked above
    so.transformer.max_context =
        static_cast<uint32_t>(std::min<int64_t>(m.config.max_seq_len, f.prompt_tokens + f.tokens + 1));
    // The budget: all (unlimited), a size, or a percentage of the weights.
    // The store measured at this point's streaming options (buffers depend on them).
    engine::ModelPlanOptions mo;
    mo.streaming = so.streaming;
    auto measured = engine::PlanModel(p.store, mo);
    if (!measured.ok()) return fail(measured.status());
    const engine::ModelPlan& sized = *measured;
    if (p.budget_spec == "all") {
      p.budget = 0;  // unlimited: everything resident
    } else if (!p.budget_spec.empty() && p.budget_spec.back() == '%') {
      const double pct = std::strtod(p.budget_spec.c_str(), nullptr);
      if (!(pct > 0 && pct <= 1000)) {
        return fail(InvalidArgumentError("--budgets: '" + p.budget_spec + "' is not in (0%, 1000%]"));
      }
      p.budget = static_cast<uint64_t>(double(sized.weight_bytes) * pct / 100.0);
    } else if (p.budget_spec == "auto") {
      auto b = AutoBudget("--budgets");
      if (!b.ok()) return fail(b.status().WithContext("--budgets"));
      p.budget = *b;
    } else {
      auto b = ParseSize(p.budget_spec);
      if (!b.ok()) return fail(b.status().WithContext("--budgets"));
      p.budget = *b;
    }
    so.budget_bytes = p.budget;
    engine::CostOptions co;
    co.context = f.prompt_tokens + f.tokens / 2;
    // A budget below the minimum at these settings is skipped, not an error of the sweep.
    engine::SessionOptions unlimited = so;
    unlimited.budget_bytes = 0;
    auto full = engine::PlanSession(sized.needs, sized.config, unlimited, p.threads,
                                    sized.tokenizer_bytes);
    if (!full.ok()) return fail(full.status());
    if (p.budget != 0 && p.budget < full->plan.minimum_bytes) {
      std::fprintf(stderr, "bench: [%zu/%zu] %s budget %s skipped: %s is below the minimum of %s\n",
                   i + 1, points.size(), p.store.c_str(), p.budget_spec.c_str(),
                   FormatBytes(p.budget).c_str(), FormatBytes(full->plan.minimum_bytes).c_str());
      p.skipped = true;
      continue;
    }
    auto predicted = engine::Predict(sized, so, p.threads, co, dram, profile ? &*profile : nullptr);
    if (!predicted.ok()) return fail(predicted.status());
    // Per token: DRAM bytes, and flash seconds (of which cannot overlap compute).
    const auto take = [&p](const engine::Prediction& pr) {
      p.dram_bytes = pr.cost.weight_bytes + pr.cost.kv_bytes;
      p.flash_seconds = pr.bounds.flash_overlapped_seconds + pr.bounds.flash_serial_seconds;
      p.flash_serial_seconds = pr.bounds.flash_serial_seconds;
    };
    take(*predicted);

    std::fprintf(stderr, "bench: [%zu/%zu] %s budget %s chunk %u coalesce %s pipeline %s threads %u\n",
                 i + 1, points.size(), p.store.c_str(), p.budget_spec.c_str(), p.chunk_bundles,
                 p.coalesce ? "on" : "off", p.pipeline ? "on" : "off", p.threads);
    std::vector<Measured> runs;
    for (int64_t r = 0; r < f.repeat; ++r) {
      if (can_drop) {
        if (Status s = storage::DropPageCache(); !s.ok()) return fail(s);
        p.cache_dropped = true;
      }
      auto m1 = RunOnce(p.store, so, prompts.at(p.store), static_cast<uint32_t>(f.tokens));
      if (!m1.ok()) return fail(m1.status());
      runs.push_back(*m1);
    }
    auto med = [&](double Measured::*field) {
      std::vector<double> v;
      for (const Measured& r : runs) v.push_back(r.*field);
      return Median(v);
    };
    p.decode_tok_s = med(&Measured::decode_tok_s);
    p.prefill_tok_s = med(&Measured::prefill_tok_s);
    p.bytes_per_token = med(&Measured::bytes_per_token);
    p.reads_per_token = med(&Measured::reads_per_token);
    p.mean_read_bytes = med(&Measured::mean_read_bytes);
    p.effective_mib_s = med(&Measured::effective_mib_s);
    p.io_share = med(&Measured::io_share);
    p.hit_rate = med(&Measured::hit_rate);
    p.planned_bytes = med(&Measured::planned);
    p.fire = med(&Measured::fire);
    if (p.fire < 1) {  // sparse: the plan's cost at the fire rate decode measured
      co.fire_fraction = p.fire;
      auto sparse = engine::Predict(sized, so, p.threads, co, dram, profile ? &*profile : nullptr);
      if (!sparse.ok()) return fail(sparse.status());
      take(*sparse);
    }
    p.delivered_mib_s = p.bytes_per_token * p.decode_tok_s / 1048576.0;
    // The prediction: the plan's per-token bytes over the DRAM rate (given, else what decode
    // reached with everything resident at these threads, else the measured read bandwidth) and
    // the flash profile's rates; overlapped when pipelining, added when not.
    const auto key = std::make_pair(p.store, p.threads);
    if (p.budget == 0 && f.dram_gbps == 0 && p.fire >= 1) {
      calibrated[key] = p.dram_bytes * p.decode_tok_s / 1e9;
    }
    p.dram_gbps = f.dram_gbps > 0 ? f.dram_gbps : calibrated.count(key) ? calibrated[key] : dram;
    p.dram_from = f.dram_gbps > 0        ? "--dram-gbps"
                  : calibrated.count(key) ? "resident decode"
                                          : "measured read bandwidth";
    const double dram_s = p.dram_bytes / (p.dram_gbps * 1e9);
    p.predicted_dram_tok_s = 1.0 / dram_s;
    p.predicted_flash_tok_s = p.flash_seconds > 0 ? 1.0 / p.flash_seconds : 0;
    p.predicted_tok_s =
        engine::BoundTokS(dram_s, p.flash_seconds - p.flash_serial_seconds, p.flash_serial_seconds,
                          p.pipeline, 1);
    p.binding = p.flash_seconds > dram_s ? "flash" : "DRAM";
    const double err = p.decode_tok_s > 0 ? p.predicted_tok_s / p.decode_tok_s - 1 : 0;
    char error[16];
    if (p.budget == 0 && p.fire >= 1 && p.dram_from == "resident decode") {
      std::snprintf(error, sizeof error, "calib");  // this point calibrated the DRAM rate
    } else {
      std::snprintf(error, sizeof error, "%+.0f%%", 100 * err);
    }
    std::printf(
        "%-16s %8s %6u %5s %4s %3u %3u %13s %4.0f%% %8.2f %10.2f %8.1f %10s %9.0f %9.0f %4.0f%% "
        "%4.0f%% %9.2f %7s\n",
        std::filesystem::path(p.store).filename().string().substr(0, 16).c_str(),
        p.budget_spec.c_str(), p.chunk_bundles, p.coalesce ? "on" : "off",
        p.pipeline ? "on" : "off", p.threads, p.stream_buffers, p.sparsity.c_str(), 100 * p.fire,
        p.decode_tok_s,
        p.bytes_per_token / 1048576.0, p.reads_per_token,
        FormatBytes(static_cast<uint64_t>(p.mean_read_bytes)).c_str(), p.effective_mib_s,
        p.delivered_mib_s, 100 * p.io_share, 100 * p.hit_rate, p.predicted_tok_s, error);
    std::fflush(stdout);
  }
  points.erase(std::remove_if(points.begin(), points.end(), [](const Point& p) { return p.skipped; }),
               points.end());
  if (points.empty()) {
    return fail(InvalidArgumentError("every point was skipped: each budget is below the minimum"));
  }
  if (!f.csv.empty()) {
    if (Status s = storage::WriteFileAtomically(f.csv, AsBytes(Csv(points))); !s.ok()) return fail(s);
  }
  if (!f.json.empty()) {
    if (Status s = storage::WriteFileAtomically(f.json, AsBytes(Json(points, f, dram).dump(2) + "\n")); !s.ok()) {
      return fail(s);
    }
  }
  if (!f.plot.empty()) {
    if (Status s = WritePlot(f.plot, points, profile ? &*profile : nullptr); !s.ok()) return fail(s);
  }
  return kExitOk;
}

}  // namespace

CommandRunner RegisterBench(CLI::App& app) {
  auto flags = std::make_shared<Flags>();
  CLI::App* cmd = app.add_subcommand(
      "bench", "Sweep real decode over budgets and read settings; measured vs planned");
  cmd->add_option("STORE", flags->stores, "Store folder(s): e.g. one per alignment or bundle kind")
      ->required();
  cmd->add_option(
         "--budgets", flags->budgets,
         "Memory budgets: all (unlimited), sizes (512M), percentages of the weights (25%) or "
         "auto (what the machine has available, as --mem-budget auto)")
      ->capture_default_str();
  cmd->add_option("--chunk-bundles", flags->chunk_bundles, "FFN bundles per streamed chunk (list)")
      ->capture_default_str();
  cmd->add_option("--coalesce", flags->coalesce, "Merge neighbouring bundles: on, off, or on,off")
      ->capture_default_str();
  cmd->add_option("--pipeline", flags->pipeline, "Read ahead while computing: on, off, or on,off")
      ->capture_default_str();
  cmd->add_option("--threads", flags->threads, "Thread counts (0: all cores)")->capture_default_str();
  cmd->add_option("--stream-buffers", flags->stream_buffers,
                  "FFN chunk buffers in flight, i.e. read queue depth in chunks (list)")
      ->capture_default_str();
  cmd->add_option("--sparsity", flags->sparsity,
                  "FFN sparsity modes (list): auto, dense, relu (a ReLU model with gate+up-down "
                  "bundles), threshold (STORE/ffn_thresholds.json, see flashlm calibrate), "
                  "predictor or predictor:CUT (STORE/ffn_predictor.bin, see flashlm "
                  "train-predictor; CUT as generate's --predictor-cut, default 0.5)")
      ->capture_default_str();
  cmd->add_option("--tokens", flags->tokens, "Decode steps per run")->capture_default_str();
  cmd->add_option("--prompt-tokens", flags->prompt_tokens, "Prompt length")->capture_default_str();
  cmd->add_option("--repeat", flags->repeat, "Runs per point (medians are reported)")
      ->capture_default_str();
  cmd->add_option("--flash", flags->flash, "iobench --json profile of the same disk (plot, plan)");
  cmd->add_option("--dram-gbps", flags->dram_gbps, "DRAM bandwidth for the plan (default: measured)");
  cmd->add_flag("--no-drop-caches", flags->no_drop_caches,
                "Keep the page cache between points (default: dropped when root)");
  cmd->add_option("--csv", flags->csv, "Write the points as CSV");
  cmd->add_option("--json", flags->json, "Write the points as JSON");
  cmd->add_option("--plot", flags->plot, "Write the plot (.svg or .png, needs gnuplot)");
  return [cmd, flags] {
    if (!cmd->parsed()) return -1;
    return Run(*flags);
  };
}

}  // namespace flashlm::tools
