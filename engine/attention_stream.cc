#include "engine/attention_stream.h"

#include <algorithm>
#include <cstring>
#include <string>

#include "engine/weights.h"
#include "layout/llama_tensors.h"
#include "storage/check.h"

namespace flashlm::engine {
namespace {

using layout::LayerTensor;

constexpr LayerTensor kRoles[] = {LayerTensor::kAttnQ, LayerTensor::kAttnK, LayerTensor::kAttnV,
                                  LayerTensor::kAttnOutput, LayerTensor::kFfnGate};

// A layer's matrices as the catalog has them, checked, with their extents in tensor order and
// where each tensor starts once closed up.
struct Found {
  std::vector<layout::TensorInfo> tensors;
  std::vector<uint64_t> tensor_at;
  uint64_t bytes = 0;  // closed up
  std::vector<layout::Extent> extents;
  std::vector<uint32_t> extent_tensor;
  bool in_order = true;  // uncompressed, and in file order tensor after tensor
};

Result<Found> FindLayer(layout::StoreReader& reader, uint32_t l, bool dense_gate) {
  const layout::ModelConfig& c = reader.config();
  Found f;
  for (uint32_t t = 0; t < (dense_gate ? 5u : 4u); ++t) {
    const std::string name = layout::LayerTensorName(l, kRoles[t]);
    const layout::TensorInfo* info = reader.FindTensor(name);
    if (info == nullptr) return NotFoundError("store has no tensor " + name);
    RETURN_IF_ERROR(CheckMatrix(*info, layout::LayerTensorShape(c, kRoles[t])));
    f.tensors.push_back(*info);
    f.tensor_at.push_back(AlignUp(f.bytes, 64));
    f.bytes = f.tensor_at.back() + info->size_bytes();
    ASSIGN_OR_RETURN(std::vector<layout::Extent> ext, reader.DenseExtents(name, 0, info->rows()));
    for (const layout::Extent& e : ext) {
      if (!f.extents.empty()) {
        const layout::Extent& prev = f.extents.back();
        f.in_order = f.in_order && (e.file_index > prev.file_index ||
                                    (e.file_index == prev.file_index &&
                                     e.offset_bytes >= prev.offset_bytes + prev.stored_bytes));
      }
      f.in_order = f.in_order && e.codec == layout::Codec::kNone;
      f.extents.push_back(e);
      f.extent_tensor.push_back(t);
    }
  }
  f.bytes = AlignUp(f.bytes, 64);  // pinned layers sit back to back, each at a 64-byte boundary
  return f;
}

}  // namespace

Result<AttentionLayout> AttentionStream::Measure(layout::StoreReader& reader, bool dense_gate) {
  AttentionLayout out;
  out.dense_gate = dense_gate;
  layout::ExtentReader& x = reader.extent_reader();
  layout::ExtentPlan plan;
  for (uint32_t l = 0; l < reader.config().n_layers; ++l) {
    ASSIGN_OR_RETURN(Found f, FindLayer(reader, l, dense_gate));
    out.layer_bytes.push_back(f.bytes);
    out.in_place = out.in_place && f.in_order;
    RETURN_IF_ERROR(x.PlanExtents(f.extents, x.alignment_bytes(), true, &plan));
    out.stream_buffer_bytes = std::max({out.stream_buffer_bytes, f.bytes, plan.bytes});
    out.reads_max = std::max(out.reads_max, static_cast<uint32_t>(plan.reads.reads.size()));
  }
  return out;
}

uint64_t AttentionStream::StreamBytes(const AttentionLayout& layout) {
  return storage::AlignedBuffer::ResidentBytes(layout.stream_buffer_bytes, 4096);
}

Result<std::unique_ptr<AttentionStream>> AttentionStream::Open(layout::StoreReader& reader,
                                                               const AttentionLayout& layout,
                                                               std::span<const uint8_t> pinned,
                                                               bool pipeline) {
  const uint32_t n_layers = reader.config().n_layers;
  if (pinned.size() != n_layers || layout.layer_bytes.size() != n_layers) {
    return InvalidArgumentError("attention stream: layer counts differ");
  }
  std::unique_ptr<AttentionStream> s(new AttentionStream(reader));
  s->extents_ = &reader.extent_reader();
  s->layout_ = layout;
  s->layers_.resize(n_layers);
  uint64_t pinned_bytes = 0;
  for (uint32_t l = 0; l < n_layers; ++l) {
    if (pinned[l]) pinned_bytes = AlignUp(pinned_bytes, 64) + layout.layer_bytes[l];
  }
  if (pinned_bytes > 0) {
    ASSIGN_OR_RETURN(s->pinned_memory_,
                     storage::AlignedBuffer::Allocate(pinned_bytes, 64, /*huge_pages=*/true));
  }
  uint64_t at = 0;
  for (uint32_t l = 0; l < n_layers; ++l) {
    Layer& layer = s->layers_[l];
    ASSIGN_OR_RETURN(Found f, FindLayer(reader, l, layout.dense_gate));
    layer.pinned = pinned[l] != 0;
    layer.tensors = std::move(f.tensors);
    layer.tensor_at = std::move(f.tensor_at);
    // Destinations: each extent after the previous one of its tensor.
    std::vector<uint64_t> filled(layer.tensors.size(), 0);
    for (size_t k = 0; k < f.extents.size(); ++k) {
      const uint32_t t = f.extent_tensor[k];
      layer.pieces.push_back(Piece{t, layer.tensor_at[t] + filled[t]});
      filled[t] += f.extents[k].raw_bytes;
    }
    for (size_t t = 0; t < layer.tensors.size(); ++t) {
      if (filled[t] != layer.tensors[t].size_bytes()) {
        return CorruptionError("tensor " + layer.tensors[t].name +
                               ": its extents do not add up to its size");
      }
    }
    if (layer.pinned) {
      at = AlignUp(at, 64);
      std::byte* base = s->pinned_memory_.data() + at;
      for (size_t k = 0; k < f.extents.size(); ++k) {
        layer.outs.push_back(ByteSpan(base + layer.pieces[k].dst_bytes, f.extents[k].raw_bytes));
      }
      RETURN_IF_ERROR(s->extents_->ReadExtents(f.extents, layer.outs)
                          .WithContext("attention of layer " + std::to_string(l)));
      layer.resident = s->Views(layer, base);
      // A pinned layer's matrices are only multiplied (MatMul): kept in 16-row strips where the
      // kernels read their dtype so, as a loaded checkpoint's are. Streamed layers stay as read.
      for (MatrixView* m : {&layer.resident.wq, &layer.resident.wk, &layer.resident.wv,
                            &layer.resident.wo, &layer.resident.gate}) {
        if (m->bytes.empty()) continue;
        std::byte* p = base + (m->bytes.data() - base);  // the writable pinned bytes it views
        *m = KeepInStrips(*m, ByteSpan(p, m->bytes.size()));
      }
      layer.outs.clear();
      layer.pieces.clear();
      at += layout.layer_bytes[l];
      continue;
    }
    layer.extents = std::move(f.extents);
    s->streamed_.push_back(l);
  }
  if (s->streamed_.empty()) return s;
  ASSIGN_OR_RETURN(s->buffer_, storage::AlignedBuffer::Allocate(layout.stream_buffer_bytes, 4096));
  ASSIGN_OR_RETURN(s->group_, s->extents_->AddGroup(layout::ReadSource::kAttention));
  for (uint32_t l : s->streamed_) {
    Layer& layer = s->layers_[l];
    if (layout.in_place) {
      layer.plan.Reserve(layer.extents.size());
      RETURN_IF_ERROR(s->extents_->PlanExtents(layer.extents, s->extents_->alignment_bytes(), true,
                                               &layer.plan));
      CHECK_LE(layer.plan.bytes, s->buffer_.size_bytes());
      // Each tensor where it lands when all of the layer's tensors land in one piece each (all or
      // none: a tensor closed up could overwrite one left in place).
      for (size_t k = 1; k < layer.extents.size(); ++k) {
        layer.close_up =
            layer.close_up ||
            (layer.pieces[k].tensor == layer.pieces[k - 1].tensor &&
             layer.plan.Offset(k) != layer.plan.Offset(k - 1) + layer.extents[k - 1].stored_bytes);
      }
      for (size_t k = 0; k < layer.extents.size() && !layer.close_up; ++k) {
        if (k == 0 || layer.pieces[k].tensor != layer.pieces[k - 1].tensor) {
          layer.tensor_at[layer.pieces[k].tensor] = layer.plan.Offset(k);
        }
      }
    } else {
      for (size_t k = 0; k < layer.extents.size(); ++k) {
        layer.outs.push_back(
            s->buffer_.span().subspan(layer.pieces[k].dst_bytes, layer.extents[k].raw_bytes));
      }
    }
  }
  s->next_streamed_.assign(n_layers, 0);
  for (uint32_t l = 0; l < n_layers; ++l) {
    auto it = std::upper_bound(s->streamed_.begin(), s->streamed_.end(), l);
    s->next_streamed_[l] = it == s->streamed_.end() ? s->streamed_.front() : *it;
  }
  s->prefetch_ = pipeline && layout.in_place;
  if (s->prefetch_) {
    AttentionStream* self = s.get();
    ASSIGN_OR_RETURN(const uint32_t slot,
                     s->extents_->AddIdleWork([self] { return self->VerifyAhead(); }));
    s->idle_slot_ = slot;
  }
  return s;
}

AttentionStream::~AttentionStream() {
  if (idle_slot_ >= 0) extents_->RemoveIdleWork(static_cast<uint32_t>(idle_slot_));
  if (state_ == State::kInFlight) extents_->Wait(group_).IgnoreError();
}

bool AttentionStream::VerifyAhead() {
  if (state_ != State::kInFlight || extents_->InFlight(group_) || !verify_error_.ok()) {
    return false;
  }
  const Layer& layer = layers_[buffer_layer_];
  // Extents checked on an earlier read (--verify-reads first) need nothing.
  while (hashed_ == 0 && verified_ < layer.extents.size() &&
         extents_->Verified(layer.extents[verified_])) {
    ++verified_;
  }
  if (verified_ >= layer.extents.size()) return false;
  const layout::Extent& e = layer.extents[verified_];
  const std::byte* src = buffer_.data() + layer.plan.Offset(verified_);
  const uint64_t n = std::min(kVerifySliceBytes, e.stored_bytes - hashed_);
  hash_.Update(ConstByteSpan(src + hashed_, n));
  hashed_ += n;
  if (hashed_ == e.stored_bytes) {
    verify_error_ = extents_->CheckDigest(e, hash_.Digest());
    hash_.Reset();
    hashed_ = 0;
    ++verified_;
  }
  return true;
}

AttentionStream::Matrices AttentionStream::Views(const Layer& layer, const std::byte* base) const {
  MatrixView v[5];
  for (size_t t = 0; t < layer.tensors.size(); ++t) {
    const layout::TensorInfo& info = layer.tensors[t];
    v[t] = MatrixView{info.dtype, static_cast<uint32_t>(info.rows()),
                      static_cast<uint32_t>(info.cols()),
                      ConstByteSpan(base + layer.tensor_at[t], info.size_bytes())};
  }
  return Matrices{v[0], v[1], v[2], v[3], v[4]};
}

Status AttentionStream::Queue(uint32_t l) {
  verified_ = 0;
  hashed_ = 0;
  hash_.Reset();
  verify_error_ = Status::Ok();
  RETURN_IF_ERROR(extents_->QueuePlan(group_, layers_[l].plan, buffer_.span()));
  state_ = State::kInFlight;
  buffer_layer_ = l;
  Status st = extents_->Submit();
  if (!st.ok()) state_ = State::kFree;
  return st;
}

Status AttentionStream::Finish(uint32_t l) {
  const Layer& layer = layers_[l];
  std::byte* base = buffer_.data();
  RETURN_IF_ERROR(verify_error_);  // found while waiting for other reads
  for (size_t k = 0; k < layer.extents.size(); ++k) {
    const layout::Extent& e = layer.extents[k];
    std::byte* src = base + layer.plan.Offset(k);
    if (k > verified_ || (k == verified_ && hashed_ == 0)) {
      RETURN_IF_ERROR(extents_->Verify(e, ConstByteSpan(src, e.stored_bytes)));
    } else if (k == verified_) {  // part hashed ahead: the rest
      hash_.Update(ConstByteSpan(src + hashed_, e.stored_bytes - hashed_));
      RETURN_IF_ERROR(extents_->CheckDigest(e, hash_.Digest()));
    }
    std::byte* dst = base + layer.pieces[k].dst_bytes;
    if (layer.close_up && dst != src) std::memmove(dst, src, e.stored_bytes);  // dst <= src
  }
  return Status::Ok();
}

Result<AttentionStream::Matrices> AttentionStream::Acquire(uint32_t l) {
  if (l >= layers_.size()) return InvalidArgumentError("attention stream: layer out of range");
  const Layer& layer = layers_[l];
  if (layer.pinned) return layer.resident;
  Status st;
  if (layout_.in_place) {
    if (state_ == State::kInFlight && buffer_layer_ != l) {
      extents_->Wait(group_).IgnoreError();  // read ahead for another layer (after an error)
      state_ = State::kFree;
    }
    if (state_ != State::kInFlight) st = Queue(l);
    if (st.ok()) st = extents_->Wait(group_);
    state_ = State::kFree;
    if (st.ok()) st = Finish(l);
  } else {
    st = extents_->ReadExtents(layer.extents, layer.outs);
  }
  if (!st.ok()) return st.WithContext("attention of layer " + std::to_string(l));
  state_ = State::kReady;
  buffer_layer_ = l;
  return Views(layer, buffer_.data());
}

Status AttentionStream::Release(uint32_t l) {
  if (state_ == State::kReady && buffer_layer_ == l) state_ = State::kFree;
  if (!prefetch_ || state_ != State::kFree) return Status::Ok();
  const uint32_t next = next_streamed_[l];
  return Queue(next);
}

}  // namespace flashlm::engine
