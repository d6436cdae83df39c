#include "engine/streaming_weights.h"

#include <algorithm>
#include <cstring>
#include <string>

#include "engine/kernels.h"
#include "storage/checksum.h"

namespace flashlm::engine {
namespace {

constexpr uint64_t kAlign = 64;
constexpr uint64_t kReadMaxBytes = 1ull << 20;    // one direct read (at least, for FFN chunks)
constexpr uint32_t kJobReadsMax = 8;              // reads per FFN chunk, at most
constexpr uint32_t kEmbeddingExtentReadsMax = 2;  // an embedding extent read directly: <= 2 MiB
// Positions per BundleFfnKernel::Accumulate call (bounds the kernel's scratch, independent of
// the streaming chunk size).
constexpr uint32_t kKernelChunk = 256;
// The reader's bounce buffer bound (dense extents are at most 4 MiB by default; one extent may
// exceed it, and the bounce then grows to that extent's cover).
constexpr uint64_t kReaderBatchBytes = 4ull << 20;

uint64_t AlignUp64(uint64_t v) { return (v + kAlign - 1) / kAlign * kAlign; }

}  // namespace

uint64_t StreamingWeightStore::TransformerBytes(const layout::ModelConfig& c,
                                                const TransformerOptions& o, uint32_t threads) {
  const uint64_t ctx = o.max_context == 0 ? c.max_seq_len : o.max_context;
  const uint64_t b = std::min<uint64_t>(o.max_batch, ctx);
  const uint64_t q_dim = uint64_t{c.n_heads} * c.head_dim;
  const uint64_t kv_dim = uint64_t{c.n_kv_heads} * c.head_dim;
  uint64_t floats = b * c.dim + b * std::max<uint64_t>(c.dim, q_dim) + b * q_dim + 2 * b * kv_dim +
                    b * q_dim + b * c.dim + 2 * b * c.hidden_dim + uint64_t{threads} * ctx +
                    (o.all_logits ? b : 1) * c.vocab_size +
                    2 * uint64_t{c.n_layers} * ctx * kv_dim + ctx * c.head_dim;
  const uint32_t widest = std::max<uint32_t>({c.dim, c.hidden_dim, static_cast<uint32_t>(q_dim)});
  return floats * sizeof(float) + MatMulScratchBytes(widest, static_cast<uint32_t>(b)) + 64;
}

StreamingWeightStore::~StreamingWeightStore() { Drain(); }

Status StreamingWeightStore::QueueRead(uint32_t slot, uint32_t file, uint64_t offset, ByteSpan dst,
                                       uint64_t read_bytes) {
  for (uint64_t at = 0; at < dst.size(); at += read_bytes) {
    if (free_reads_.empty()) return ResourceExhaustedError("streaming: read table full");
    const uint32_t tag = free_reads_.back();
    free_reads_.pop_back();
    const uint64_t len = std::min<uint64_t>(read_bytes, dst.size() - at);
    reads_[tag] = PendingRead{slot, file, offset + at + len, len};
    requests_.push_back(
        storage::ReadRequest{file_ids_[file], offset + at, dst.subspan(at, len), tag});
    ++slots_[slot].pending;
  }
  return Status::Ok();
}

Status StreamingWeightStore::SubmitJob(uint32_t job, uint32_t slot) {
  const Job& jb = jobs_[job];
  const layout::Extent& e0 = layers_[jb.layer].streamed[jb.first];
  Slot& s = slots_[slot];
  s.job = job;
  s.error = Status::Ok();
  requests_.clear();
  RETURN_IF_ERROR(
      QueueRead(slot, e0.file_index, e0.offset_bytes,
                chunk_stream_.span().subspan(slot * chunk_buffer_bytes_,
                                             uint64_t{jb.count} * geometry_.stride_bytes),
                chunk_read_bytes_));
  return SubmitQueued();
}

Status StreamingWeightStore::SubmitDense(uint32_t layer) {
  Slot& s = slots_[chunk_slots_];
  s.job = layer;
  s.error = Status::Ok();
  requests_.clear();
  for (const DensePiece& piece : dense_pieces_[layer]) {
    RETURN_IF_ERROR(QueueRead(chunk_slots_, piece.file, piece.offset,
                              dense_stream_.span().subspan(piece.at, piece.bytes), kReadMaxBytes));
  }
  return SubmitQueued();
}

Status StreamingWeightStore::SubmitQueued() {
  Status st = backend_->Submit(requests_);
  if (!st.ok()) {  // nothing was submitted: give the tags back
    for (const storage::ReadRequest& r : requests_) {
      --slots_[reads_[r.tag].slot].pending;
      free_reads_.push_back(static_cast<uint32_t>(r.tag));
    }
  }
  requests_.clear();
  return st;
}

Status StreamingWeightStore::FillRing() {
  while (ring_count_ < chunk_slots_) {
    const uint32_t slot = (ring_head_ + ring_count_) % chunk_slots_;
    RETURN_IF_ERROR(SubmitJob(next_job_, slot));
    next_job_ = (next_job_ + 1) % static_cast<uint32_t>(jobs_.size());
    ++ring_count_;
  }
  return Status::Ok();
}

Status StreamingWeightStore::WaitSlot(uint32_t slot) {
  const uint64_t t0 = storage::NowNs();
  while (slots_[slot].pending > 0) RETURN_IF_ERROR(ReapSome());
  stats_.io_wait_ns += storage::NowNs() - t0;
  return slots_[slot].error;
}

Status StreamingWeightStore::ReapSome() {
  ASSIGN_OR_RETURN(size_t n, backend_->Reap(1, completions_));
  for (size_t i = 0; i < n; ++i) {
    const storage::ReadCompletion& c = completions_[i];
    const PendingRead r = reads_[c.tag];
    free_reads_.push_back(static_cast<uint32_t>(c.tag));
    Slot& s = slots_[r.slot];
    --s.pending;
    if (!s.error.ok()) continue;
    if (!c.status.ok()) {
      s.error = c.status;
    } else if (c.bytes_read < r.len && r.end <= reader_->data_file_bytes(r.file)) {
      // Short only past the end of the data file (the last extent's padding); checksums
      // catch anything else.
      s.error = IoError("short read from the store's data file");
    }
  }
  return Status::Ok();
}

void StreamingWeightStore::DrainRing() {
  for (uint32_t k = 0; k < chunk_slots_; ++k) {
    while (slots_[k].pending > 0) {
      if (!ReapSome().ok()) return;
    }
    slots_[k].job = -1;
  }
  ring_head_ = ring_count_ = 0;
}

void StreamingWeightStore::Drain() {
  while (backend_ && backend_->in_flight() > 0) {
    if (!ReapSome().ok()) break;
  }
  for (Slot& s : slots_) s = Slot();
  ring_head_ = ring_count_ = 0;
}

Status StreamingWeightStore::VerifyChunk(const Layer& layer, uint32_t first, uint32_t count,
                                         const std::byte* base) {
  for (uint32_t k = 0; k < count; ++k) {
    const layout::Extent& e = layer.streamed[first + k];
    ConstByteSpan bytes(base + uint64_t{k} * geometry_.stride_bytes, geometry_.bundle_bytes);
    if (storage::Checksum64(bytes) != e.checksum) {
      return CorruptionError("checksum mismatch in extent " + std::to_string(e.index) + " (" +
                             reader_->DescribeExtent(e.index) + ")");
    }
  }
  return Status::Ok();
}

Status StreamingWeightStore::FinishDense(uint32_t l) {
  Layer& layer = layers_[l];
  MatrixView* views[] = {&layer.wq, &layer.wk, &layer.wv, &layer.wo, &layer.gate};
  const std::vector<DensePiece>& pieces = dense_pieces_[l];
  for (size_t i = 0; i < pieces.size(); ++i) {
    const DensePiece& piece = pieces[i];
    std::byte* base = dense_stream_.data() + piece.at;
    uint64_t at = 0;  // extents are closed up from the front: a move never overwrites unread data
    for (const layout::Extent& e : piece.extents) {
      std::byte* src = base + (e.offset_bytes - piece.offset);
      if (storage::Checksum64(ConstByteSpan(src, e.stored_bytes)) != e.checksum) {
        return CorruptionError("checksum mismatch in extent " + std::to_string(e.index) + " (" +
                               reader_->DescribeExtent(e.index) + ")");
      }
      if (src != base + at) std::memmove(base + at, src, e.stored_bytes);
      at += e.stored_bytes;
    }
    const layout::TensorInfo& info = layer.dense[i];
    *views[i] = MatrixView{info.dtype, static_cast<uint32_t>(info.rows()),
                           static_cast<uint32_t>(info.cols()), ConstByteSpan(base, at)};
  }
  return Status::Ok();
}

Result<std::unique_ptr<StreamingWeightStore>> StreamingWeightStore::Open(
    const std::string& path, ThreadPool& pool, const StreamingOptions& options) {
  std::unique_ptr<StreamingWeightStore> s(new StreamingWeightStore(pool));
  layout::StoreReadOptions ro;
  ro.backend = options.backend;
  ro.direct = options.direct;
  ro.batch_bytes_max = kReaderBatchBytes;
  ASSIGN_OR_RETURN(s->reader_, layout::StoreReader::Open(path, ro));
  RETURN_IF_ERROR(s->Load(options));
  return s;
}

Result<std::span<const float>> StreamingWeightStore::LoadVector(const std::string& name,
                                                                uint64_t n) {
  const layout::TensorInfo* info = reader_->FindTensor(name);
  if (info == nullptr) return NotFoundError("store has no tensor " + name);
  if (info->num_values() != n) {
    return CorruptionError("tensor " + name + " has " + std::to_string(info->num_values()) +
                           " values, the config implies " + std::to_string(n));
  }
  ASSIGN_OR_RETURN(
      storage::AlignedBuffer buf,
      storage::AlignedBuffer::Allocate(n * sizeof(float), kAlign, /*huge_pages=*/false));
  std::span<float> out(reinterpret_cast<float*>(buf.data()), n);
  RETURN_IF_ERROR(reader_->ReadTensorF32(*info, out).WithContext("reading " + name));
  buffers_.push_back(std::move(buf));
  return std::span<const float>(out);
}

Result<MatrixView> StreamingWeightStore::LoadMatrix(const std::string& name, uint64_t rows,
                                                    uint64_t cols) {
  const layout::TensorInfo* info = reader_->FindTensor(name);
  if (info == nullptr) return NotFoundError("store has no tensor " + name);
  if (info->shape.size() != 2 || info->rows() != rows || info->cols() != cols) {
    return CorruptionError("tensor " + name + " has a shape the config does not imply");
  }
  if (!MatMulSupports(info->dtype)) {
    return NotSupportedError("tensor " + name + " has dtype " +
                             std::string(layout::DTypeName(info->dtype)) +
                             ", which the out-of-core engine cannot multiply");
  }
  const uint64_t bytes = info->size_bytes();
  ASSIGN_OR_RETURN(storage::AlignedBuffer buf,
                   storage::AlignedBuffer::Allocate(bytes, kAlign, /*huge_pages=*/false));
  RETURN_IF_ERROR(
      reader_->ReadTensor(*info, ByteSpan(buf.data(), bytes)).WithContext("reading " + name));
  MatrixView view{info->dtype, static_cast<uint32_t>(rows), static_cast<uint32_t>(cols),
                  ConstByteSpan(buf.data(), bytes)};
  buffers_.push_back(std::move(buf));
  return view;
}

Status StreamingWeightStore::ReadDense(Layer& layer, ByteSpan into, bool assign_views) {
  uint64_t at = 0;
  MatrixView* views[] = {&layer.wq, &layer.wk, &layer.wv, &layer.wo, &layer.gate};
  for (size_t i = 0; i < layer.dense.size(); ++i) {
    const layout::TensorInfo& info = layer.dense[i];
    const uint64_t bytes = info.size_bytes();
    ByteSpan dst = into.subspan(at, bytes);
    RETURN_IF_ERROR(reader_->ReadTensor(info, dst).WithContext("reading " + info.name));
    if (assign_views) {
      *views[i] = MatrixView{info.dtype, static_cast<uint32_t>(info.rows()),
                             static_cast<uint32_t>(info.cols()), ConstByteSpan(dst)};
    }
    at += AlignUp64(bytes);
  }
  return Status::Ok();
}

Status StreamingWeightStore::Load(const StreamingOptions& options) {
  config_ = reader_->config();
  const layout::ModelConfig& c = config_;
  if (c.dim == 0 || c.hidden_dim == 0 || c.n_layers == 0 || c.n_heads == 0 || c.n_kv_heads == 0 ||
      c.head_dim == 0 || c.vocab_size == 0 || c.n_heads % c.n_kv_heads != 0 ||
      c.head_dim % 2 != 0) {
    return InvalidArgumentError("model config has a shape the engine cannot run");
  }
  if (reader_->ffn_layer_count() != c.n_layers) {
    return NotSupportedError("store has no neuron bundles for every layer (repack it)");
  }
  ASSIGN_OR_RETURN(geometry_, reader_->FfnGeometry(0));
  for (uint32_t l = 0; l < c.n_layers; ++l) {
    ASSIGN_OR_RETURN(layout::BundleGeometry g, reader_->FfnGeometry(l));
    ASSIGN_OR_RETURN(layout::FfnLayerRecord rec, reader_->FfnLayer(l));
    if (g.kind != geometry_.kind || g.dtype != geometry_.dtype || g.dim != c.dim ||
        rec.n_neurons != c.hidden_dim) {
      return NotSupportedError("FFN layers with differing bundle geometry");
    }
  }
  spacing_ = AlignUp64(geometry_.bundle_bytes);
  const bool separate = !geometry_.has_gate();
  const uint64_t q_dim = uint64_t{c.n_heads} * c.head_dim;
  const uint64_t kv_dim = uint64_t{c.n_kv_heads} * c.head_dim;

  // Sizes for the plan.
  const uint32_t chunk = std::max<uint32_t>(1, std::min(options.chunk_bundles, c.hidden_dim));
  ResidencyInputs in;
  in.budget_bytes = options.budget_bytes;
  in.bundle_spacing_bytes = spacing_;
  in.chunk_bundles = chunk;
  uint64_t fixed = TransformerBytes(c, options.transformer, pool_.size());
  const uint64_t max_batch = std::min<uint64_t>(
      options.transformer.max_batch,
      options.transformer.max_context ? options.transformer.max_context : c.max_seq_len);
  const uint32_t kernel_chunk = std::min(kKernelChunk, c.hidden_dim);
  fixed += BundleFfnKernel::ScratchBytes(geometry_, c.hidden_dim, static_cast<uint32_t>(max_batch),
                                         kernel_chunk, pool_.size());
  fixed += reader_->extent_count() * sizeof(layout::Extent) +
           uint64_t{c.n_layers} * c.hidden_dim * 2 * sizeof(uint32_t) + kReaderBatchBytes;
  const layout::TensorInfo* emb = reader_->FindTensor("token_embd.weight");
  const layout::TensorInfo* cls = reader_->FindTensor("output.weight");
  if (emb == nullptr) return NotFoundError("store has no tensor token_embd.weight");
  // The embedding and classifier: below, once the rest is known.
  fixed += (2 * uint64_t{c.n_layers} + 1) * AlignUp64(uint64_t{c.dim} * sizeof(float));
  layers_.resize(c.n_layers);
  for (uint32_t l = 0; l < c.n_layers; ++l) {
    const std::string p = "blk." + std::to_string(l) + ".";
    Layer& layer = layers_[l];
    const std::pair<const char*, std::pair<uint64_t, uint64_t>> names[] = {
        {"attn_q.weight", {q_dim, c.dim}},
        {"attn_k.weight", {kv_dim, c.dim}},
        {"attn_v.weight", {kv_dim, c.dim}},
        {"attn_output.weight", {c.dim, q_dim}},
        {"ffn_gate.weight", {c.hidden_dim, c.dim}}};
    for (size_t i = 0; i < (separate ? 5u : 4u); ++i) {
      const std::string name = p + names[i].first;
      const layout::TensorInfo* info = reader_->FindTensor(name);
      if (info == nullptr) return NotFoundError("store has no tensor " + name);
      if (info->shape.size() != 2 || info->rows() != names[i].second.first ||
          info->cols() != names[i].second.second) {
        return CorruptionError("tensor " + name + " has a shape the config does not imply");
      }
      if (!MatMulSupports(info->dtype)) {
        return NotSupportedError("tensor " + name + " has dtype " +
                                 std::string(layout::DTypeName(info->dtype)) +
                                 ", which the out-of-core engine cannot multiply");
      }
      layer.dense.push_back(*info);
      layer.dense_bytes += AlignUp64(info->size_bytes());
    }
    in.dense_layer_bytes.push_back(layer.dense_bytes);
    in.layer_bundles.push_back(c.hidden_dim);
    in.layer_hot.push_back(reader_->HotCount(l));
  }
  // Direct chunk reads need uncompressed bundles, stride apart, in one file.
  direct_chunks_ = options.direct_chunks;
  for (uint32_t l = 0; l < c.n_layers && direct_chunks_; ++l) {
    ASSIGN_OR_RETURN(std::vector<layout::Extent> all, reader_->BundleExtents(l, 0, c.hidden_dim));
    for (uint32_t k = 0; k < all.size() && direct_chunks_; ++k) {
      direct_chunks_ = all[k].codec == layout::Codec::kNone &&
                       all[k].file_index == all[0].file_index &&
                       all[k].offset_bytes == all[0].offset_bytes + k * geometry_.stride_bytes &&
                       all[k].stored_bytes == geometry_.bundle_bytes;
    }
  }
  // Worth it only when the stride's padding does not blow up the streaming buffer, and possible
  // only when the stride is a multiple of the files' O_DIRECT alignment.
  direct_chunks_ = direct_chunks_ && geometry_.stride_bytes <= 2 * spacing_;
  if (direct_chunks_) {
    storage::FileOptions fo;
    fo.direct = options.direct;
    for (uint32_t i = 0; i < reader_->header().data_file_count; ++i) {
      ASSIGN_OR_RETURN(storage::File f, storage::File::OpenForRead(reader_->DataFilePath(i), fo));
      const uint64_t a = std::max<uint64_t>(f.required_alignment_bytes(), 1);
      if (geometry_.stride_bytes % a != 0 || reader_->header().alignment_bytes % a != 0) {
        direct_chunks_ = false;
      }
      files_.push_back(std::move(f));
    }
    if (!direct_chunks_) files_.clear();
  }
  chunk_spacing_ = direct_chunks_ ? geometry_.stride_bytes : spacing_;
  in.chunk_spacing_bytes = chunk_spacing_;
  // Pipelining: a ring of chunk buffers, and streamed attention read straight into its buffer
  // when every dense tensor is uncompressed extents in file order.
  pipeline_ = direct_chunks_ && options.pipeline;
  if (options.chunk_buffers < 2 || options.chunk_buffers > kChunkBuffersMax) {
    return InvalidArgumentError("chunk buffers must be in [2, " + std::to_string(kChunkBuffersMax) +
                                "]");
  }
  in.chunk_buffers_min = pipeline_ ? 2 : 1;
  in.chunk_buffers = pipeline_ ? options.chunk_buffers : 1;
  uint32_t dense_reads_max = 0;
  if (pipeline_) {
    dense_direct_ = true;
    dense_pieces_.resize(c.n_layers);
    uint64_t need_max = 0;
    for (uint32_t l = 0; l < c.n_layers && dense_direct_; ++l) {
      uint64_t need = 0;
      uint32_t reads = 0;
      for (const layout::TensorInfo& info : layers_[l].dense) {
        ASSIGN_OR_RETURN(std::vector<layout::Extent> ext,
                         reader_->DenseExtents(info.name, 0, info.rows()));
        DensePiece piece;
        uint64_t raw = 0, end = 0;
        for (const layout::Extent& e : ext) {
          dense_direct_ = dense_direct_ && e.codec == layout::Codec::kNone &&
                          e.stored_bytes == e.raw_bytes && e.file_index == ext[0].file_index &&
                          e.offset_bytes >= end;
          end = e.offset_bytes + e.stored_bytes;
          raw += e.raw_bytes;
        }
        if (!dense_direct_ || ext.empty() || raw != info.size_bytes()) {
          dense_direct_ = false;
          break;
        }
        const uint64_t a = files_[ext[0].file_index].required_alignment_bytes();
        piece.file = ext[0].file_index;
        piece.offset = ext[0].offset_bytes;
        piece.bytes = (end - piece.offset + a - 1) / a * a;
        piece.at = need;
        piece.extents = std::move(ext);
        need += (piece.bytes + 4095) / 4096 * 4096;
        reads += static_cast<uint32_t>((piece.bytes + kReadMaxBytes - 1) / kReadMaxBytes);
        dense_pieces_[l].push_back(std::move(piece));
      }
      need_max = std::max(need_max, need);
      dense_reads_max = std::max(dense_reads_max, reads);
    }
    if (dense_direct_) {
      in.dense_stream_bytes_max = need_max;
    } else {
      dense_pieces_.clear();
      dense_reads_max = 0;
    }
  }
  // An FFN chunk is read in at most kJobReadsMax reads of at least kReadMaxBytes.
  const uint64_t job_bytes = uint64_t{chunk} * chunk_spacing_;
  chunk_read_bytes_ =
      std::max<uint64_t>(kReadMaxBytes, (job_bytes / kJobReadsMax + kReadMaxBytes - 1) /
                                            kReadMaxBytes * kReadMaxBytes);
  const uint32_t job_reads =
      static_cast<uint32_t>((job_bytes + chunk_read_bytes_ - 1) / chunk_read_bytes_);
  // The read table is counted at its bound for any pipelining options, so that the plan's
  // always-resident part does not depend on them.
  uint64_t dense_reads_bound = 0;
  for (const Layer& layer : layers_) {
    uint64_t reads = 0;
    for (const layout::TensorInfo& info : layer.dense) {
      reads += info.size_bytes() / kReadMaxBytes + 2;
    }
    dense_reads_bound = std::max(dense_reads_bound, reads);
  }
  // The classifier may stream one extent at a time through two buffers (pipelined stores with
  // uncompressed classifier extents only).
  uint32_t classifier_reads = 0;
  if (cls != nullptr) {
    in.classifier_bytes = AlignUp64(cls->size_bytes());
    ASSIGN_OR_RETURN(classifier_location_, reader_->LocateTensor("output.weight"));
    ASSIGN_OR_RETURN(classifier_extents_, reader_->DenseExtents("output.weight", 0, c.vocab_size));
    const layout::TensorRecord& rec = classifier_location_.record;
    const uint64_t row_bytes = layout::RowBytes(cls->dtype, c.dim);
    bool streamable = pipeline_ && !classifier_extents_.empty() && rec.rows_per_extent > 0 &&
                      cls->shape.size() == 2 && cls->rows() == c.vocab_size &&
                      cls->cols() == c.dim && MatMulSupports(cls->dtype);
    uint64_t slot = 0;
    for (const layout::Extent& e : classifier_extents_) {
      streamable = streamable && e.codec == layout::Codec::kNone && e.stored_bytes == e.raw_bytes &&
                   e.raw_bytes % row_bytes == 0 && e.raw_bytes <= rec.rows_per_extent * row_bytes;
      if (!streamable) break;
      const uint64_t a = files_[e.file_index].required_alignment_bytes();
      slot = std::max(slot, ((e.stored_bytes + a - 1) / a * a + 4095) / 4096 * 4096);
    }
    if (streamable) {
      classifier_slot_bytes_ = slot;
      classifier_rows_max_ = static_cast<uint32_t>(rec.rows_per_extent);
      classifier_reads = static_cast<uint32_t>(2 * ((slot + kReadMaxBytes - 1) / kReadMaxBytes));
      in.classifier_demand_bytes =
          (2 * slot < (2ull << 20) ? 2 * slot  // 2 MiB or more: rounded to huge pages
                                   : (2 * slot + (2ull << 20) - 1) / (2ull << 20) * (2ull << 20)) +
          AlignUp64(max_batch * rec.rows_per_extent * sizeof(float)) +
          AlignUp64(MatMulScratchBytes(c.dim, static_cast<uint32_t>(max_batch))) + 64;
    }
  }
  // Counted for any options (as below): two classifier extents' reads.
  const uint64_t embedding_reads_bound = kEmbeddingExtentReadsMax;
  const uint64_t classifier_reads_bound =
      cls == nullptr ? 0
                     : 2 * (classifier_location_.record.rows_per_extent *
                                layout::RowBytes(cls->dtype, c.dim) / kReadMaxBytes +
                            2);
  fixed += (uint64_t{kChunkBuffersMax} * kJobReadsMax + dense_reads_bound + classifier_reads_bound +
            embedding_reads_bound) *
               (sizeof(storage::ReadRequest) + sizeof(storage::ReadCompletion) +
                sizeof(PendingRead) + sizeof(uint32_t)) +
           (1u << 16) +       // direct reads
           2 * (2ull << 20);  // the two streaming buffers round up to huge pages
  // The embedding is resident when everything fits (or when it is the classifier too);
  // otherwise its rows are read on demand, one extent (a few rows) at a time.
  in.embedding_bytes = AlignUp64(emb->size_bytes());
  if (cls != nullptr) {
    ASSIGN_OR_RETURN(embedding_location_, reader_->LocateTensor("token_embd.weight"));
    const layout::TensorRecord& rec = embedding_location_.record;
    if (rec.placement != static_cast<uint8_t>(layout::Placement::kDense) ||
        rec.rows_per_extent == 0 || emb->shape.size() != 2 || emb->rows() != c.vocab_size ||
        emb->cols() != c.dim || !MatMulSupports(emb->dtype)) {
      return CorruptionError("tensor token_embd.weight has a layout the engine cannot read");
    }
    // One extent's aligned cover, so that it can be read straight into the buffer.
    in.embedding_demand_bytes = (std::min<uint64_t>(rec.rows_per_extent, c.vocab_size) *
                                     layout::RowBytes(emb->dtype, c.dim) +
                                 4095) /
                                4096 * 4096;
  }
  in.fixed_bytes = fixed;
  ASSIGN_OR_RETURN(plan_, PlanResidency(in));
  embedding_on_demand_ = !plan_.embedding_resident;
  if (embedding_on_demand_) {
    ASSIGN_OR_RETURN(embedding_extent_,
                     storage::AlignedBuffer::Allocate(in.embedding_demand_bytes, 4096,
                                                      /*huge_pages=*/false));
  }
  chunk_slots_ = std::max<uint32_t>(plan_.chunk_buffers, 1);
  classifier_streamed_ = cls != nullptr && !plan_.classifier_resident;
  const uint32_t queue_depth = kEmbeddingExtentReadsMax + chunk_slots_ * job_reads +
                               dense_reads_max + (classifier_streamed_ ? classifier_reads : 0);

  // Globals and norms.
  if (!embedding_on_demand_) {
    ASSIGN_OR_RETURN(embedding_, LoadMatrix("token_embd.weight", c.vocab_size, c.dim));
  }
  ASSIGN_OR_RETURN(output_norm_, LoadVector("output_norm.weight", c.dim));
  if (classifier_streamed_) {
    ASSIGN_OR_RETURN(classifier_stream_,
                     storage::AlignedBuffer::Allocate(2 * classifier_slot_bytes_, 4096));
    classifier_out_.assign(max_batch * classifier_rows_max_, 0.0f);
    ASSIGN_OR_RETURN(classifier_qx_,
                     storage::AlignedBuffer::Allocate(
                         MatMulScratchBytes(c.dim, static_cast<uint32_t>(max_batch)) + 64, 64,
                         /*huge_pages=*/false));
  } else if (cls != nullptr) {
    ASSIGN_OR_RETURN(classifier_, LoadMatrix("output.weight", c.vocab_size, c.dim));
  } else if (c.tied_embeddings) {
    classifier_ = embedding_;
  } else {
    return NotFoundError("store has no tensor output.weight and embeddings are not tied");
  }
  // Layers: norms, pinned dense matrices, pinned bundle prefixes, streamed extents.
  for (uint32_t l = 0; l < c.n_layers; ++l) {
    const std::string p = "blk." + std::to_string(l) + ".";
    Layer& layer = layers_[l];
    ASSIGN_OR_RETURN(layer.attn_norm, LoadVector(p + "attn_norm.weight", c.dim));
    ASSIGN_OR_RETURN(layer.ffn_norm, LoadVector(p + "ffn_norm.weight", c.dim));
    layer.dense_pinned = plan_.dense_pinned[l] != 0;
    if (layer.dense_pinned) {
      ASSIGN_OR_RETURN(
          storage::AlignedBuffer buf,
          storage::AlignedBuffer::Allocate(layer.dense_bytes, kAlign, /*huge_pages=*/false));
      RETURN_IF_ERROR(ReadDense(layer, buf.span(), /*assign_views=*/true));
      buffers_.push_back(std::move(buf));
    }
    layer.pinned = plan_.pinned_bundles[l];
    if (layer.pinned > 0) {
      ASSIGN_OR_RETURN(layer.prefix,
                       storage::AlignedBuffer::Allocate(uint64_t{layer.pinned} * spacing_, kAlign,
                                                        /*huge_pages=*/false));
      ASSIGN_OR_RETURN(std::vector<layout::Extent> ext, reader_->BundleExtents(l, 0, layer.pinned));
      std::vector<ByteSpan> outs;
      outs.reserve(ext.size());
      for (uint32_t k = 0; k < layer.pinned; ++k) {
        if (ext[k].raw_bytes != geometry_.bundle_bytes) {
          return CorruptionError("bundle extent with a raw size other than the bundle's");
        }
        outs.push_back(layer.prefix.span().subspan(uint64_t{k} * spacing_, geometry_.bundle_bytes));
      }
      RETURN_IF_ERROR(
          reader_->ReadExtents(ext, outs).WithContext("reading FFN layer " + std::to_string(l)));
    }
    if (layer.pinned < c.hidden_dim) {
      ASSIGN_OR_RETURN(layer.streamed,
                       reader_->BundleExtents(l, layer.pinned, c.hidden_dim - layer.pinned));
      for (const layout::Extent& e : layer.streamed) {
        if (e.raw_bytes != geometry_.bundle_bytes) {
          return CorruptionError("bundle extent with a raw size other than the bundle's");
        }
      }
    }
  }
  // Streaming buffers.
  if (plan_.dense_stream_bytes > 0) {
    ASSIGN_OR_RETURN(dense_stream_,
                     storage::AlignedBuffer::Allocate(plan_.dense_stream_bytes, 4096));
  }
  if (plan_.chunk_stream_bytes > 0) {
    ASSIGN_OR_RETURN(chunk_stream_,
                     storage::AlignedBuffer::Allocate(plan_.chunk_stream_bytes, 4096));
    chunk_buffer_bytes_ = uint64_t{plan_.chunk_bundles} * chunk_spacing_;
    for (uint32_t k = 0; k < plan_.chunk_bundles; ++k) {
      chunk_outs_.push_back(
          chunk_stream_.span().subspan(uint64_t{k} * chunk_spacing_, geometry_.bundle_bytes));
    }
  }
  if (direct_chunks_ && (plan_.streams() || classifier_streamed_ || embedding_on_demand_)) {
    storage::ReadBackendOptions bo;
    bo.queue_depth_max = queue_depth;
    bo.files_max = static_cast<uint32_t>(std::max<size_t>(files_.size(), 1));
    ASSIGN_OR_RETURN(backend_, storage::MakeReadBackend(options.backend, bo));
    for (const storage::File& f : files_) {
      ASSIGN_OR_RETURN(uint32_t id, backend_->RegisterFile(f));
      file_ids_.push_back(id);
    }
    requests_.reserve(queue_depth);
    completions_.resize(queue_depth);
    reads_.resize(queue_depth);
    for (uint32_t t = queue_depth; t > 0; --t) free_reads_.push_back(t - 1);
  }
  // Chunks, attention, two classifier extents, an embedding extent.
  slots_.assign(chunk_slots_ + 4, Slot());
  if (plan_.chunk_stream_bytes == 0) pipeline_ = false;
  if (pipeline_) {
    for (uint32_t l = 0; l < c.n_layers; ++l) {
      job_first_.push_back(static_cast<uint32_t>(jobs_.size()));
      const uint32_t streamed = static_cast<uint32_t>(layers_[l].streamed.size());
      for (uint32_t f = 0; f < streamed; f += plan_.chunk_bundles) {
        jobs_.push_back(Job{l, f, std::min(plan_.chunk_bundles, streamed - f)});
      }
    }
    if (jobs_.empty()) pipeline_ = false;
  }
  // Streamed attention through the prefetching buffer (even when every bundle is resident).
  bool any_streamed = false;
  for (uint32_t l = 0; l < c.n_layers; ++l) any_streamed |= !layers_[l].dense_pinned;
  dense_direct_ = dense_direct_ && any_streamed && backend_ != nullptr;
  if (dense_direct_) {
    next_dense_.assign(c.n_layers, 0);
    for (uint32_t l = 0; l < c.n_layers; ++l) {
      for (uint32_t k = 1; k <= c.n_layers; ++k) {
        const uint32_t m = (l + k) % c.n_layers;
        if (!layers_[m].dense_pinned) {
          next_dense_[l] = m;
          break;
        }
      }
    }
  }
  ASSIGN_OR_RETURN(kernel_, BundleFfnKernel::Create(
                                geometry_, c.hidden_dim, static_cast<uint32_t>(max_batch),
                                kernel_chunk, c.activation == layout::Activation::kRelu, pool_));
  ResetStats();
  return Status::Ok();
}

Status StreamingWeightStore::EmbedToken(uint32_t token, std::span<float> out) {
  if (!embedding_on_demand_) {
    return layout::DequantizeRow(embedding_.dtype, embedding_.row(token), out);
  }
  const layout::TensorInfo& info = embedding_location_.info;
  const layout::TensorRecord& rec = embedding_location_.record;
  const uint64_t row_bytes = layout::RowBytes(info.dtype, config_.dim);
  const uint64_t index = rec.first_extent + token / rec.rows_per_extent;
  if (index != embedding_extent_index_) {
    embedding_extent_index_ = UINT64_MAX;
    ASSIGN_OR_RETURN(layout::Extent e, reader_->GetExtent(index));
    if (e.raw_bytes > embedding_extent_.size_bytes() || e.raw_bytes % row_bytes != 0) {
      return CorruptionError("token_embd.weight extent " + std::to_string(index) +
                             " has an unexpected size");
    }
    const uint64_t a = backend_ ? files_[e.file_index].required_alignment_bytes() : uint64_t{1};
    const uint64_t cover = (e.stored_bytes + a - 1) / a * a;
    if (backend_ && e.codec == layout::Codec::kNone && e.stored_bytes == e.raw_bytes &&
        cover <= embedding_extent_.size_bytes() &&
        cover <= kEmbeddingExtentReadsMax * kReadMaxBytes) {
      // Straight into the buffer through this store's backend: nothing allocated per lookup.
      const uint32_t slot = chunk_slots_ + 3;
      slots_[slot].error = Status::Ok();
      requests_.clear();
      RETURN_IF_ERROR(QueueRead(slot, e.file_index, e.offset_bytes,
                                embedding_extent_.span().subspan(0, cover), kReadMaxBytes));
      RETURN_IF_ERROR(SubmitQueued());
      RETURN_IF_ERROR(WaitSlot(slot).WithContext("reading token_embd.weight"));
      if (storage::Checksum64(ConstByteSpan(embedding_extent_.data(), e.stored_bytes)) !=
          e.checksum) {
        return CorruptionError("checksum mismatch in extent " + std::to_string(e.index) + " (" +
                               reader_->DescribeExtent(e.index) + ")");
      }
    } else {  // compressed extents, or no backend of our own: through the reader
      const uint64_t t0 = storage::NowNs();
      RETURN_IF_ERROR(reader_->ReadExtent(e, embedding_extent_.span().subspan(0, e.raw_bytes))
                          .WithContext("reading token_embd.weight"));
      stats_.io_wait_ns += storage::NowNs() - t0;
    }
    stats_.bytes_requested += e.stored_bytes;
    embedding_extent_index_ = index;
    embedding_extent_rows_ = e.raw_bytes / row_bytes;
  }
  const uint64_t r = token % rec.rows_per_extent;
  if (r >= embedding_extent_rows_) {
    return CorruptionError("token_embd.weight extent " + std::to_string(index) + " lacks row " +
                           std::to_string(token));
  }
  return layout::DequantizeRow(
      info.dtype, ConstByteSpan(embedding_extent_.data() + r * row_bytes, row_bytes), out);
}

Status StreamingWeightStore::SubmitClassifier(uint32_t extent, uint32_t slot) {
  const layout::Extent& e = classifier_extents_[extent];
  const uint64_t a = files_[e.file_index].required_alignment_bytes();
  Slot& s = slots_[slot];
  s.job = extent;
  s.error = Status::Ok();
  requests_.clear();
  const uint64_t at = uint64_t{slot - chunk_slots_ - 1} * classifier_slot_bytes_;
  RETURN_IF_ERROR(QueueRead(slot, e.file_index, e.offset_bytes,
                            classifier_stream_.span().subspan(at, (e.stored_bytes + a - 1) / a * a),
                            kReadMaxBytes));
  return SubmitQueued();
}

Status StreamingWeightStore::Logits(std::span<const float> x, uint32_t n, std::span<float> logits) {
  const layout::TensorInfo& info = classifier_location_.info;
  const uint32_t dim = config_.dim, vocab = config_.vocab_size;
  const uint64_t row_bytes = layout::RowBytes(info.dtype, dim);
  const uint32_t first_slot = chunk_slots_ + 1;
  QuantizeActivations(x, dim, n, classifier_qx_.span());
  const ConstByteSpan qx = classifier_qx_.span();
  const uint32_t count = static_cast<uint32_t>(classifier_extents_.size());
  uint32_t r0 = 0;
  for (uint32_t k = 0; k < count; ++k) {
    const uint32_t slot = first_slot + k % 2;
    const layout::Extent& e = classifier_extents_[k];
    Status st;
    if (slots_[slot].job != static_cast<int64_t>(k)) {  // not prefetched
      const Status landed = WaitSlot(slot);
      (void)landed;
      st = SubmitClassifier(k, slot);
    }
    if (st.ok()) st = WaitSlot(slot);
    const std::byte* base = classifier_stream_.data() + uint64_t{k % 2} * classifier_slot_bytes_;
    if (st.ok() && storage::Checksum64(ConstByteSpan(base, e.stored_bytes)) != e.checksum) {
      st = CorruptionError("checksum mismatch in extent " + std::to_string(e.index) + " (" +
                           reader_->DescribeExtent(e.index) + ")");
    }
    if (!st.ok()) {
      for (uint32_t j = 0; j < 2; ++j) {
        const Status landed = WaitSlot(first_slot + j);
        (void)landed;
        slots_[first_slot + j].job = -1;
      }
      return st.WithContext("classifier");
    }
    stats_.bytes_requested += e.stored_bytes;
    const uint32_t rows = static_cast<uint32_t>(e.raw_bytes / row_bytes);
    if (uint64_t{r0} + rows > vocab) return CorruptionError("classifier extents exceed its rows");
    const MatrixView view{info.dtype, rows, dim, ConstByteSpan(base, e.raw_bytes)};
    std::span<float> y = n == 1 ? logits.subspan(r0, rows)
                                : std::span<float>(classifier_out_.data(), uint64_t{n} * rows);
    pool_.ParallelFor(rows, 16, [&](uint64_t b, uint64_t end, uint32_t) {
      MatMulRows(view, x, n, qx, static_cast<uint32_t>(b), static_cast<uint32_t>(end), y);
    });
    if (n > 1) {
      for (uint32_t t = 0; t < n; ++t) {
        std::copy_n(classifier_out_.data() + uint64_t{t} * rows, rows,
                    logits.data() + uint64_t{t} * vocab + r0);
      }
    }
    r0 += rows;
    slots_[slot].job = -1;
    if (k + 2 < count) RETURN_IF_ERROR(SubmitClassifier(k + 2, slot));
  }
  if (r0 != vocab) return CorruptionError("classifier extents do not cover its rows");
  return Status::Ok();
}

Result<LayerWeights> StreamingWeightStore::AcquireLayer(uint32_t l) {
  if (l >= layers_.size()) return InvalidArgumentError("layer index out of range");
  if (l == 0) ++stats_.passes;
  Layer& layer = layers_[l];
  if (!layer.dense_pinned) {
    for (const layout::TensorInfo& info : layer.dense) stats_.bytes_requested += info.size_bytes();
    if (dense_direct_) {
      Slot& d = slots_[chunk_slots_];
      if (d.job != static_cast<int64_t>(l)) {  // not prefetched (first pass, or after an error)
        const Status landed = WaitSlot(chunk_slots_);
        (void)landed;
        RETURN_IF_ERROR(SubmitDense(l));
      }
      Status st = WaitSlot(chunk_slots_);
      if (st.ok()) st = FinishDense(l);
      d.job = -1;  // consumed: the next Forward may refill the buffer
      RETURN_IF_ERROR(st.WithContext("attention of layer " + std::to_string(l)));
    } else {
      const uint64_t t0 = storage::NowNs();
      RETURN_IF_ERROR(ReadDense(layer, dense_stream_.span(), /*assign_views=*/true));
      stats_.io_wait_ns += storage::NowNs() - t0;
    }
  }
  LayerWeights w;
  w.attn_norm = layer.attn_norm;
  w.ffn_norm = layer.ffn_norm;
  w.wq = layer.wq;
  w.wk = layer.wk;
  w.wv = layer.wv;
  w.wo = layer.wo;
  w.ffn = this;
  return w;
}

Status StreamingWeightStore::Forward(uint32_t l, std::span<const float> xb, uint32_t n,
                                     std::span<float> out) {
  Layer& layer = layers_[l];
  const uint32_t hidden = config_.hidden_dim;
  const uint32_t chunk = kernel_->chunk_max();
  kernel_->Begin(xb, n, out, geometry_.has_gate() ? nullptr : &layer.gate, reader_->Permutation(l));
  if (dense_direct_ && slots_[chunk_slots_].job != static_cast<int64_t>(next_dense_[l])) {
    // This layer's attention (and dense gate) are consumed: refill the buffer with the next
    // streamed layer's while the FFN computes.
    const Status landed = WaitSlot(chunk_slots_);  // a read for another layer (after an error)
    (void)landed;
    RETURN_IF_ERROR(SubmitDense(next_dense_[l]));
  }
  if (classifier_streamed_ && l + 1 == config_.n_layers) {
    // The classifier's first extents are read while the last FFN computes.
    for (uint32_t k = 0; k < 2 && k < classifier_extents_.size(); ++k) {
      const uint32_t slot = chunk_slots_ + 1 + k;
      if (slots_[slot].job < 0 && slots_[slot].pending == 0) {
        RETURN_IF_ERROR(SubmitClassifier(k, slot));
      }
    }
  }
  for (uint32_t p = 0; p < layer.pinned; p += chunk) {
    const uint32_t count = std::min(chunk, layer.pinned - p);
    kernel_->Accumulate(layer.prefix.data() + uint64_t{p} * spacing_, spacing_, p, count);
  }
  stats_.bundles_resident += layer.pinned;
  const uint32_t stream_chunk = plan_.chunk_bundles;
  for (uint32_t p = layer.pinned; p < hidden; p += stream_chunk) {
    const uint32_t count = std::min(stream_chunk, hidden - p);
    if (pipeline_) {
      const uint32_t j = job_first_[l] + (p - layer.pinned) / stream_chunk;
      if (ring_count_ == 0 || slots_[ring_head_].job != static_cast<int64_t>(j)) {
        DrainRing();  // cold start, or out of step after an error
        next_job_ = j;
      }
      const uint32_t cur = ring_head_;
      Status st = FillRing();
      if (st.ok()) st = WaitSlot(cur);
      const std::byte* base = chunk_stream_.data() + cur * chunk_buffer_bytes_;
      if (st.ok()) st = VerifyChunk(layer, p - layer.pinned, count, base);
      if (!st.ok()) {
        DrainRing();
        return st.WithContext("FFN layer " + std::to_string(l));
      }
      stats_.bytes_requested += uint64_t{count} * geometry_.bundle_bytes;
      stats_.bundles_streamed += count;
      for (uint32_t q = 0; q < count; q += chunk) {
        kernel_->Accumulate(base + uint64_t{q} * chunk_spacing_, chunk_spacing_, p + q,
                            std::min(chunk, count - q));
      }
      slots_[cur].job = -1;
      ring_head_ = (ring_head_ + 1) % chunk_slots_;
      --ring_count_;
      RETURN_IF_ERROR(FillRing());
      continue;
    }
    if (direct_chunks_) {  // waits for its reads (counted as I/O wait)
      RETURN_IF_ERROR(ReadChunkDirect(layer, p - layer.pinned, count)
                          .WithContext("FFN layer " + std::to_string(l)));
    } else {
      const uint64_t t0 = storage::NowNs();
      RETURN_IF_ERROR(reader_
                          ->ReadExtents(std::span<const layout::Extent>(
                                            layer.streamed.data() + (p - layer.pinned), count),
                                        std::span<const ByteSpan>(chunk_outs_.data(), count))
                          .WithContext("FFN layer " + std::to_string(l)));
      stats_.io_wait_ns += storage::NowNs() - t0;
    }
    stats_.bytes_requested += uint64_t{count} * geometry_.bundle_bytes;
    stats_.bundles_streamed += count;
    for (uint32_t q = 0; q < count; q += chunk) {
      kernel_->Accumulate(chunk_stream_.data() + uint64_t{q} * chunk_spacing_, chunk_spacing_,
                          p + q, std::min(chunk, count - q));
    }
  }
  return Status::Ok();
}

Status StreamingWeightStore::ReadChunkDirect(const Layer& layer, uint32_t first, uint32_t count) {
  const layout::Extent& e0 = layer.streamed[first];
  Slot& slot = slots_[0];
  slot.error = Status::Ok();
  requests_.clear();
  RETURN_IF_ERROR(
      QueueRead(0, e0.file_index, e0.offset_bytes,
                chunk_stream_.span().subspan(0, uint64_t{count} * geometry_.stride_bytes),
                chunk_read_bytes_));
  RETURN_IF_ERROR(SubmitQueued());
  RETURN_IF_ERROR(WaitSlot(0));
  return VerifyChunk(layer, first, count, chunk_stream_.data());
}

StreamingStats StreamingWeightStore::stats() const {
  StreamingStats s = stats_;
  s.bytes_read = reader_->io_stats().bytes() - backend_bytes_base_;
  s.reads = reader_->io_stats().reads() - backend_reads_base_;
  if (backend_) {
    s.bytes_read += backend_->stats().bytes();
    s.reads += backend_->stats().reads();
  }
  return s;
}

void StreamingWeightStore::ResetStats() {
  stats_ = StreamingStats();
  backend_bytes_base_ = reader_->io_stats().bytes();
  backend_reads_base_ = reader_->io_stats().reads();
  if (backend_) backend_->ResetStats();
}

}  // namespace flashlm::engine
