#include "engine/model_plan.h"

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <map>
#include <memory>

#include "engine/thread_pool.h"
#include "engine/tokenizer.h"
#include "layout/llama2c_reader.h"
#include "layout/llama_tensors.h"
#include "layout/store_reader.h"
#include "layout/synth.h"
#include "storage/aligned_buffer.h"
#include "storage/file.h"

namespace flashlm::engine {
namespace {

std::string GroupOf(std::string_view name) {
  if (name == "token_embd.weight") return "embedding";
  if (name == "output.weight") return "classifier";
  if (name.find("norm") != std::string_view::npos) return "norms";
  if (name.find(".attn_") != std::string_view::npos) return "attention";
  if (name.find(".ffn_gate") != std::string_view::npos) return "FFN gate";
  return "other";
}

// Adds dense tensors (stored dtypes) and the bundles to plan->groups, in a fixed order.
void FillGroups(const std::vector<layout::TensorInfo>& dense, const layout::BundleGeometry& g,
                const layout::ModelConfig& c, ModelPlan* plan) {
  const char* order[] = {"embedding", "attention", "FFN gate", "FFN bundles",
                         "classifier", "norms",     "other"};
  std::map<std::string, WeightGroup> by;
  std::map<std::string, std::map<std::string, int>> dtypes;
  for (const layout::TensorInfo& t : dense) {
    WeightGroup& w = by[GroupOf(t.name)];
    ++w.tensors;
    w.values += t.num_values();
    w.bytes += t.size_bytes();
    dtypes[GroupOf(t.name)][std::string(layout::DTypeName(t.dtype))] = 1;
  }
  WeightGroup& b = by["FFN bundles"];
  b.tensors = uint64_t{c.n_layers} * (g.has_gate() ? 3 : 2);
  b.values = uint64_t{c.n_layers} * c.hidden_dim * c.dim * (g.has_gate() ? 3 : 2);
  b.bytes = uint64_t{c.n_layers} * c.hidden_dim * g.bundle_bytes;
  dtypes["FFN bundles"][std::string(layout::DTypeName(g.dtype))] = 1;
  for (const char* name : order) {
    auto it = by.find(name);
    if (it == by.end() || it->second.tensors == 0) continue;
    WeightGroup w = it->second;
    w.name = name;
    for (const auto& [d, unused] : dtypes[name]) w.dtype += (w.dtype.empty() ? "" : "+") + d;
    plan->weight_bytes += w.bytes;
    plan->parameters += w.values;
    plan->groups.push_back(std::move(w));
  }
}

Result<ModelPlan> PlanStore(const std::string& path, const ModelPlanOptions& o) {
  ASSIGN_OR_RETURN(std::unique_ptr<layout::StoreReader> reader, layout::StoreReader::Open(path));
  ModelPlan plan;
  plan.kind = "store";
  plan.source = path;
  plan.measured = true;
  plan.config = reader->config();
  plan.store_identity = reader->identity();
  ASSIGN_OR_RETURN(plan.needs, StoreWeights::Measure(*reader, o.streaming));
  std::vector<layout::TensorInfo> dense;
  for (const layout::TensorInfo& t : reader->tensors()) {
    ASSIGN_OR_RETURN(layout::TensorLocation loc, reader->LocateTensor(t.name));
    if (loc.record.placement != static_cast<uint8_t>(layout::Placement::kDense)) continue;
    dense.push_back(layout::TensorInfo{t.name, static_cast<layout::DType>(loc.record.dtype),
                                       t.shape});
  }
  FillGroups(dense, plan.needs.bundles, plan.config, &plan);
  plan.flash_bytes = reader->data_file_bytes(0);
  plan.probe_file = reader->DataFilePath(0);
  if (!reader->vocab().empty()) {
    ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> tok, Tokenizer::Create(reader->vocab()));
    plan.tokenizer_bytes = tok->resident_bytes();
  } else if (!o.tokenizer_path.empty()) {
    ASSIGN_OR_RETURN(layout::Vocab vocab,
                     layout::ReadLlama2cTokenizer(o.tokenizer_path, plan.config.vocab_size));
    ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> tok, Tokenizer::Create(vocab));
    plan.tokenizer_bytes = tok->resident_bytes();
  }
  return plan;
}

// A checkpoint or a shape: as repack would store it.
Result<ModelPlan> PlanEstimate(const layout::ModelConfig& config,
                               const std::vector<layout::TensorInfo>& tensors,
                               const layout::Vocab& vocab, const ModelPlanOptions& o,
                               ModelPlan plan) {
  plan.config = config;
  ASSIGN_OR_RETURN(layout::StoreShape shape,
                   layout::PlanStoreShape(config, tensors, vocab, o.repack));
  // The store would be read at the O_DIRECT alignment of the device the model is on (4 KiB when
  // there is no file to ask).
  uint64_t read_alignment = 4096;
  if (!plan.probe_file.empty()) {
    Result<storage::File> f = storage::File::OpenForRead(plan.probe_file);
    if (f.ok()) read_alignment = f->required_alignment_bytes();
  }
  read_alignment = std::min(read_alignment, shape.alignment_bytes);
  ASSIGN_OR_RETURN(plan.needs, StoreWeights::Estimate(shape, o.streaming, read_alignment));
  FillGroups(shape.dense, plan.needs.bundles, config, &plan);
  // On flash: every extent at an aligned offset.
  const uint64_t a = shape.alignment_bytes;
  plan.flash_bytes = uint64_t{config.n_layers} * config.hidden_dim * plan.needs.bundles.stride_bytes;
  for (size_t i = 0; i < shape.dense.size(); ++i) {
    const layout::TensorInfo& t = shape.dense[i];
    const uint64_t rpe = shape.rows_per_extent[i];
    const uint64_t row = layout::RowBytes(t.dtype, t.cols());
    for (uint64_t r0 = 0; r0 < t.rows(); r0 += rpe) {
      plan.flash_bytes += AlignUp(std::min(rpe, t.rows() - r0) * row, a);
    }
  }
  if (!vocab.empty()) {
    ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> tok, Tokenizer::Create(vocab));
    plan.tokenizer_bytes = tok->resident_bytes();
  }
  return plan;
}

}  // namespace

