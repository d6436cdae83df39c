#include "engine/store_weights.h"

#include <algorithm>
#include <string>

#include "layout/llama_tensors.h"
#include "storage/aligned_buffer.h"

namespace flashlm::engine {
namespace {

using layout::LayerTensor;

constexpr uint64_t kReadMaxBytes = 1ull << 20;  // one read, at most
constexpr uint64_t kStagingBytes = 4ull << 20;  // synchronous reads (pinned weights, fallbacks)

}  // namespace

namespace {

// What the parts' layouts do not say: where the store's catalog and read path stand.
struct ReadGeometry {
  uint64_t catalog_bytes = 0;
  uint64_t read_alignment_bytes = 4096;   // the data files' O_DIRECT alignment
  uint64_t store_alignment_bytes = 4096;  // the store's extent alignment
  std::vector<uint32_t> hot;              // [layer] hot-set size
};

// The second half of Measure and Estimate: from the parts' layouts to the ExtentReader's limits
// and the store's ResidencyInputs.
StoreNeeds Complete(StoreNeeds needs, const layout::ModelConfig& c, const ReadGeometry& geo,
                    const StreamingOptions& options, layout::ExtentReaderLimits* limits) {
  const layout::BundleGeometry& g = needs.bundles;
  // The ExtentReader's bounds: every part's reads in flight at once, a group per buffer.
  const uint32_t chunk = std::min(options.chunk_bundles, c.hidden_dim);
  const uint64_t a = geo.read_alignment_bytes;
  const bool coalesce = NeuronSource::Coalesces(g, a, geo.store_alignment_bytes,
                                                options.coalesce && !options.split_bundle_reads);
  const uint64_t split = options.split_bundle_reads ? NeuronSource::SplitReadBytes(g, a) : 0;
  limits->read_max_bytes = kReadMaxBytes;
  limits->staging_bytes = kStagingBytes;
  limits->queue_depth =
      options.chunk_buffers * NeuronSource::ChunkReadsMax(g, chunk, kReadMaxBytes, coalesce, split) +
      needs.attention.reads_max + 2 * needs.classifier.reads_per_block + needs.embedding.reads_max +
      8;  // the synchronous path's own
  limits->groups = options.chunk_buffers + 1 + 2 + 1;

  ResidencyInputs& in = needs.inputs;
  const uint64_t norms = (2 * uint64_t{c.n_layers} + 1) * AlignUp(uint64_t{c.dim} * 4, 64);
  in.fixed_parts.emplace_back("catalog", geo.catalog_bytes);
  in.fixed_parts.emplace_back("read path", layout::ExtentReader::ResidentBytes(*limits));
  in.fixed_parts.emplace_back("norms", norms);
  in.fixed_parts.emplace_back(
      "bundle tables", NeuronSource::FixedBytes(g, c.n_layers, c.hidden_dim, chunk,
                                                options.pipeline ? options.chunk_buffers : 1));
  for (const auto& part : in.fixed_parts) in.fixed_bytes += part.second;
  in.embedding_bytes = needs.embedding.resident_bytes;
  in.embedding_demand_bytes = needs.embedding.demand_bytes;
  in.classifier_bytes = needs.classifier.resident_bytes;
  in.classifier_demand_bytes =
      needs.classifier.streamable ? ClassifierStream::StreamBytes(needs.classifier) : 0;
  for (uint32_t l = 0; l < c.n_layers; ++l) {
    in.dense_layer_bytes.push_back(AlignUp(needs.attention.layer_bytes[l], 64));
    in.layer_bundles.push_back(c.hidden_dim);
    in.layer_hot.push_back(l < geo.hot.size() ? geo.hot[l] : 0);
  }
  in.dense_stream_bytes_max = AttentionStream::StreamBytes(needs.attention);
  in.bundle_spacing_bytes = NeuronSource::PinnedBundleBytes(g);
  in.chunk_bundles = chunk;
  in.cache_fraction = options.cache_fraction;
  in.chunk_buffer_bytes =
      NeuronSource::ChunkBufferBytes(g, chunk, a, geo.store_alignment_bytes, coalesce);
  in.huge_page_bytes = uint64_t{2} << 20;  // the chunk ring is one buffer with huge pages
  in.chunk_buffers_min = options.pipeline ? 2 : 1;
  in.chunk_buffers = options.pipeline ? options.chunk_buffers : 1;
  needs.read_max_bytes = kReadMaxBytes;
  needs.coalesced = coalesce;
  return needs;
}

Status CheckOptions(const StreamingOptions& options) {
  if (options.chunk_bundles < 1 || options.chunk_buffers < 2 ||
      options.chunk_buffers > kChunkBuffersMax) {
    return InvalidArgumentError("chunk bundles must be >= 1 and chunk buffers in [2, " +
                                std::to_string(kChunkBuffersMax) + "]");
  }
  if (!(options.cache_fraction >= 0 && options.cache_fraction <= 1)) {
    return InvalidArgumentError("the cache share must be in [0, 1]");
  }
  if (options.window_passes > kWindowPassesMax) {
    return InvalidArgumentError("the window must be at most " + std::to_string(kWindowPassesMax) +
                                " tokens");
  }
  return Status::Ok();
}

// Bytes and reads of one planned read of `raw` bytes at an aligned offset: its cover at the read
// alignment, split at kReadMaxBytes.
uint64_t Cover(uint64_t raw, uint64_t alignment) { return AlignUp(raw, alignment); }
uint32_t ReadsOf(uint64_t bytes) { return static_cast<uint32_t>(CeilDiv(bytes, kReadMaxBytes)); }

}  // namespace

Result<StoreNeeds> StoreWeights::Measure(layout::StoreReader& reader,
                                         const StreamingOptions& options) {
  const layout::ModelConfig& c = reader.config();
  RETURN_IF_ERROR(c.Validate());
  RETURN_IF_ERROR(CheckOptions(options));
  if (reader.ffn_layer_count() != c.n_layers) {
    return NotSupportedError("store has no neuron bundles for every layer (repack it)");
  }
  StoreNeeds needs;
  ASSIGN_OR_RETURN(needs.bundles, reader.FfnGeometry(0));
  const layout::BundleGeometry& g = needs.bundles;
  if (g.dim != c.dim) return CorruptionError("FFN bundles of another width than the model's");
  if (!MatMulSupports(g.dtype)) {
    return NotSupportedError("FFN bundles of dtype " + std::string(layout::DTypeName(g.dtype)) +
                             ", which the engine cannot multiply");
  }
  ASSIGN_OR_RETURN(needs.attention, AttentionStream::Measure(reader, !g.has_gate()));
  ASSIGN_OR_RETURN(needs.classifier, ClassifierStream::Measure(reader));
  ASSIGN_OR_RETURN(needs.embedding, EmbeddingRows::Measure(reader));

  ReadGeometry geo;
  geo.catalog_bytes = reader.catalog_bytes();
  geo.read_alignment_bytes = reader.extent_reader().alignment_bytes();
  geo.store_alignment_bytes = reader.header().alignment_bytes;
  for (uint32_t l = 0; l < c.n_layers; ++l) geo.hot.push_back(reader.HotCount(l));
  layout::ExtentReaderLimits limits;
  needs = Complete(std::move(needs), c, geo, options, &limits);
  if (Status st = reader.extent_reader().SetLimits(limits); !st.ok()) {
    // Too many reads in flight: name the settings that set them.
    return st.WithContext("--chunk-bundles " + std::to_string(options.chunk_bundles) +
                          " and --stream-buffers " + std::to_string(options.chunk_buffers) +
                          " need " + std::to_string(limits.queue_depth) + " reads in flight" +
                          (options.coalesce && !options.split_bundle_reads
                               ? ""
                               : " (bundles read one by one)") +
                          ": use fewer bundles per chunk or fewer buffers");
  }
  return needs;
}

Result<StoreNeeds> StoreWeights::Estimate(const layout::StoreShape& shape,
                                          const StreamingOptions& options,
                                          uint64_t read_alignment_bytes) {
  const layout::ModelConfig& c = shape.config;
  RETURN_IF_ERROR(c.Validate());
  RETURN_IF_ERROR(CheckOptions(options));
  const uint64_t A = shape.alignment_bytes;
  const uint64_t a = std::max<uint64_t>(read_alignment_bytes, 1);
  if ((a & (a - 1)) != 0 || a > A) {
    return InvalidArgumentError("read alignment must be a power of two no larger than the store's");
  }
  StoreNeeds needs;
  needs.bundles = layout::BundleGeometry::Make(shape.bundle_kind, shape.ffn_dtype, c.dim, A);
  const layout::BundleGeometry& g = needs.bundles;
  if (!MatMulSupports(g.dtype)) {
    return NotSupportedError("FFN bundles of dtype " + std::string(layout::DTypeName(g.dtype)) +
                             ", which the engine cannot multiply");
  }
  // A dense tensor on flash: extents of rows_per_extent rows, each starting aligned.
  struct Flash {
    uint64_t bytes = 0;  // the extents' covers
    uint32_t reads = 0;
    uint64_t extent_cover_max = 0;
  };
  auto flash = [&](const layout::TensorInfo& t) {
    Flash f;
    const uint64_t rpe = shape.rows_per_extent[&t - shape.dense.data()];
    const uint64_t row = layout::RowBytes(t.dtype, t.cols());
    for (uint64_t r0 = 0; r0 < t.rows(); r0 += rpe) {
      const uint64_t cover = Cover(std::min(rpe, t.rows() - r0) * row, A);
      f.bytes += cover;
      f.extent_cover_max =
          std::max(f.extent_cover_max, Cover(std::min(rpe, t.rows() - r0) * row, a));
    }
    f.reads = ReadsOf(f.bytes) + 1;
    return f;
  };
  auto find = [&](const std::string& name) -> Result<const layout::TensorInfo*> {
    const layout::TensorInfo* t = shape.Find(name);
    if (t == nullptr) return NotFoundError("the model has no tensor " + name);
    if (!MatMulSupports(t->dtype) && t->shape.size() == 2) {
      return NotSupportedError("tensor " + name + " of dtype " +
                               std::string(layout::DTypeName(t->dtype)) +
                               ", which the engine cannot multiply");
    }
    return t;
  };
  // Attention (and a dense gate): as AttentionStream::Measure, the layer's tensors back to back.
  needs.attention.dense_gate = !g.has_gate();
  for (uint32_t l = 0; l < c.n_layers; ++l) {
    uint64_t bytes = 0, on_flash = 0;
    uint32_t reads = 0;
    const LayerTensor roles[] = {LayerTensor::kAttnQ, LayerTensor::kAttnK, LayerTensor::kAttnV,
                                 LayerTensor::kAttnOutput, LayerTensor::kFfnGate};
    for (uint32_t r = 0; r < (g.has_gate() ? 4u : 5u); ++r) {
      ASSIGN_OR_RETURN(const layout::TensorInfo* t, find(layout::LayerTensorName(l, roles[r])));
      bytes = AlignUp(bytes, 64) + t->size_bytes();
      const Flash f = flash(*t);
      on_flash += f.bytes;
      reads += f.reads;
    }
    bytes = AlignUp(bytes, 64);
    needs.attention.layer_bytes.push_back(bytes);
    needs.attention.stream_buffer_bytes =
        std::max({needs.attention.stream_buffer_bytes, bytes, AlignUp(on_flash, a)});
    needs.attention.reads_max = std::max(needs.attention.reads_max, reads);
  }
  // The classifier: as ClassifierStream::Measure.
  if (const layout::TensorInfo* cls = shape.Find("output.weight"); cls != nullptr) {
    ASSIGN_OR_RETURN(cls, find("output.weight"));
    const Flash f = flash(*cls);
    needs.classifier.streamable = true;
    needs.classifier.tensor_bytes = cls->size_bytes();
    needs.classifier.resident_bytes =
        storage::AlignedBuffer::ResidentBytes(cls->size_bytes(), 64, true);
    needs.classifier.buffer_bytes = AlignUp(f.extent_cover_max, 4096);
    needs.classifier.reads_per_block = ReadsOf(f.extent_cover_max) + 1;
    needs.classifier.rows_max = static_cast<uint32_t>(
        std::min<uint64_t>(shape.rows_per_extent[cls - shape.dense.data()], c.vocab_size));
  }
  // The embedding: as EmbeddingRows::Measure.
  ASSIGN_OR_RETURN(const layout::TensorInfo* emb, find("token_embd.weight"));
  needs.embedding.resident_bytes =
      storage::AlignedBuffer::ResidentBytes(emb->size_bytes(), 64, false);
  if (!(c.tied_embeddings && shape.Find("output.weight") == nullptr)) {
    const uint64_t rows =
        std::min<uint64_t>(shape.rows_per_extent[emb - shape.dense.data()], c.vocab_size);
    needs.embedding.demand_bytes =
        AlignUp(rows * layout::RowBytes(emb->dtype, c.dim) + 2 * std::max<uint64_t>(a, 64), 4096);
    needs.embedding.reads_max = ReadsOf(needs.embedding.demand_bytes) + 1;
  }

  ReadGeometry geo;
  // The catalog in DRAM: 40 bytes per extent, the tensor directory, the vocabulary.
  uint64_t extents = uint64_t{c.n_layers} * c.hidden_dim;
  for (size_t i = 0; i < shape.dense.size(); ++i) {
    extents += CeilDiv(shape.dense[i].rows(), shape.rows_per_extent[i]);
  }
  geo.catalog_bytes =
      extents * sizeof(layout::ExtentRecord) +
      shape.dense.size() * (sizeof(layout::TensorRecord) + sizeof(layout::TensorInfo) + 48) +
      uint64_t{c.n_layers} * sizeof(layout::FfnLayerRecord) + shape.vocab_bytes;
  geo.read_alignment_bytes = a;
  geo.store_alignment_bytes = A;
  layout::ExtentReaderLimits limits;
  return Complete(std::move(needs), c, geo, options, &limits);
}

Result<std::unique_ptr<StoreWeights>> StoreWeights::Open(
    std::unique_ptr<layout::StoreReader> reader, const StoreNeeds& needs, const ResidencyPlan& plan,
    const StreamingOptions& options) {
  std::unique_ptr<StoreWeights> s(new StoreWeights());
  s->reader_ = std::move(reader);
  s->plan_ = plan;
  s->pipeline_ = options.pipeline;
  layout::StoreReader& r = *s->reader_;
  const layout::ModelConfig& c = r.config();

  // Norms: output_norm, then attn_norm and ffn_norm of every layer, in one arena.
  ArenaLayout norms;
  std::vector<uint64_t> at;
  for (uint32_t i = 0; i < 2 * c.n_layers + 1; ++i) at.push_back(norms.AddFloats(c.dim));
  ASSIGN_OR_RETURN(s->norms_, Arena::Create(norms));
  auto load_norm = [&](const std::string& name, uint32_t i) -> Result<std::span<const float>> {
    const layout::TensorInfo* info = r.FindTensor(name);
    if (info == nullptr) return NotFoundError("store has no tensor " + name);
    if (info->num_values() != c.dim) {
      return CorruptionError("tensor " + name + " has " + std::to_string(info->num_values()) +
                             " values, the config implies " + std::to_string(c.dim));
    }
    std::span<float> out = s->norms_.Floats(at[i], c.dim);
    RETURN_IF_ERROR(r.ReadTensorF32(*info, out).WithContext("reading " + name));
    return std::span<const float>(out);
  };
  ASSIGN_OR_RETURN(s->output_norm_, load_norm("output_norm.weight", 0));
  for (uint32_t l = 0; l < c.n_layers; ++l) {
    ASSIGN_OR_RETURN(std::span<const float> a,
                     load_norm(layout::LayerTensorName(l, LayerTensor::kAttnNorm), 1 + 2 * l));
    ASSIGN_OR_RETURN(std::span<const float> f,
                     load_norm(layout::LayerTensorName(l, LayerTensor::kFfnNorm), 2 + 2 * l));
    s->layer_norms_.push_back(a);
    s->layer_norms_.push_back(f);
  }

  ASSIGN_OR_RETURN(s->embedding_, EmbeddingRows::Open(r, needs.embedding, plan.embedding_resident));
  if (const layout::TensorInfo* cls = r.FindTensor("output.weight"); cls != nullptr) {
    if (plan.classifier_resident) {
      ASSIGN_OR_RETURN(s->classifier_memory_, storage::AlignedBuffer::Allocate(
                                                  cls->size_bytes(), 64, /*huge_pages=*/true));
      const ByteSpan bytes = s->classifier_memory_.span().first(cls->size_bytes());
      RETURN_IF_ERROR(r.ReadTensor(*cls, bytes).WithContext("reading output.weight"));
      // Only multiplied (MatMul): in strips where the kernels read its dtype so.
      s->classifier_ = KeepInStrips(MatrixView{cls->dtype, c.vocab_size, c.dim, bytes}, bytes);
    } else {
      ASSIGN_OR_RETURN(s->classifier_stream_,
                       ClassifierStream::Open(r, needs.classifier, options.pipeline));
    }
  } else if (c.tied_embeddings) {
    s->classifier_ = s->embedding_->matrix();  // resident: a tied embedding never goes on demand
  } else {
    return NotFoundError("store has no tensor output.weight and embeddings are not tied");
  }
  ASSIGN_OR_RETURN(s->attention_,
                   AttentionStream::Open(r, needs.attention, plan.dense_pinned, options.pipeline));
  NeuronSourceOptions no;
  no.chunk_bundles = needs.inputs.chunk_bundles;
  no.chunk_buffers = std::max<uint32_t>(plan.chunk_buffers, 1);
  no.pipeline = options.pipeline;
  no.coalesce = options.coalesce;
  no.split_read_bytes = options.split_bundle_reads
                            ? NeuronSource::SplitReadBytes(needs.bundles,
                                                           r.extent_reader().alignment_bytes())
                            : 0;
  no.merge_gap_bytes = options.merge_gap_bytes;
  no.cache_slots = plan.cache_bundles;
  no.window_passes = options.window_passes;
  no.regroup_pinned = options.regroup_pinned;
  no.regroup_threads = options.regroup_threads;
  ASSIGN_OR_RETURN(s->neurons_, NeuronSource::Open(r, plan.pinned_bundles, no));
  s->ResetCounters();
  return s;
}

StoreWeights::~StoreWeights() = default;

Result<LayerWeights> StoreWeights::AcquireLayer(uint32_t l) {
  if (l >= config().n_layers) return InvalidArgumentError("layer index out of range");
  ASSIGN_OR_RETURN(AttentionStream::Matrices m, attention_->Acquire(l));
  LayerWeights w;
  w.attn_norm = layer_norms_[2 * l];
  w.ffn_norm = layer_norms_[2 * l + 1];
  w.wq = m.wq;
  w.wk = m.wk;
  w.wv = m.wv;
  w.wo = m.wo;
  w.gate = m.gate;
  w.neurons = neurons_.get();
  return w;
}

Status StoreWeights::ReleaseMatrices(uint32_t l) {
  RETURN_IF_ERROR(attention_->Release(l));
  // The classifier's first blocks are read while the last FFN computes.
  if (pipeline_ && classifier_stream_ && l + 1 == config().n_layers) {
    return classifier_stream_->Prefetch();
  }
  return Status::Ok();
}

StoreCounters StoreWeights::counters() const {
  return StoreCounters{reader_->extent_reader().counters(), neurons_->stats()};
}

void StoreWeights::ResetCounters() {
  reader_->extent_reader().ResetCounters();
  neurons_->ResetStats();
}

}  // namespace flashlm::engine
