#include "engine/embedding_rows.h"

#include <algorithm>
#include <string>

#include "engine/weights.h"

namespace flashlm::engine {

Result<EmbeddingLayout> EmbeddingRows::Measure(layout::StoreReader& reader) {
  const layout::ModelConfig& c = reader.config();
  const layout::TensorInfo* emb = reader.FindTensor("token_embd.weight");
  if (emb == nullptr) return NotFoundError("store has no tensor token_embd.weight");
  const uint64_t shape[] = {c.vocab_size, c.dim};
  RETURN_IF_ERROR(CheckMatrix(*emb, shape));
  ASSIGN_OR_RETURN(layout::TensorLocation loc, reader.LocateTensor("token_embd.weight"));
  if (loc.record.placement != static_cast<uint8_t>(layout::Placement::kDense) ||
      loc.record.rows_per_extent == 0) {
    return CorruptionError("tensor token_embd.weight has a layout the engine cannot read");
  }
  EmbeddingLayout out;
  out.resident_bytes = storage::AlignedBuffer::ResidentBytes(emb->size_bytes(), 64, false);
  if (c.tied_embeddings && reader.FindTensor("output.weight") == nullptr) return out;
  // One extent's aligned cover (read in place) or its raw rows (decoded), whichever is larger.
  const uint64_t rows = std::min<uint64_t>(loc.record.rows_per_extent, c.vocab_size);
  const uint64_t raw = rows * layout::RowBytes(emb->dtype, c.dim);
  const uint64_t a = reader.extent_reader().buffer_alignment_bytes();
  out.demand_bytes = AlignUp(raw + 2 * a, 4096);
  out.reads_max = static_cast<uint32_t>(
      CeilDiv(out.demand_bytes, reader.extent_reader().limits().read_max_bytes) + 1);
  return out;
}

Result<std::unique_ptr<EmbeddingRows>> EmbeddingRows::Open(layout::StoreReader& reader,
                                                           const EmbeddingLayout& layout,
                                                           bool resident) {
  std::unique_ptr<EmbeddingRows> e(new EmbeddingRows(reader));
  e->extents_ = &reader.extent_reader();
  e->resident_ = resident || layout.demand_bytes == 0;
  ASSIGN_OR_RETURN(layout::TensorLocation loc, reader.LocateTensor("token_embd.weight"));
  e->info_ = loc.info;
  e->record_ = loc.record;
  e->row_bytes_ = layout::RowBytes(e->info_.dtype, e->info_.cols());
  if (e->resident_) {
    const uint64_t bytes = e->info_.size_bytes();
    ASSIGN_OR_RETURN(e->memory_,
                     storage::AlignedBuffer::Allocate(bytes, 64, /*huge_pages=*/false));
    RETURN_IF_ERROR(reader.ReadTensor(e->info_, e->memory_.span().first(bytes))
                        .WithContext("reading token_embd.weight"));
    e->matrix_ = MatrixView{e->info_.dtype, static_cast<uint32_t>(e->info_.rows()),
                            static_cast<uint32_t>(e->info_.cols()),
                            ConstByteSpan(e->memory_.data(), bytes)};
    return e;
  }
  ASSIGN_OR_RETURN(e->memory_,
                   storage::AlignedBuffer::Allocate(layout.demand_bytes, 4096, /*huge_pages=*/false));
  ASSIGN_OR_RETURN(e->group_, e->extents_->AddGroup(layout::ReadSource::kEmbedding));
  e->plan_.Reserve(1);
  return e;
}

EmbeddingRows::~EmbeddingRows() = default;

Status EmbeddingRows::Row(uint32_t token, std::span<float> out) {
  if (resident_) return layout::DequantizeRow(info_.dtype, matrix_.row(token), out);
  const uint64_t index = record_.first_extent + token / record_.rows_per_extent;
  if (index != held_extent_) {
    held_extent_ = UINT64_MAX;
    const layout::Extent e = reader_.ExtentAt(index);
    if (e.raw_bytes % row_bytes_ != 0 || e.raw_bytes > memory_.size_bytes()) {
      return CorruptionError("token_embd.weight extent " + std::to_string(index) +
                             " has an unexpected size");
    }
    const std::span<const layout::Extent> one(&e, 1);
    if (e.codec == layout::Codec::kNone) {  // in place: nothing is copied
      Status st = extents_->PlanExtents(one, 0, true, &plan_);
      if (st.ok() && plan_.bytes > memory_.size_bytes()) {
        st = CorruptionError("token_embd.weight extent " + std::to_string(index) +
                             " is larger than its buffer");
      }
      if (st.ok()) st = extents_->QueuePlan(group_, plan_, memory_.span());
      if (st.ok()) st = extents_->Submit();
      if (st.ok()) st = extents_->Wait(group_);
      held_rows_ = memory_.data() + plan_.Offset(0);
      if (st.ok()) st = extents_->Verify(e, ConstByteSpan(held_rows_, e.stored_bytes));
      RETURN_IF_ERROR(st.WithContext("reading token_embd.weight"));
    } else {  // decoded into the buffer
      const ByteSpan out_span = memory_.span().first(e.raw_bytes);
      RETURN_IF_ERROR(extents_->ReadExtents(one, std::span<const ByteSpan>(&out_span, 1))
                          .WithContext("reading token_embd.weight"));
      held_rows_ = memory_.data();
    }
    held_extent_ = index;
    held_row_count_ = e.raw_bytes / row_bytes_;
  }
  const uint64_t r = token % record_.rows_per_extent;
  if (r >= held_row_count_) {
    return CorruptionError("token_embd.weight extent " + std::to_string(index) + " lacks row " +
                           std::to_string(token));
  }
  return layout::DequantizeRow(info_.dtype, ConstByteSpan(held_rows_ + r * row_bytes_, row_bytes_),
                               out);
}

}  // namespace flashlm::engine