Result<ModelPlan> PlanModel(const std::string& path, const ModelPlanOptions& o) {
  if (!o.shape.empty()) {
    Result<layout::ModelConfig> config = layout::SynthShape(o.shape);
    if (!config.ok()) return NotFoundError(config.status().message());
    layout::ModelConfig c = *config;
    std::vector<layout::TensorInfo> tensors = layout::ExpectedLlamaTensors(c);
    const layout::DType dtype = o.repack.dtype.value_or(layout::DType::kF32);
    for (layout::TensorInfo& t : tensors) {
      if (t.shape.size() == 2) t.dtype = dtype;
    }
    ModelPlan plan;
    plan.kind = "shape";
    plan.source = o.shape;
    return PlanEstimate(c, tensors, layout::Vocab{}, o, std::move(plan));
  }
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) return NotFoundError("no such file or folder: " + path);
  if (layout::StoreReader::LooksLikeStore(path)) return PlanStore(path, o);
  layout::OpenOptions open;
  open.tokenizer_path = o.tokenizer_path;
  ASSIGN_OR_RETURN(std::unique_ptr<layout::Checkpoint> ck, layout::OpenCheckpoint(path, open));
  ModelPlan plan;
  plan.kind = std::string(ck->format());
  plan.source = path;
  if (std::filesystem::is_regular_file(path, ec)) plan.probe_file = path;
  return PlanEstimate(ck->config(), ck->tensors(), ck->vocab(), o, std::move(plan));
}

Result<Prediction> Predict(const ModelPlan& model, const SessionOptions& session, uint32_t threads,
                           const CostOptions& cost, double dram_gbps,
                           const storage::FlashProfile* profile) {
  Prediction p;
  SessionOptions options = session;
  if (model.kind == "store") {
    RETURN_IF_ERROR(
        LoadStoreSideFiles(model.source, model.store_identity, model.config, &options));
  }
  ASSIGN_OR_RETURN(p.session,
                   PlanSession(model.needs, model.config, options, threads, model.tokenizer_bytes));
  p.cost = CostOfToken(model.config, model.needs, p.session.plan, cost);
  p.bounds = BoundSpeed(p.cost, dram_gbps, profile, cost.batch);
  return p;
}

uint64_t ReadBytesReaching(const storage::FlashProfile& profile, double fraction) {
  double best = 0;
  if (profile.curves.empty()) return 0;
  const storage::FlashCurve& deepest = profile.curves.back();
  const auto& points = deepest.sequential.empty() ? deepest.random : deepest.sequential;
  for (const auto& [bytes, mibs] : points) best = std::max(best, mibs);
  for (const auto& [bytes, mibs] : points) {
    if (mibs >= fraction * best) return bytes;
  }
  return points.empty() ? 0 : points.back().first;
}

double MeasureDramReadGBps(uint32_t threads, uint64_t bytes) {
  threads = std::max<uint32_t>(threads, 1);
  // On huge pages, as the weights are held (DramWeightStore, a store's pinned parts).
  Result<storage::AlignedBuffer> buffer =
      storage::AlignedBuffer::Allocate(bytes, 4096, /*huge_pages=*/true);
  if (!buffer.ok()) return 0;
  const uint64_t words = bytes / sizeof(uint64_t);
  uint64_t* data = reinterpret_cast<uint64_t*>(buffer->data());
  for (uint64_t i = 0; i < words; ++i) data[i] = i;
  // The kernels' pool reads the buffer, as a decode step reads its weights: threads started
  // once (threads spawned for each pass started late or shared a core, and 2 threads measured
  // about half of what a 2-thread decode reads: docs/benchmarks.md), chunks claimed as they go.
  ThreadPool pool(threads);
  constexpr uint64_t kLine = 64 / sizeof(uint64_t);  // one sum a cache line: no false sharing
  std::vector<uint64_t> sums(uint64_t{threads} * kLine);
  double best = 0;
  for (int pass = 0; pass < 4; ++pass) {  // the first wakes the pool and is not counted
    const auto start = std::chrono::steady_clock::now();
    pool.ParallelFor(words, 1u << 16, [&](uint64_t lo, uint64_t hi, uint32_t t) {
      uint64_t a = 0, b = 0, c = 0, d = 0;
      uint64_t i = lo;
      for (; i + 4 <= hi; i += 4) {
        a += data[i];
        b += data[i + 1];
        c += data[i + 2];
        d += data[i + 3];
      }
      for (; i < hi; ++i) a += data[i];
      sums[t * kLine] += a + b + c + d;
    });
    const double s =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (pass > 0) best = std::max(best, double(bytes) / s / 1e9);
  }
  volatile uint64_t sink = 0;  // keeps the sums (and so the reads) alive
  for (uint64_t v : sums) sink = sink + v;
  return best;
}

}  // namespace flashlm::engine
