#include "engine/session.h"

#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <thread>

#include "layout/byte_source.h"
#include "layout/ffn_predictor.h"
#include "layout/ffn_thresholds.h"
#include "layout/gguf_reader.h"
#include "layout/llama2c_reader.h"
#include "layout/store_reader.h"
#include "storage/check.h"

namespace flashlm::engine {

Status LoadStoreSideFiles(const std::string& store_path, uint64_t identity,
                          const layout::ModelConfig& config, SessionOptions* options) {
  if (options->transformer.sparsity == FfnSparsity::kThreshold) {
    const std::string file = options->ffn_thresholds_path.empty()
                                 ? store_path + "/" + std::string(layout::kFfnThresholdsFileName)
                                 : options->ffn_thresholds_path;
    ASSIGN_OR_RETURN(layout::FfnThresholds t,
                     layout::LoadFfnThresholds(file, identity, config.n_layers, config.hidden_dim));
    options->transformer.ffn_thresholds = std::move(t.thresholds);
  }
  if (options->transformer.sparsity == FfnSparsity::kPredictor || options->transformer.lookahead) {
    const std::string file = options->ffn_predictor_path.empty()
                                 ? store_path + "/" + std::string(layout::kFfnPredictorFileName)
                                 : options->ffn_predictor_path;
    ASSIGN_OR_RETURN(layout::FfnPredictor p,
                     layout::LoadFfnPredictor(file, identity, config.n_layers, config.dim,
                                              config.hidden_dim));
    // Held and multiplied as f16 (half the DRAM the budget gives it), converted before anything
    // the plan counts is allocated; f32 only when a value does not fit f16.
    layout::HoldAsF16(&p);
    options->transformer.ffn_predictor = std::make_shared<const layout::FfnPredictor>(std::move(p));
  }
  return Status::Ok();
}

uint64_t PeakRssBytes() {
  struct rusage ru {};
  if (getrusage(RUSAGE_SELF, &ru) != 0) return 0;
  return static_cast<uint64_t>(ru.ru_maxrss) * 1024;  // Linux reports KiB
}

IoReport IoReport::Make(const EngineStats& s, double forward_ms) {
  IoReport r;
  r.counters = s;
  r.forward_ms = forward_ms;
  r.mib_requested = s.bytes_requested / 1048576.0;
  r.mib_read = s.bytes_read / 1048576.0;
  r.mean_read_bytes = s.reads ? static_cast<double>(s.bytes_read) / s.reads : 0.0;
  r.io_wait_ms = s.io_wait_ns / 1e6;
  r.effective_mib_per_s = r.io_wait_ms > 0 ? r.mib_read / (r.io_wait_ms / 1000.0) : 0.0;
  r.compute_ms = forward_ms > r.io_wait_ms ? forward_ms - r.io_wait_ms : 0.0;
  const double passes = s.passes ? static_cast<double>(s.passes) : 1.0;
  r.pass_mib_read = r.mib_read / passes;
  r.pass_reads = s.reads / passes;
  r.pass_io_wait_ms = r.io_wait_ms / passes;
  r.pass_compute_ms = r.compute_ms / passes;
  r.peak_rss_bytes = PeakRssBytes();
  return r;
}

namespace {

// The options with the context made explicit, checked against the model before anything is sized
// by them.
Result<TransformerOptions> Resolve(const SessionOptions& so, const layout::ModelConfig& config) {
  TransformerOptions o = so.transformer;
  const uint32_t ctx = o.max_context == 0
                           ? std::min(config.max_seq_len, std::max(1u, so.default_context_max))
                           : o.max_context;
  if (ctx == 0 || ctx > config.max_seq_len) {
    return InvalidArgumentError("context " + std::to_string(ctx) + " exceeds the model's maximum " +
                                std::to_string(config.max_seq_len));
  }
  if (ctx > kContextMax) {
    return InvalidArgumentError("context " + std::to_string(ctx) +
                                " exceeds the engine's maximum " + std::to_string(kContextMax));
  }
  o.max_context = ctx;
  // With page selection --kv-topn is its position budget (engine/attention_pages.h), not a
  // selection of its own.
  o.select_pages = so.kv.select_pages;
  o.select_pages_shared = so.kv.select_pages && so.kv.select_shared;
  o.selective_fetch = so.kv.paged && !so.kv_topn.all() && !so.kv.select_pages;
  if (so.kv.select_pages && !so.kv.paged) {
    return InvalidArgumentError("--kv-select pages needs the paged KV cache");
  }
  if (so.kv.spill_keys && !so.kv.select_pages) {
    return InvalidArgumentError(
        "--kv-spill kv needs --kv-select pages (exact attention reads every K row every token)");
  }
  if (so.kv.select_pages && so.kv.fetch_rows) {
    return InvalidArgumentError(
        "--kv-fetch rows does not apply with --kv-select pages (chosen pages are read whole)");
  }
  if (o.lazy.enabled()) {
    RETURN_IF_ERROR(ValidateLazy(o.lazy, config.n_layers));
    if (o.observe_ffn) {
      // Activation statistics and calibration count every token at every layer: pruned tokens
      // would silently drop out of the upper layers' figures.
      return InvalidArgumentError(
          "--lazy-prefill cannot be used when collecting FFN statistics (activations, calibrate)");
    }
  }
  return o;
}

// DRAM this machine can give now: MemAvailable (free plus reclaimable cache), else the physical
// memory; 0 when unknown.
uint64_t MachineMemoryBytes() {
  if (FILE* f = std::fopen("/proc/meminfo", "re")) {
    char line[256];
    unsigned long long kib = 0;
    bool found = false;
    while (!found && std::fgets(line, sizeof line, f)) {
      found = std::sscanf(line, "MemAvailable: %llu kB", &kib) == 1;
    }
    std::fclose(f);
    if (found) return static_cast<uint64_t>(kib) * 1024;
  }
  const long pages = sysconf(_SC_PHYS_PAGES);
  const long page = sysconf(_SC_PAGE_SIZE);
  return pages > 0 && page > 0 ? static_cast<uint64_t>(pages) * static_cast<uint64_t>(page) : 0;
}

// What a context costs (KV cache and the forward pass's buffers, which grow with it) checked
// against the machine before any of it is allocated: a declared context of 2^31-1 asked for
// explicitly must fail here, not after minutes of zeroing gigabytes.
Status CheckContextFits(uint32_t ctx, uint64_t kv_bytes, uint64_t activation_bytes) {
  const uint64_t machine = MachineMemoryBytes();
  if (machine != 0 && kv_bytes + activation_bytes > machine) {
    return InvalidArgumentError(
        "context " + std::to_string(ctx) + " needs " + FormatBytes(kv_bytes) + " of KV cache and " +
        FormatBytes(activation_bytes) + " of activations, more than the " + FormatBytes(machine) +
        " of memory available on this machine; ask for a smaller --ctx");
  }
  return Status::Ok();
}

// The options a session refuses before it reads anything.
Status CheckOptions(const SessionOptions& o) {
  const uint32_t cores = std::max(1u, std::thread::hardware_concurrency());
  if (o.threads > kThreadsPerCoreMax * cores) {
    return InvalidArgumentError("--threads " + std::to_string(o.threads) + " is more than " +
                                std::to_string(kThreadsPerCoreMax) + " per core (" +
                                std::to_string(cores) + " cores: at most " +
                                std::to_string(kThreadsPerCoreMax * cores) + ")");
  }
  if (!o.tokenizer_path.empty()) {
    std::error_code ec;
    if (!std::filesystem::is_regular_file(o.tokenizer_path, ec)) {
      return NotFoundError("tokenizer " + o.tokenizer_path + ": no such file");
    }
  }
  return Status::Ok();
}

}  // namespace

Result<SessionPlan> PlanSession(const StoreNeeds& needs, const layout::ModelConfig& config,
                                const SessionOptions& options, uint32_t threads,
                                uint64_t tokenizer_bytes) {
  // The engine's own bytes, from the same functions its parts allocate with.
  SessionPlan sp;
  ASSIGN_OR_RETURN(sp.transformer, Resolve(options, config));
  const TransformerOptions& topts = sp.transformer;
  WeightsShape shape;
  shape.bundles = needs.bundles;
  sp.activation_bytes = Transformer::BytesNeeded(config, topts, threads, shape);
  if (options.kv.paged) {
    ASSIGN_OR_RETURN(sp.kv_layout, PagedKvCache::Layout(config, topts.max_context,
                                                        topts.max_sequences, options.kv));
    sp.kv_full_pool_bytes = cache::KvPageCache::FullPoolBytes(sp.kv_layout);
    const uint64_t minimum = PagedKvCache::MinimumPoolBytes(sp.kv_layout, options.kv);
    if (options.kv.pool_bytes != 0) {
      if (options.kv.pool_bytes < minimum) {
        return InvalidArgumentError("--kv-budget " + FormatBytes(options.kv.pool_bytes) +
                                    " is below the KV cache's minimum of " + FormatBytes(minimum) +
                                    " (" + std::to_string(minimum) +
                                    (options.kv.spill_keys
                                         ? " bytes: one layer's K and V pages, the pages being "
                                           "filled per layer)"
                                         : " bytes: every K page, one layer's V pages, one page "
                                           "being filled per layer)"));
      }
      sp.kv_pool_bytes = std::min(options.kv.pool_bytes, sp.kv_full_pool_bytes);
    } else {
      sp.kv_pool_bytes = sp.kv_full_pool_bytes;
    }
    sp.kv_bytes = PagedKvCache::BytesNeeded(sp.kv_layout, sp.kv_pool_bytes, options.kv);
  } else {
    sp.kv_bytes = FlatKvCache::BytesNeeded(config, topts.max_context, topts.max_sequences);
  }
  ResidencyInputs in = needs.inputs;
  in.budget_bytes = options.budget_bytes;
  // The LRU cache serves a sparse FFN's requests only: a dense one reads every bundle every pass,
  // which an LRU smaller than the model only cycles through (pinned bundles serve it better).
  const bool sparse_ffn =
      topts.sparsity != FfnSparsity::kDense &&
      (topts.sparsity != FfnSparsity::kAuto ||
       (!needs.bundles.has_gate() && config.activation == layout::Activation::kRelu));
  if (!sparse_ffn) in.cache_fraction = 0;
  sp.sparse_ffn = sparse_ffn || topts.lookahead;
  const uint64_t predictor_bytes = Transformer::PredictorBytesNeeded(topts);
  std::vector<std::pair<std::string, uint64_t>> engine_parts = {
      {"activations and scratch", sp.activation_bytes - predictor_bytes},
      {"KV cache", sp.kv_bytes},
      {"tokenizer", tokenizer_bytes}};
  if (predictor_bytes > 0) engine_parts.emplace_back("FFN predictor", predictor_bytes);
  in.fixed_parts.insert(in.fixed_parts.begin(), engine_parts.begin(), engine_parts.end());
  for (const auto& part : engine_parts) in.fixed_bytes += part.second;
  if (in.classifier_demand_bytes > 0) {  // the forward pass's buffer for streamed row blocks
    WeightsShape streamed = shape;
    streamed.classifier_block_rows = needs.classifier.rows_max;
    in.classifier_demand_bytes +=
        Transformer::BytesNeeded(config, topts, threads, streamed) - sp.activation_bytes;
  }
  // The KV share: asked for (--kv-budget), or with a budget the whole cache when the plan holds
  // it next to the weights' minimum, else what the budget has beyond that minimum (KV first:
  // with exact attention every spilled V page is read every token, as a streamed weight is).
  if (options.kv.paged && options.kv.pool_bytes == 0 && in.budget_bytes != 0) {
    const uint64_t minimum = PagedKvCache::MinimumPoolBytes(sp.kv_layout, options.kv);
    const uint64_t least_kv = PagedKvCache::BytesNeeded(sp.kv_layout, minimum, options.kv);
    ResidencyInputs least = in;
    least.fixed_bytes = least.fixed_bytes - sp.kv_bytes + least_kv;
    Result<ResidencyPlan> p = PlanResidency(least);
    if (!p.ok()) {  // below the minimum even with the least KV pool: that minimum is named
      for (auto& part : least.fixed_parts) {
        if (part.first == "KV cache") part.second = least_kv;
      }
      in = std::move(least);
      sp.kv_pool_bytes = minimum;
      sp.kv_bytes = least_kv;
    } else if (p->minimum_bytes - least_kv + sp.kv_bytes > in.budget_bytes) {
      // The largest pool (in pages) whose bytes fit beside the weights' minimum.
      const uint64_t stride = sp.kv_layout.page_stride_bytes();
      const uint64_t room = in.budget_bytes - (p->minimum_bytes - least_kv);
      uint64_t lo = minimum / stride, hi = sp.kv_full_pool_bytes / stride;
      while (lo < hi) {
        const uint64_t mid = lo + (hi - lo + 1) / 2;
        if (PagedKvCache::BytesNeeded(sp.kv_layout, mid * stride, options.kv) <= room) {
          lo = mid;
        } else {
          hi = mid - 1;
        }
      }
      sp.kv_pool_bytes = std::max(minimum, lo * stride);
      sp.kv_bytes = PagedKvCache::BytesNeeded(sp.kv_layout, sp.kv_pool_bytes, options.kv);
      in.fixed_bytes = least.fixed_bytes - least_kv + sp.kv_bytes;
      for (auto& part : in.fixed_parts) {
        if (part.first == "KV cache") part.second = sp.kv_bytes;
      }
    }
  }
  ASSIGN_OR_RETURN(sp.plan, PlanResidency(in));
  sp.inputs = std::move(in);
  return sp;
}

Session::~Session() = default;

Result<std::unique_ptr<Session>> Session::Open(const std::string& path,
                                               const SessionOptions& options) {
  RETURN_IF_ERROR(CheckOptions(options));
  std::unique_ptr<Session> s(new Session());
  if (layout::StoreReader::LooksLikeStore(path)) {
    RETURN_IF_ERROR(s->OpenStore(path, options));
  } else if (options.budgeted) {
    return InvalidArgumentError("a memory budget needs a store folder; " + path +
                                " is not one (flashlm repack it first)");
  } else {
    RETURN_IF_ERROR(s->OpenCheckpoint(path, options));
  }
  s->ResetStats();
  return s;
}

Status Session::OpenStore(const std::string& path, const SessionOptions& given) {
  SessionOptions options = given;
  layout::StoreReadOptions ro;
  ro.backend = options.backend;
  ro.direct = options.direct;
  ro.verify_every_read = options.verify_every_read;
  ASSIGN_OR_RETURN(std::unique_ptr<layout::StoreReader> reader,
                   layout::StoreReader::Open(path, ro));
  if (!reader->vocab().empty()) {
    ASSIGN_OR_RETURN(tokenizer_, Tokenizer::Create(reader->vocab()));
  } else if (!options.tokenizer_path.empty()) {
    ASSIGN_OR_RETURN(layout::Vocab vocab, layout::ReadLlama2cTokenizer(
                                              options.tokenizer_path, reader->config().vocab_size));
    ASSIGN_OR_RETURN(tokenizer_, Tokenizer::Create(vocab));
  } else {
    return InvalidArgumentError(path + " carries no tokenizer (pass --tokenizer tokenizer.bin)");
  }
  const layout::ModelConfig config = reader->config();
  RETURN_IF_ERROR(LoadStoreSideFiles(path, reader->identity(), config, &options));
  ASSIGN_OR_RETURN(StoreNeeds needs, StoreWeights::Measure(*reader, options.streaming));
  pool_ = std::make_unique<ThreadPool>(options.threads);

  ASSIGN_OR_RETURN(SessionPlan sp, PlanSession(needs, config, options, pool_->size(),
                                               tokenizer_->resident_bytes()));
  const TransformerOptions topts = sp.transformer;
  const uint32_t ctx = topts.max_context;
  plan_ = std::move(sp.plan);
  RETURN_IF_ERROR(CheckContextFits(ctx, sp.kv_bytes, sp.activation_bytes));

  StreamingOptions streaming = options.streaming;
  streaming.regroup_pinned = !sp.sparse_ffn;
  streaming.regroup_threads = pool_->size();
  ASSIGN_OR_RETURN(std::unique_ptr<StoreWeights> store,
                   StoreWeights::Open(std::move(reader), needs, plan_, streaming));
  store_ = store.get();
  weights_ = std::move(store);
  if (options.kv.paged) {
    ASSIGN_OR_RETURN(std::unique_ptr<PagedKvCache> paged,
                     PagedKvCache::Create(config, ctx, topts.max_sequences, options.kv,
                                          sp.kv_pool_bytes, options.backend, options.direct));
    paged_kv_ = paged.get();
    kv_ = std::move(paged);
  } else {
    ASSIGN_OR_RETURN(kv_, FlatKvCache::Create(config, ctx, topts.max_sequences));
  }
  if (paged_kv_ != nullptr) CHECK_EQ(kv_->resident_bytes(), sp.kv_bytes);
  ASSIGN_OR_RETURN(model_, Transformer::Create(*weights_, *pool_, topts, kv_.get()));
  if (!options.kv_topn.all()) {
    topn_ = std::make_unique<TopNAttention>(options.kv_topn);
    topn_spec_ = options.kv_topn;
    if (!options.kv.select_pages) model_->set_attention_policy(topn_.get());
  }
  if (options.kv.select_pages) {
    page_attention_ = std::make_unique<PageAttention>(options.kv_topn, options.kv.page_tokens);
    options_select_shared_ = options.kv.select_shared;
    RETURN_IF_ERROR(model_->set_page_selection(page_attention_.get()));
  }
  // What was allocated is what was planned for (the plan's inputs come from the same functions).
  CHECK_EQ(model_->resident_bytes(),
           Transformer::BytesNeeded(config, topts, pool_->size(), WeightsShape::Of(*weights_)));
  planned_bytes_ = plan_.total_bytes();
  return Status::Ok();
}

Status Session::OpenCheckpoint(const std::string& path, const SessionOptions& options) {
  layout::OpenOptions open;
  open.tokenizer_path = options.tokenizer_path;
  Result<std::unique_ptr<layout::Checkpoint>> ck = layout::OpenCheckpoint(path, open);
  bool separate_tokenizer = false;
  if (!ck.ok() && !options.tokenizer_path.empty()) {
    // Readers other than llama2.c's take only tokenizer.model / tokenizer.json; a llama2.c
    // tokenizer.bin for such a checkpoint is read here instead.
    Result<std::unique_ptr<layout::Checkpoint>> plain = layout::OpenCheckpoint(path);
    if (!plain.ok()) return ck.status();
    ck = std::move(plain);
    separate_tokenizer = true;
  }
  if (!ck.ok()) return ck.status();
  checkpoint_ = std::move(ck).value();
  if (separate_tokenizer || (checkpoint_->vocab().empty() && !options.tokenizer_path.empty())) {
    ASSIGN_OR_RETURN(
        layout::Vocab vocab,
        layout::ReadLlama2cTokenizer(options.tokenizer_path, checkpoint_->config().vocab_size));
    ASSIGN_OR_RETURN(tokenizer_, Tokenizer::Create(vocab));
  } else if (checkpoint_->vocab().empty()) {
    return InvalidArgumentError(path + " carries no tokenizer (pass --tokenizer tokenizer.bin)");
  } else {
    ASSIGN_OR_RETURN(tokenizer_, Tokenizer::Create(checkpoint_->vocab()));
  }
  const layout::ModelConfig& config = checkpoint_->config();
  ASSIGN_OR_RETURN(const TransformerOptions topts, Resolve(options, config));
  const uint32_t ctx = topts.max_context;
  pool_ = std::make_unique<ThreadPool>(options.threads);
  RETURN_IF_ERROR(
      CheckContextFits(ctx, FlatKvCache::BytesNeeded(config, ctx, topts.max_sequences),
                       Transformer::BytesNeeded(config, topts, pool_->size(), WeightsShape{})));
  ASSIGN_OR_RETURN(std::unique_ptr<DramWeightStore> dram, DramWeightStore::Load(*checkpoint_));
  const uint64_t weight_bytes = dram->resident_bytes();
  decode_weight_bytes_ = dram->decode_bytes_per_token();
  weights_ = std::move(dram);
  if (options.kv.paged) {
    ASSIGN_OR_RETURN(const layout::VCacheLayout kl,
                     PagedKvCache::Layout(config, ctx, topts.max_sequences, options.kv));
    const uint64_t full = cache::KvPageCache::FullPoolBytes(kl);
    const uint64_t pool = options.kv.pool_bytes ? std::min(options.kv.pool_bytes, full) : full;
    ASSIGN_OR_RETURN(std::unique_ptr<PagedKvCache> paged,
                     PagedKvCache::Create(config, ctx, topts.max_sequences, options.kv, pool,
                                          options.backend, options.direct));
    paged_kv_ = paged.get();
    kv_ = std::move(paged);
  } else {
    ASSIGN_OR_RETURN(kv_, FlatKvCache::Create(config, ctx, topts.max_sequences));
  }
  ASSIGN_OR_RETURN(model_, Transformer::Create(*weights_, *pool_, topts, kv_.get()));
  if (!options.kv_topn.all()) {
    topn_ = std::make_unique<TopNAttention>(options.kv_topn);
    topn_spec_ = options.kv_topn;
    if (!options.kv.select_pages) model_->set_attention_policy(topn_.get());
  }
  if (options.kv.select_pages) {
    page_attention_ = std::make_unique<PageAttention>(options.kv_topn, options.kv.page_tokens);
    options_select_shared_ = options.kv.select_shared;
    RETURN_IF_ERROR(model_->set_page_selection(page_attention_.get()));
  }
  planned_bytes_ = weight_bytes + model_->resident_bytes() + kv_->resident_bytes() +
                   tokenizer_->resident_bytes();
  return Status::Ok();
}

namespace {

std::string DescribeKv(const PagedKvCache* kv) {
  if (kv == nullptr) return "";
  const cache::KvPageCache& p = kv->pages();
  const layout::VCacheLayout& l = p.layout();
  const uint64_t full = cache::KvPageCache::FullPoolBytes(l);
  std::string s = "  KV cache: paged, " + std::to_string(l.tokens_per_page) + "-token pages of " +
                  std::string(layout::DTypeName(l.dtype)) + " (" +
                  FormatBytes(l.page_stride_bytes()) + " each), pool " +
                  FormatBytes(p.pool_bytes()) + " of the " + FormatBytes(full) +
                  " the whole cache needs";
  if (p.spills()) {
    s += std::string(p.spill_keys() ? "; K and V pages" : "; K in DRAM, V pages") +
         " beyond the pool spill to " + p.spill_path() + " (" +
         std::string(p.backend_name()) + ", unlinked)";
  }
  return s + "\n";
}

}  // namespace

std::string Session::Describe() const {
  if (store_ == nullptr) {
    return "weights: " + FormatBytes(planned_bytes_) + " in DRAM, read from the checkpoint\n" +
           DescribeKv(paged_kv_);
  }
  std::string s = plan_.Describe() + DescribeKv(paged_kv_);
  if (page_attention_ != nullptr) {
    s += "  attention: page selection (" +
         std::string(options_select_shared_ ? "one choice shared by every head" : "per head") +
         "), budget " + (topn_ != nullptr ? topn_spec_.ToString() : std::string("all")) +
         " positions in whole pages, exact over the pages chosen" +
         (paged_kv_ != nullptr && paged_kv_->pages().spill_keys() ? "; K and V pages spill\n"
                                                                  : "\n");
  } else if (topn_ != nullptr) {
    s += "  attention: top-N, " + topn_spec_.ToString() +
         " positions per head kept (probabilities renormalised over them)" +
         (paged_kv_ != nullptr && paged_kv_->spills() ? "; only the V pages holding them are read\n"
                                                      : "\n");
  }
  const layout::StoreReader& r = store_->reader();
  s += "  reads: " + std::string(r.backend_name()) + " backend, " +
       (r.direct_io() ? "O_DIRECT" : "buffered (O_DIRECT refused)") + ", FFN chunks " +
       (store_->split_reads() ? "one read per matrix row of a bundle (split reads)"
        : store_->coalesced() ? "as merged reads"
                              : "one read per bundle") +
       (store_->pipelined() ? ", pipelined (chunks, attention and classifier read ahead)" : "") +
       (r.verifies_every_read() ? ", checksums on every read"
                                : ", checksums on each extent's first read") +
       "\n  FFN: " +
       (model_->sparsity() == FfnSparsity::kRelu
            ? "relu sparsity (the dense gate first, then only the firing neurons' bundles)"
        : model_->sparsity() == FfnSparsity::kThreshold
            ? "threshold sparsity (the dense gate first, then only the bundles of neurons above "
              "the layer's calibrated cut; approximate)"
        : model_->sparsity() == FfnSparsity::kPredictor
            ? "predictor sparsity (a low-rank predictor on the FFN input, then only the predicted "
              "neurons' bundles; approximate)"
            : "dense (every neuron)") +
       (model_->lookahead() ? "; lookahead: the predictor's guess at each layer's bundles read "
                              "ahead while its attention computes"
                            : "") +
       "\n";
  const NeuronSource& n = *store_->neurons();
  if (model_->sparsity() != FfnSparsity::kDense) {
    s += "  FFN misses merged across gaps of up to " + FormatBytes(n.merge_gap_bytes()) +
         "; bundle cache: " +
         (n.cache_slots()
              ? std::to_string(n.cache_slots()) + " LRU slots" +
                    (n.window_passes() ? ", window " + std::to_string(n.window_passes()) + " tokens"
                                       : std::string(", no window"))
              : std::string("none (pinned bundles only)")) +
         "\n";
  }
  return s;
}

EngineStats Session::stats() const {
  EngineStats s;
  FillStats(&s);
  return s;
}

void Session::FillStats(EngineStats* out) const {
  EngineStats& s = *out;
  std::vector<NeuronLayerStats> layers = std::move(s.ffn_layers);
  s = EngineStats();
  s.ffn_layers = std::move(layers);
  s.ffn_layers.clear();
  s.passes = model_->passes() - passes_base_;
  s.ffn_neurons_computed = model_->ffn_neurons_computed() - computed_base_;
  s.ffn_neurons_total = model_->ffn_neurons_total() - total_base_;
  if (store_ != nullptr) {
    const StoreCounters c = store_->counters();
    s.bytes_requested = c.reads.bytes_requested;
    s.bytes_read = c.reads.bytes_read;
    s.reads = c.reads.reads;
    s.io_wait_ns = c.reads.wait_ns;
    s.io_by_source = c.reads.by_source;
    s.bundles_resident = c.neurons.bundles_resident;
    s.bundles_streamed = c.neurons.bundles_streamed;
    s.bundles_cached = c.neurons.bundles_cached;
    s.bundles_admitted = c.neurons.bundles_admitted;
    s.admissions_refused = c.neurons.admissions_refused;
    s.bundles_prefetched = c.neurons.bundles_prefetched;
    s.prefetch_used = c.neurons.prefetch_used;
    s.ffn_bytes_requested = c.neurons.bytes_requested;
    s.ffn_bytes_read = c.neurons.bytes_read;
    s.ffn_reads = c.neurons.reads;
    const std::span<const NeuronLayerStats> layers = store_->neurons()->layer_stats();
    s.ffn_layers.assign(layers.begin(), layers.end());
  }
  s.attention_ns = model_->attention_ns() - attention_base_;
  s.lazy = model_->lazy_stats();
  s.predictor = model_->predictor_stats();
  s.kv_resident_bytes = kv_->resident_bytes();
  if (paged_kv_ != nullptr) {
    const cache::KvPageStats& k = paged_kv_->pages().stats();
    s.kv_resident_bytes = paged_kv_->pages().resident_page_bytes();
    s.kv_bytes_read = k.bytes_read;
    s.kv_reads = k.reads;
    s.kv_bytes_written = k.bytes_written;
    s.kv_io_wait_ns = k.io_wait_ns;
    s.kv_page_hits = k.page_hits;
    s.kv_page_misses = k.page_misses;
  }
  s.kv_pages = model_->page_stats();
}

void Session::ResetStats() {
  passes_base_ = model_->passes();
  computed_base_ = model_->ffn_neurons_computed();
  total_base_ = model_->ffn_neurons_total();
  attention_base_ = model_->attention_ns();
  model_->ResetLazyStats();
  model_->ResetPageStats();
  model_->ResetPredictorStats();
  if (paged_kv_ != nullptr) paged_kv_->pages().ResetStats();
  if (store_ != nullptr) store_->ResetCounters();
}

Result<std::unique_ptr<Tokenizer>> OpenTokenizer(const std::string& path) {
  if (!std::filesystem::exists(path)) return NotFoundError(path + ": no such file or folder");
  Result<std::unique_ptr<layout::Checkpoint>> ck = layout::OpenCheckpoint(path);
  if (ck.ok()) {
    if ((*ck)->vocab().empty()) return InvalidArgumentError(path + " carries no tokenizer");
    return Tokenizer::Create((*ck)->vocab());
  }
  // Not a runnable checkpoint: a vocab-only GGUF (header and metadata, no tensors)?
  if (Result<std::unique_ptr<layout::ByteSource>> src = layout::OpenFileSource(path); src.ok()) {
    Result<layout::GgufFile> gguf = layout::GgufFile::Parse(**src);
    if (gguf.ok()) {
      ASSIGN_OR_RETURN(layout::Vocab vocab, layout::GgufVocab(*gguf));
      return Tokenizer::Create(vocab);
    }
  }
  // Or a bare llama2.c tokenizer.bin.
  Result<layout::Vocab> vocab = layout::ReadLlama2cTokenizer(path);
  if (!vocab.ok()) {
    return ck.status().WithContext("not a checkpoint, and not a llama2.c tokenizer (" +
                                   vocab.status().ToString() + ")");
  }
  return Tokenizer::Create(*vocab);
}

}  // namespace flashlm::engine
