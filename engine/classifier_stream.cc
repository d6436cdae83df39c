#include "engine/classifier_stream.h"

#include <algorithm>
#include <string>

#include "engine/weights.h"
#include "storage/check.h"

namespace flashlm::engine {

Result<ClassifierLayout> ClassifierStream::Measure(layout::StoreReader& reader) {
  ClassifierLayout out;
  const layout::TensorInfo* cls = reader.FindTensor("output.weight");
  if (cls == nullptr) return out;  // tied to the embedding
  const layout::ModelConfig& c = reader.config();
  const uint64_t shape[] = {c.vocab_size, c.dim};
  RETURN_IF_ERROR(CheckMatrix(*cls, shape));
  out.tensor_bytes = cls->size_bytes();
  out.resident_bytes = storage::AlignedBuffer::ResidentBytes(cls->size_bytes(), 64, true);
  ASSIGN_OR_RETURN(layout::TensorLocation loc, reader.LocateTensor("output.weight"));
  ASSIGN_OR_RETURN(std::vector<layout::Extent> ext,
                   reader.DenseExtents("output.weight", 0, c.vocab_size));
  const uint64_t row_bytes = layout::RowBytes(cls->dtype, c.dim);
  bool streamable = !ext.empty() && loc.record.rows_per_extent > 0;
  layout::ExtentReader& x = reader.extent_reader();
  layout::ExtentPlan plan;
  for (const layout::Extent& e : ext) {
    streamable = streamable && e.codec == layout::Codec::kNone && e.raw_bytes % row_bytes == 0 &&
                 e.raw_bytes <= loc.record.rows_per_extent * row_bytes;
    if (!streamable) break;
    RETURN_IF_ERROR(x.PlanExtents(std::span<const layout::Extent>(&e, 1), 0, true, &plan));
    out.buffer_bytes = std::max(out.buffer_bytes, AlignUp(plan.bytes, 4096));
    out.reads_per_block =
        std::max(out.reads_per_block, static_cast<uint32_t>(plan.reads.reads.size()));
  }
  out.streamable = streamable;
  out.rows_max = static_cast<uint32_t>(std::min<uint64_t>(loc.record.rows_per_extent, c.vocab_size));
  return out;
}

uint64_t ClassifierStream::StreamBytes(const ClassifierLayout& layout) {
  return storage::AlignedBuffer::ResidentBytes(2 * layout.buffer_bytes, 4096);
}

Result<std::unique_ptr<ClassifierStream>> ClassifierStream::Open(layout::StoreReader& reader,
                                                                 const ClassifierLayout& layout,
                                                                 bool pipeline) {
  CHECK(layout.streamable);
  std::unique_ptr<ClassifierStream> s(new ClassifierStream(reader));
  s->pipeline_ = pipeline;
  s->extents_ = &reader.extent_reader();
  s->layout_ = layout;
  s->info_ = *reader.FindTensor("output.weight");
  ASSIGN_OR_RETURN(s->extents_list_,
                   reader.DenseExtents("output.weight", 0, reader.config().vocab_size));
  ASSIGN_OR_RETURN(s->memory_, storage::AlignedBuffer::Allocate(2 * layout.buffer_bytes, 4096));
  for (int k = 0; k < 2; ++k) {
    Slot& slot = s->slots_[k];
    slot.buffer = s->memory_.span().subspan(k * layout.buffer_bytes, layout.buffer_bytes);
    ASSIGN_OR_RETURN(slot.group, s->extents_->AddGroup(layout::ReadSource::kClassifier));
    slot.plan.Reserve(1);
  }
  return s;
}

ClassifierStream::~ClassifierStream() { Reset(); }

void ClassifierStream::Reset() {
  for (Slot& slot : slots_) {
    if (slot.extent >= 0 && !slot.landed) extents_->Wait(slot.group).IgnoreError();
    slot.extent = -1;
    slot.landed = false;
  }
  holding_ = false;
}

Status ClassifierStream::Queue(Slot& slot, uint32_t extent) {
  const layout::Extent& e = extents_list_[extent];
  RETURN_IF_ERROR(
      extents_->PlanExtents(std::span<const layout::Extent>(&e, 1), 0, true, &slot.plan));
  RETURN_IF_ERROR(extents_->QueuePlan(slot.group, slot.plan, slot.buffer));
  slot.extent = extent;
  slot.landed = false;
  Status st = extents_->Submit();
  if (!st.ok()) slot.extent = -1;
  return st;
}

Status ClassifierStream::Prefetch() {
  const uint32_t count = static_cast<uint32_t>(extents_list_.size());
  for (uint32_t k = 0; k < 2 && k < count; ++k) {
    if (slots_[k].extent < 0) RETURN_IF_ERROR(Queue(slots_[k], k));
  }
  return Status::Ok();
}

Status ClassifierStream::Begin() {
  holding_ = false;
  next_ = 0;
  row_ = 0;
  return Status::Ok();
}

Result<bool> ClassifierStream::Next(MatrixView* block, uint32_t* first_row) {
  const uint32_t count = static_cast<uint32_t>(extents_list_.size());
  if (holding_) {  // the previous block is done: its buffer takes the block after the next
    Slot& done = slots_[(next_ - 1) % 2];
    done.extent = -1;
    holding_ = false;
    if (pipeline_ && next_ + 1 < count) {
      if (Status st = Queue(done, next_ + 1); !st.ok()) {
        Reset();
        return st.WithContext("classifier");
      }
    }
  }
  if (next_ == count) {
    if (row_ != info_.rows()) {
      return CorruptionError("classifier extents do not cover its " +
                             std::to_string(info_.rows()) + " rows");
    }
    return false;
  }
  Slot& slot = slots_[next_ % 2];
  Status st;
  if (slot.extent != static_cast<int64_t>(next_)) {  // not prefetched (or out of step)
    if (slot.extent >= 0 && !slot.landed) extents_->Wait(slot.group).IgnoreError();
    st = Queue(slot, next_);
  }
  if (st.ok() && !slot.landed) st = extents_->Wait(slot.group);
  const layout::Extent& e = extents_list_[next_];
  const std::byte* bytes = slot.buffer.data() + slot.plan.Offset(0);
  if (st.ok()) st = extents_->Verify(e, ConstByteSpan(bytes, e.stored_bytes));
  if (!st.ok()) {
    Reset();
    return st.WithContext("classifier");
  }
  slot.landed = true;
  const uint64_t row_bytes = layout::RowBytes(info_.dtype, info_.cols());
  const uint32_t rows = static_cast<uint32_t>(e.raw_bytes / row_bytes);
  if (uint64_t{row_} + rows > info_.rows()) {
    Reset();
    return CorruptionError("classifier extents exceed its rows");
  }
  *block = MatrixView{info_.dtype, rows, static_cast<uint32_t>(info_.cols()),
                      ConstByteSpan(bytes, e.raw_bytes)};
  *first_row = row_;
  row_ += rows;
  ++next_;
  holding_ = true;
  return true;
}

}  // namespace flashlm::engine
