#include "tools/session_flags.h"

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <thread>

#include "layout/read_source_json.h"
#include "storage/system_memory.h"
#include "tools/cli_util.h"

namespace flashlm::tools {

Result<uint64_t> AutoBudget(const std::string& flag) {
  auto mem = storage::ReadSystemMemory();
  if (!mem.ok()) return mem.status().WithContext(flag + " auto");
  const uint64_t available = mem->available();
  const uint64_t headroom = std::max<uint64_t>(kAutoBudgetHeadroomMin, available / 10);
  std::string from = "MemAvailable " + FormatBytes(mem->mem_available);
  if (mem->cgroup_limit != storage::kNoLimit) {
    from += ", memory cgroup " + mem->cgroup + ": " + FormatBytes(mem->cgroup_room) +
            " free of its limit of " + FormatBytes(mem->cgroup_limit);
  }
  if (available <= headroom) {
    return ResourceExhaustedError(flag + " auto: only " + FormatBytes(available) + " available (" +
                                  from + "), no more than the " + FormatBytes(headroom) +
                                  " left to everything else");
  }
  std::fprintf(stderr, "%s auto: %s (%llu bytes; %s; less %s for everything else)\n", flag.c_str(),
               FormatBytes(available - headroom).c_str(),
               static_cast<unsigned long long>(available - headroom), from.c_str(),
               FormatBytes(headroom).c_str());
  return available - headroom;
}

void AddSessionFlags(CLI::App* cmd, SessionFlags* f) {
  cmd->add_option("--threads", f->threads, "Threads (default: all cores)");
  cmd->add_option("--tokenizer", f->tokenizer, "llama2.c tokenizer.bin for a llama2.c .bin");
  f->mem_budget_option =
      cmd->add_option("--mem-budget", f->mem_budget,
                      "Run a store within SIZE bytes of DRAM (K/M/G suffix; 0 = unlimited; auto = "
                      "what this machine and the process's memory cgroup have available now, less "
                      "10% (at least 64M) for everything else): prints the residency plan and the "
                      "I/O accounting");
  cmd->add_flag("--no-pipeline", f->no_pipeline,
                "With --mem-budget: read everything only when it is needed, one read batch at a "
                "time (the naive mode, for comparison)");
  cmd->add_flag("--no-coalesce", f->no_coalesce,
                "With --mem-budget: one read per FFN bundle instead of merging neighbours");
  cmd->add_flag("--split-bundle-reads", f->split_bundle_reads,
                "With --mem-budget: read every FFN bundle as one read per matrix row it holds, "
                "none merged: the reads separate gate, up and down matrices would cost (the "
                "ablation of bundling, for benchmarks)");
  cmd->add_option("--verify-reads", f->verify_reads,
                  "Store reads whose checksum is checked: every (each read, the default) or first "
                  "(each extent the first time it is read in the run: damage at rest is still "
                  "found, a later read that goes wrong is not; saves hashing every streamed byte "
                  "on every token)");
  cmd->add_option("--chunk-bundles", f->chunk_bundles,
                  "With --mem-budget: FFN bundles per streamed chunk (default 256)");
  cmd->add_option("--stream-buffers", f->stream_buffers,
                  "With --mem-budget: chunk buffers in flight when pipelining (default 4)");
  cmd->add_option("--sparsity", f->sparsity,
                  "FFN neurons computed from a store: dense, relu (exact for ReLU models with "
                  "gate+up-down bundles: only neurons whose gate fires are read), threshold "
                  "(approximate: only neurons with |act(gate x)| above the layer's calibrated "
                  "cut, see flashlm calibrate; gate+up-down bundles), predictor (approximate: "
                  "only neurons a low-rank predictor on the FFN input picks, see flashlm "
                  "train-predictor; one read per neuron with gate-up-down bundles), or auto "
                  "(relu where it applies, else dense)")
      ->capture_default_str();
  cmd->add_option("--window", f->window,
                  "Sparse FFN: bundles used in the last K tokens are never evicted from the bundle "
                  "cache to admit others (LLM in a flash's sliding window; 0 = plain LRU)")
      ->capture_default_str();
  cmd->add_option("--merge-gap", f->merge_gap,
                  "Sparse FFN: read neighbouring missing bundles as one read across gaps of up to "
                  "BYTES (K/M suffix; default 16K, measured; 0 = only touching bundles)");
  cmd->add_option("--cache-share", f->cache_share,
                  "Sparse FFN: share of the bundle bytes beyond the hot set that go to an LRU "
                  "cache of streamed bundles instead of more pinned bundles, in [0, 1] (default " +
                      std::to_string(kDefaultCacheShare).substr(0, 4) +
                      ", measured on a model without temporal locality)");
  f->kv_options[0] = cmd->add_option(
      "--kv-page-tokens", f->kv_page_tokens,
      "Paged KV cache: positions per page (default 16; any --kv-* flag makes the cache paged)");
  // A command with its own --kv-dtype (plan: the arithmetic's) passes it on itself.
  if (cmd->get_option_no_throw("--kv-dtype") == nullptr) {
    f->kv_options[1] =
        cmd->add_option("--kv-dtype", f->kv_dtype, "Paged KV cache: f32 (exact), f16 or q8_0 rows");
  }
  f->kv_options[2] = cmd->add_option(
      "--kv-budget", f->kv_budget,
      "Paged KV cache: DRAM for its pages (K/M/G); the rest of the V pages spill to flash "
      "(default: the plan's share of --mem-budget, all of the cache when it fits)");
  f->kv_options[3] = cmd->add_option(
      "--kv-dir", f->kv_dir,
      "Paged KV cache: folder for the V spill file (default $TMPDIR or /tmp; the file is "
      "unlinked as soon as it is open)");
  f->kv_options[4] = cmd->add_option(
      "--kv-fetch", f->kv_fetch,
      "Paged KV cache: how top-N attention reads spilled V: pages (every page holding a kept "
      "position, whole, cached) or rows (only the kept rows, each run one read widened to the "
      "O_DIRECT block; not cached)");
  f->kv_options[5] = cmd->add_option(
      "--kv-select", f->kv_select,
      "Paged KV cache: all (every position's score, the default) or pages (Quest: each query "
      "reads only the pages of K and V whose per-channel K min/max bound its score highest, "
      "ceil(N/P) pages for the --kv-topn budget N, its own page always; exact attention over "
      "them), or shared (the same, one choice of pages per token and layer for every head: "
      "pages ranked by their best bound relative to each head's best page)");
  f->kv_options[6] = cmd->add_option(
      "--kv-spill", f->kv_spill,
      "Paged KV cache: what spills to flash beyond the pool: v (V pages, the default) or kv (K "
      "pages too; needs --kv-select pages, whose K bounds stay in DRAM)");
  cmd->add_option("--kv-topn", f->kv_topn,
                  "Top-N attention (KCache): all (exact), N positions or P% of the context per "
                  "head; the kept probabilities are renormalised. With a paged cache that spills, "
                  "only the V pages holding kept positions are read")
      ->capture_default_str();
  cmd->add_option("--thresholds", f->thresholds,
                  "With --sparsity threshold: the thresholds file (default "
                  "STORE/ffn_thresholds.json, written by flashlm calibrate)");
  cmd->add_option("--predictor", f->predictor,
                  "With --sparsity predictor: the predictor file (default "
                  "STORE/ffn_predictor.bin, written by flashlm train-predictor)");
  f->lookahead_option = cmd->add_option("--lookahead", f->lookahead,
                  "With --sparsity relu, threshold or predictor and a trained predictor (flashlm "
                  "train-predictor): at the start of each layer, read ahead the FFN bundles the "
                  "predictor gives a probability above P of firing, from the layer's input, while "
                  "its attention computes. Changes only when reads go out, never the output");
  f->predictor_cut_option = cmd->add_option("--predictor-cut", f->predictor_cut,
                  "With --sparsity predictor: a neuron is computed for a token when the "
                  "predictor's probability that it fires is above this, in [0, 1] (default 0.5; "
                  "0 = every neuron)");
  cmd->add_option("--max-batch", f->batch,
                  "Tokens per forward pass (default: the command's; a prompt longer than this is "
                  "prefilled in several passes)");
  cmd->add_option("--lazy-prefill", f->lazy_prefill,
                  "LazyLLM prompt-token pruning: fraction of the prompt's tokens that reach the "
                  "last layer, in (0, 1]; 1 = off (exact). The prompt should fit one --max-batch: "
                  "each pass ranks tokens by its own last token's attention")
      ->capture_default_str();
  cmd->add_option("--lazy-layers", f->lazy_layers,
                  "Pruning layers for --lazy-prefill, comma-separated and increasing, each before "
                  "the last layer (default: every layer from n_layers/4 to n_layers-2); the kept "
                  "fraction falls linearly over them to --lazy-prefill");
}

bool SessionFlags::kv_paged() const {
  for (CLI::Option* o : kv_options) {
    if (o != nullptr && o->count() > 0) return true;
  }
  return false;
}

Status ApplySessionFlags(const SessionFlags& f, engine::SessionOptions* o) {
  const int64_t threads_max =
      int64_t{engine::kThreadsPerCoreMax} * std::max(1u, std::thread::hardware_concurrency());
  if (f.threads < 0 || f.threads > threads_max) {
    return InvalidArgumentError("--threads must be in [0, " + std::to_string(threads_max) +
                                "] (0: every core; at most " +
                                std::to_string(engine::kThreadsPerCoreMax) + " per core)");
  }
  if (f.chunk_bundles < 1 || f.chunk_bundles > 65536) {
    return InvalidArgumentError("--chunk-bundles must be in [1, 65536]");
  }
  if (f.stream_buffers < 2 || f.stream_buffers > engine::kChunkBuffersMax) {
    return InvalidArgumentError("--stream-buffers must be in [2, " +
                                std::to_string(engine::kChunkBuffersMax) + "]");
  }
  o->threads = static_cast<uint32_t>(f.threads);
  o->tokenizer_path = f.tokenizer;
  if (f.mem_budget_option != nullptr && f.mem_budget_option->count() > 0 && f.mem_budget.empty()) {
    return InvalidArgumentError("--mem-budget: empty size (expected e.g. 512M, 2G; 0 = unlimited)");
  }
  o->budgeted = f.budgeted();
  if (f.budgeted() && f.mem_budget == "auto") {
    ASSIGN_OR_RETURN(o->budget_bytes, AutoBudget());
  } else if (f.budgeted()) {
    auto b = ParseSize(f.mem_budget);
    if (!b.ok()) return b.status().WithContext("--mem-budget");
    o->budget_bytes = *b;
  }
  o->streaming.chunk_bundles = static_cast<uint32_t>(f.chunk_bundles);
  o->streaming.chunk_buffers = static_cast<uint32_t>(f.stream_buffers);
  o->streaming.pipeline = !f.no_pipeline;
  o->streaming.coalesce = !f.no_coalesce;
  o->streaming.split_bundle_reads = f.split_bundle_reads;
  if (f.sparsity == "auto") {
    o->transformer.sparsity = engine::FfnSparsity::kAuto;
  } else if (f.sparsity == "dense") {
    o->transformer.sparsity = engine::FfnSparsity::kDense;
  } else if (f.sparsity == "relu") {
    o->transformer.sparsity = engine::FfnSparsity::kRelu;
  } else if (f.sparsity == "threshold") {
    o->transformer.sparsity = engine::FfnSparsity::kThreshold;
  } else if (f.sparsity == "predictor") {
    o->transformer.sparsity = engine::FfnSparsity::kPredictor;
  } else {
    return InvalidArgumentError("--sparsity must be auto, dense, relu, threshold or predictor");
  }
  if (f.window < 0 || f.window > engine::kWindowPassesMax) {
    return InvalidArgumentError("--window must be in [0, " +
                                std::to_string(engine::kWindowPassesMax) + "]");
  }
  o->streaming.window_passes = static_cast<uint32_t>(f.window);
  if (!f.merge_gap.empty()) {
    auto g = ParseSize(f.merge_gap);
    if (!g.ok()) return g.status().WithContext("--merge-gap");
    if (*g > (uint64_t{1} << 30)) return InvalidArgumentError("--merge-gap must be at most 1G");
    o->streaming.merge_gap_bytes = *g;
  }
  const double share = f.cache_share == -1 ? kDefaultCacheShare : f.cache_share;
  if (!(share >= 0 && share <= 1)) return InvalidArgumentError("--cache-share must be in [0, 1]");
  o->streaming.cache_fraction = share;
  o->kv.paged = f.kv_paged();
  if (f.kv_page_tokens < 1 || f.kv_page_tokens > engine::kKvPageTokensMax) {
    return InvalidArgumentError("--kv-page-tokens must be in [1, " +
                                std::to_string(engine::kKvPageTokensMax) + "]");
  }
  o->kv.page_tokens = static_cast<uint32_t>(f.kv_page_tokens);
  if (f.kv_dtype == "f32") {
    o->kv.dtype = layout::DType::kF32;
  } else if (f.kv_dtype == "f16") {
    o->kv.dtype = layout::DType::kF16;
  } else if (f.kv_dtype == "q8_0") {
    o->kv.dtype = layout::DType::kQ8_0;
  } else {
    return InvalidArgumentError("--kv-dtype must be f32, f16 or q8_0");
  }
  if (!f.kv_budget.empty()) {
    auto b = ParseSize(f.kv_budget);
    if (!b.ok()) return b.status().WithContext("--kv-budget");
    if (*b == 0) return InvalidArgumentError("--kv-budget must be more than 0");
    o->kv.pool_bytes = *b;
  } else if (f.kv_options[2] != nullptr && f.kv_options[2]->count() > 0) {
    return InvalidArgumentError("--kv-budget: empty size (expected e.g. 64M)");
  }
  o->kv.spill_dir = f.kv_dir;
  if (f.verify_reads != "every" && f.verify_reads != "first") {
    return InvalidArgumentError("--verify-reads must be every or first");
  }
  o->verify_every_read = f.verify_reads == "every";
  if (f.kv_fetch != "pages" && f.kv_fetch != "rows") {
    return InvalidArgumentError("--kv-fetch must be rows or pages");
  }
  o->kv.fetch_rows = f.kv_fetch == "rows";
  if (f.kv_select != "all" && f.kv_select != "pages" && f.kv_select != "shared") {
    return InvalidArgumentError("--kv-select must be all, pages or shared");
  }
  o->kv.select_pages = f.kv_select != "all";
  o->kv.select_shared = f.kv_select == "shared";
  if (f.kv_spill != "v" && f.kv_spill != "kv") {
    return InvalidArgumentError("--kv-spill must be v or kv");
  }
  o->kv.spill_keys = f.kv_spill == "kv";
  auto topn = engine::TopNSpec::Parse(f.kv_topn);
  if (!topn.ok()) return topn.status();
  o->kv_topn = *topn;
  if (!f.thresholds.empty() && o->transformer.sparsity != engine::FfnSparsity::kThreshold) {
    return InvalidArgumentError("--thresholds applies only with --sparsity threshold");
  }
  o->ffn_thresholds_path = f.thresholds;
  const bool predictor = o->transformer.sparsity == engine::FfnSparsity::kPredictor;
  const bool cut_given = f.predictor_cut_option != nullptr && f.predictor_cut_option->count() > 0;
  const bool lookahead = f.lookahead_option != nullptr && f.lookahead_option->count() > 0;
  if (cut_given && !predictor) {
    return InvalidArgumentError("--predictor-cut applies only with --sparsity predictor");
  }
  if (!f.predictor.empty() && !predictor && !lookahead) {
    return InvalidArgumentError("--predictor applies only with --sparsity predictor or "
                                "--lookahead");
  }
  if (lookahead) {
    if (!(f.lookahead >= 0 && f.lookahead <= 1)) {
      return InvalidArgumentError("--lookahead must be in [0, 1]");
    }
    o->transformer.lookahead = true;
    o->transformer.lookahead_cut = static_cast<float>(f.lookahead);
  }
  if (cut_given) {
    if (!(f.predictor_cut >= 0 && f.predictor_cut <= 1)) {
      return InvalidArgumentError("--predictor-cut must be in [0, 1]");
    }
    o->transformer.predictor_cut = static_cast<float>(f.predictor_cut);
  }
  o->ffn_predictor_path = f.predictor;
  if (f.batch < 0 || f.batch > engine::kContextMax) {
    return InvalidArgumentError("--max-batch must be in [1, " +
                                std::to_string(engine::kContextMax) + "]");
  }
  if (f.batch > 0) o->transformer.max_batch = static_cast<uint32_t>(f.batch);
  if (!(f.lazy_prefill > 0.0 && f.lazy_prefill <= 1.0)) {
    return InvalidArgumentError("--lazy-prefill must be in (0, 1] (1 = off)");
  }
  o->transformer.lazy.keep = static_cast<float>(f.lazy_prefill);
  o->transformer.lazy.layers.clear();
  if (!f.lazy_layers.empty()) {
    if (f.lazy_prefill == 1.0) {
      return InvalidArgumentError("--lazy-layers needs --lazy-prefill below 1");
    }
    size_t at = 0;
    while (at <= f.lazy_layers.size()) {
      const size_t comma = std::min(f.lazy_layers.find(',', at), f.lazy_layers.size());
      const std::string item = f.lazy_layers.substr(at, comma - at);
      char* end = nullptr;
      const unsigned long v = std::strtoul(item.c_str(), &end, 10);
      if (item.empty() || item.size() > 6 || end != item.c_str() + item.size() || item[0] == '-' ||
          item[0] == '+') {
        return InvalidArgumentError("--lazy-layers: '" + item +
                                    "' is not a layer number (expected e.g. 1,2,3)");
      }
      o->transformer.lazy.layers.push_back(static_cast<uint32_t>(v));
      at = comma + 1;
    }
  }
  return Status::Ok();
}

std::string LazyStatsLine(const engine::EngineStats& s) {
  const engine::LazyStats& z = s.lazy;
  if (z.layer_tokens.empty()) return "";
  std::string per_layer;
  for (size_t l = 0; l < z.layer_tokens.size(); ++l) {
    per_layer += (l ? "/" : "") + std::to_string(z.layer_tokens[l]);
  }
  char buf[512];
  std::snprintf(buf, sizeof(buf),
                "lazy: tokens per layer %s of %llu, FLOPs %.1f%% of dense (%.3g saved), pruned "
                "%llu, revived %llu, aux cache %s now / %s peak / %s size",
                per_layer.c_str(), static_cast<unsigned long long>(z.pass_tokens),
                z.dense_flops ? 100.0 * static_cast<double>(z.flops) / z.dense_flops : 100.0,
                static_cast<double>(z.dense_flops) - static_cast<double>(z.flops),
                static_cast<unsigned long long>(z.prunes),
                static_cast<unsigned long long>(z.revivals), FormatBytes(z.aux_bytes).c_str(),
                FormatBytes(z.aux_peak_bytes).c_str(), FormatBytes(z.aux_capacity_bytes).c_str());
  return buf;
}

nlohmann::json LazyStatsJson(const engine::EngineStats& s) {
  const engine::LazyStats& z = s.lazy;
  if (z.layer_tokens.empty()) return nullptr;
  return {{"layer_tokens", z.layer_tokens},
          {"pass_tokens", z.pass_tokens},
          {"flops", z.flops},
          {"dense_flops", z.dense_flops},
          {"pruned", z.prunes},
          {"revived", z.revivals},
          {"aux_bytes", z.aux_bytes},
          {"aux_peak_bytes", z.aux_peak_bytes},
          {"aux_capacity_bytes", z.aux_capacity_bytes}};
}

std::string KvStatsLine(engine::Session& session, const engine::EngineStats& s) {
  engine::PagedKvCache* kv = session.paged_kv();
  if (kv == nullptr) return "";
  const layout::VCacheLayout& l = kv->pages().layout();
  const double passes = s.passes ? static_cast<double>(s.passes) : 1.0;
  char buf[768];
  std::snprintf(
      buf, sizeof(buf),
      "kv: %u-token pages of %s (%s each), pool %s, %s resident, V spill %s (%s), fetch %s; "
      "%.2f MiB read in %llu reads (mean %.1f KiB), %.2f MiB written, page hit rate %.1f%%, kv "
      "io wait %.1f ms, attention %.1f ms; per forward pass: %.3f MiB read, %.1f reads, "
      "attention %.3f ms",
      l.tokens_per_page, std::string(layout::DTypeName(l.dtype)).c_str(),
      FormatBytes(l.page_stride_bytes()).c_str(), FormatBytes(kv->pages().pool_bytes()).c_str(),
      FormatBytes(s.kv_resident_bytes).c_str(), kv->pages().spills() ? "on" : "off",
      kv->pages().spills() ? std::string(kv->pages().backend_name()).c_str() : "nothing spills",
      kv->pages().fetch_rows() ? "rows" : "pages", s.kv_bytes_read / 1048576.0,
      static_cast<unsigned long long>(s.kv_reads),
      s.kv_reads ? s.kv_bytes_read / 1024.0 / s.kv_reads : 0.0, s.kv_bytes_written / 1048576.0,
      100.0 * s.kv_hit_rate(), s.kv_io_wait_ns / 1e6, s.attention_ns / 1e6,
      s.kv_bytes_read / 1048576.0 / passes, s.kv_reads / passes, s.attention_ns / 1e6 / passes);
  std::string line = buf;
  if (kv->bound_page_tokens() != 0) {
    const engine::PageSelectStats& p = s.kv_pages;
    std::snprintf(buf, sizeof(buf),
                  "; select pages (K spill %s): %llu of %llu pages read per (token, layer) "
                  "(%.1f%%), %.1f%% of pages per head",
                  kv->pages().spill_keys() ? "on" : "off",
                  static_cast<unsigned long long>(p.pages_selected),
                  static_cast<unsigned long long>(p.pages_total),
                  p.pages_total ? 100.0 * p.pages_selected / p.pages_total : 0.0,
                  p.head_pages_total ? 100.0 * p.head_pages_selected / p.head_pages_total : 0.0);
    line += buf;
  }
  return line;
}

nlohmann::json KvStatsJson(engine::Session& session, const engine::EngineStats& s) {
  engine::PagedKvCache* kv = session.paged_kv();
  if (kv == nullptr) return nlohmann::json();
  const layout::VCacheLayout& l = kv->pages().layout();
  return nlohmann::json{{"page_tokens", l.tokens_per_page},
                        {"dtype", layout::DTypeName(l.dtype)},
                        {"page_stride_bytes", l.page_stride_bytes()},
                        {"pool_bytes", kv->pages().pool_bytes()},
                        {"spills", kv->pages().spills()},
                        {"fetch", kv->pages().fetch_rows() ? "rows" : "pages"},
                        {"resident_bytes", s.kv_resident_bytes},
                        {"bytes_read", s.kv_bytes_read},
                        {"reads", s.kv_reads},
                        {"mean_read_bytes", s.kv_reads ? double(s.kv_bytes_read) / s.kv_reads : 0},
                        {"bytes_written", s.kv_bytes_written},
                        {"page_hits", s.kv_page_hits},
                        {"page_misses", s.kv_page_misses},
                        {"io_wait_ms", s.kv_io_wait_ns / 1e6},
                        {"attention_ms", s.attention_ns / 1e6},
                        {"select", kv->bound_page_tokens() != 0 ? "pages" : "all"},
                        {"spill", kv->pages().spill_keys() ? "kv" : "v"},
                        {"pages_selected", s.kv_pages.pages_selected},
                        {"pages_total", s.kv_pages.pages_total},
                        {"head_pages_selected", s.kv_pages.head_pages_selected},
                        {"head_pages_total", s.kv_pages.head_pages_total}};
}

std::string FfnStatsLine(const engine::EngineStats& s) {
  if (s.ffn_layers.empty()) return "";
  const double passes = s.passes ? static_cast<double>(s.passes) : 1.0;
  const uint64_t requested = s.bundles_resident + s.bundles_streamed;
  char buf[512];
  std::snprintf(buf, sizeof(buf),
                "ffn: %.1f bundles per pass, hit rate %.1f%% (pinned %.1f%%, LRU %.1f%%), "
                "%llu admitted, %llu not admitted; bundle reads per pass %.1f (mean %.1f KiB, "
                "%.3f MiB), read amplification %.2f; hit rate by layer:",
                requested / passes, 100.0 * s.hit_rate(),
                requested ? 100.0 * (s.bundles_resident - s.bundles_cached) / requested : 0.0,
                requested ? 100.0 * s.bundles_cached / requested : 0.0,
                static_cast<unsigned long long>(s.bundles_admitted),
                static_cast<unsigned long long>(s.admissions_refused), s.ffn_reads / passes,
                s.ffn_reads ? s.ffn_bytes_read / 1024.0 / s.ffn_reads : 0.0,
                s.ffn_bytes_read / 1048576.0 / passes, s.ffn_read_amplification());
  std::string line = buf;
  for (const engine::NeuronLayerStats& l : s.ffn_layers) {
    std::snprintf(buf, sizeof(buf), " %.0f", 100.0 * l.hit_rate());
    line += buf;
  }
  if (s.bundles_prefetched > 0) {
    std::snprintf(buf, sizeof(buf),
                  "; lookahead: %.1f bundles read ahead per pass, %.1f%% of them used",
                  s.bundles_prefetched / passes, 100.0 * s.prefetch_used / s.bundles_prefetched);
    line += buf;
  }
  const engine::PredictorStats& p = s.predictor;
  if (p.flops > 0) {
    std::snprintf(buf, sizeof(buf),
                  "; predictor: %.1f%% of FFN FLOPs, %.1f%% of FFN bytes, precision %.1f%% "
                  "(neurons computed that fire)",
                  100.0 * p.flops_share(), 100.0 * p.bytes_share(), 100.0 * p.precision());
    line += buf;
  }
  return line;
}

nlohmann::json FfnStatsJson(const engine::EngineStats& s) {
  nlohmann::json layers = nlohmann::json::array();
  for (const engine::NeuronLayerStats& l : s.ffn_layers) {
    layers.push_back({{"requested", l.requested},
                      {"pinned", l.pinned},
                      {"cached", l.cached},
                      {"streamed", l.streamed},
                      {"hit_rate", l.hit_rate()}});
  }
  return nlohmann::json{{"bundles_resident", s.bundles_resident},
                        {"bundles_streamed", s.bundles_streamed},
                        {"bundles_cached", s.bundles_cached},
                        {"bundles_admitted", s.bundles_admitted},
                        {"admissions_refused", s.admissions_refused},
                        {"bundles_prefetched", s.bundles_prefetched},
                        {"prefetch_used", s.prefetch_used},
                        {"lookahead_flops", s.predictor.lookahead_flops},
                        {"hit_rate", s.hit_rate()},
                        {"bytes_requested", s.ffn_bytes_requested},
                        {"bytes_read", s.ffn_bytes_read},
                        {"reads", s.ffn_reads},
                        {"read_amplification", s.ffn_read_amplification()},
                        {"predictor", s.predictor.flops == 0
                                          ? nlohmann::json(nullptr)
                                          : nlohmann::json{
                                                {"flops", s.predictor.flops},
                                                {"bytes", s.predictor.bytes},
                                                {"ffn_flops", s.predictor.ffn_flops},
                                                {"ffn_bytes", s.predictor.ffn_bytes},
                                                {"flops_share", s.predictor.flops_share()},
                                                {"bytes_share", s.predictor.bytes_share()},
                                                {"pairs_computed", s.predictor.pairs_computed},
                                                {"pairs_fired", s.predictor.pairs_fired},
                                                {"precision", s.predictor.precision()}}},
                        {"layers", layers}};
}

std::string IoStatsLine(const engine::IoReport& r) {
  const engine::EngineStats& s = r.counters;
  char buf[768];
  std::snprintf(
      buf, sizeof(buf),
      "io: %.1f MiB requested, %.1f MiB read in %llu reads (mean %.1f KiB), "
      "%.1f MiB/s effective, io wait %.1f ms, compute %.1f ms, FFN hit rate %.1f%%, "
      "FFN neurons computed %.1f%%, "
      "peak RSS %.1f MiB; per forward pass (%llu): %.2f MiB read, %.1f reads, io wait %.2f ms, "
      "compute %.2f ms",
      r.mib_requested, r.mib_read, static_cast<unsigned long long>(s.reads),
      r.mean_read_bytes / 1024.0, r.effective_mib_per_s, r.io_wait_ms, r.compute_ms,
      100.0 * s.hit_rate(), 100.0 * s.ffn_computed_fraction(), r.peak_rss_bytes / 1048576.0,
      static_cast<unsigned long long>(s.passes), r.pass_mib_read, r.pass_reads, r.pass_io_wait_ms,
      r.pass_compute_ms);
  std::string line = buf;
  // What the reads were for, per pass: where the bytes and the waits went.
  const double passes = s.passes ? static_cast<double>(s.passes) : 1.0;
  std::string parts;
  for (size_t i = 0; i < layout::kReadSources; ++i) {
    const layout::SourceCounters& c = s.io_by_source[i];
    if (c.reads == 0 && c.wait_ns == 0) continue;
    std::snprintf(buf, sizeof(buf), "%s%s %.2f MiB in %.1f reads, wait %.2f ms",
                  parts.empty() ? "" : "; ",
                  layout::ReadSourceName(static_cast<layout::ReadSource>(i)),
                  c.bytes_read / 1048576.0 / passes, c.reads / passes, c.wait_ns / 1e6 / passes);
    parts += buf;
  }
  if (!parts.empty()) line += "\nio by source, per forward pass: " + parts;
  return line;
}

nlohmann::json IoStatsJson(const engine::IoReport& r, uint64_t tokens, uint64_t planned_bytes) {
  const engine::EngineStats& s = r.counters;
  return nlohmann::json{{"tokens", tokens},
                        {"passes", s.passes},
                        {"bytes_requested", s.bytes_requested},
                        {"bytes_read", s.bytes_read},
                        {"reads", s.reads},
                        {"mean_read_bytes", r.mean_read_bytes},
                        {"effective_mib_per_s", r.effective_mib_per_s},
                        {"io_wait_ms", r.io_wait_ms},
                        {"compute_ms", r.compute_ms},
                        {"cache_hit_rate", s.hit_rate()},
                        {"bundles_resident", s.bundles_resident},
                        {"bundles_streamed", s.bundles_streamed},
                        {"ffn_neurons_computed", s.ffn_neurons_computed},
                        {"ffn_neurons_total", s.ffn_neurons_total},
                        {"planned_bytes", planned_bytes},
                        {"peak_rss_bytes", r.peak_rss_bytes},
                        {"by_source", layout::ReadSourcesJson(s.io_by_source)}};
}

nlohmann::json GenerationJson(const engine::GenerationStats& s, const std::vector<int32_t>* ids) {
  nlohmann::json j{{"prompt_tokens", s.prompt_tokens},
                   {"generated_tokens", s.generated_tokens},
                   {"ttft_ms", s.ttft_ms},
                   {"prefill_ms", s.prefill_ms},
                   {"prefill_tokens_per_s", s.prefill_tokens_per_s()},
                   {"decode_ms", s.decode_ms},
                   {"decode_tokens_per_s", s.decode_tokens_per_s()},
                   {"total_ms", s.total_ms},
                   {"stop_reason", s.stop_reason},
                   {"token_ms", s.token_ms}};
  if (ids != nullptr) j["ids"] = *ids;
  return j;
}

}  // namespace flashlm::tools
