#include "engine/neuron_source.h"

#include <algorithm>
#include <cstring>
#include <string>

#include "storage/check.h"

namespace flashlm::engine {
namespace {

constexpr uint64_t kSlotAlign = 64;  // DRAM spacing of resident and decoded bundles

// Bytes one bundle's own read covers: its stored bytes widened to the files' alignment `a`;
// a store aligned more coarsely than `a` (the usual case) needs no more than its stride.
uint64_t SingleCover(const layout::BundleGeometry& g, uint64_t a, uint64_t store_alignment) {
  const uint64_t slack = a > store_alignment ? a - store_alignment : 0;
  return AlignUp(g.bundle_bytes + slack, std::max<uint64_t>(a, kSlotAlign));
}

}  // namespace

bool NeuronSource::Coalesces(const layout::BundleGeometry& g, uint64_t alignment_bytes,
                             uint64_t store_alignment_bytes, bool coalesce) {
  // Merging neighbours reads the store's padding between them too: worth it only while that
  // does not blow up the bytes read (and the buffers) beyond twice each bundle's own cover.
  return coalesce && g.stride_bytes <= 2 * SingleCover(g, alignment_bytes, store_alignment_bytes);
}

uint64_t NeuronSource::ChunkBufferBytes(const layout::BundleGeometry& g, uint32_t chunk_bundles,
                                        uint64_t alignment_bytes, uint64_t store_alignment_bytes,
                                        bool coalesce) {
  // Merged: chunk x stride, plus the first and last covers' widening when the files' alignment
  // is coarser than the store's. One read per bundle: each bundle's own cover. Decoded
  // (compressed) bundles take less than either.
  const uint64_t a = alignment_bytes;
  const uint64_t per = Coalesces(g, a, store_alignment_bytes, coalesce)
                           ? g.stride_bytes
                           : SingleCover(g, a, store_alignment_bytes);
  const uint64_t ends = a > store_alignment_bytes ? 2 * a : 0;
  return AlignUp(
      uint64_t{chunk_bundles} * std::max(per, AlignUp(g.bundle_bytes, kSlotAlign)) + ends,
      std::max<uint64_t>(a, kSlotAlign));
}

uint64_t NeuronSource::SplitReadBytes(const layout::BundleGeometry& g, uint64_t alignment_bytes) {
  const uint64_t parts = g.has_gate() ? 3 : 2;
  return AlignUp(CeilDiv(g.bundle_bytes, parts), alignment_bytes);
}

uint32_t NeuronSource::ChunkReadsMax(const layout::BundleGeometry& g, uint32_t chunk_bundles,
                                     uint64_t read_max_bytes, bool coalesce,
                                     uint64_t split_read_bytes) {
  if (split_read_bytes != 0) {
    // A bundle's cover is at most its bytes rounded up to the alignment plus one unit, and the
    // split is a multiple of the alignment: ceil(bytes / split) + 1 reads.
    return static_cast<uint32_t>(chunk_bundles * (CeilDiv(g.bundle_bytes, split_read_bytes) + 1));
  }
  // Merged: one span (a dense chunk) split at read_max_bytes; a scattered set (a sparse FFN's
  // misses) may need a span per bundle, and those reads must all go out together: a chunk limited
  // to a dense chunk's one or two reads would be cut to a few bundles (FormAdHocChunk), leaving a
  // handful of small reads in flight. One read per bundle otherwise.
  const uint64_t contiguous = uint64_t{chunk_bundles} * g.stride_bytes;
  return coalesce ? static_cast<uint32_t>(chunk_bundles + CeilDiv(contiguous, read_max_bytes) + 1)
                  : chunk_bundles;
}

uint64_t NeuronSource::PinnedBundleBytes(const layout::BundleGeometry& g) {
  return cache::NeuronCache::SlotBytesMax(g.bundle_bytes, kSlotAlign) +
         sizeof(const std::byte*);  // resident_
}

uint64_t NeuronSource::FixedBytes(const layout::BundleGeometry& g, uint32_t layers,
                                  uint32_t neurons, uint32_t chunk_bundles,
                                  uint32_t chunk_buffers) {
  uint64_t b = cache::NeuronCache::kHugePageSlackBytes;
  b += uint64_t{neurons} * (2 * sizeof(uint32_t) + sizeof(const std::byte*));  // iota, gather
  // Ad-hoc requests: ptr_, misses_, held_; per layer its counters.
  b += uint64_t{neurons} * (sizeof(const std::byte*) + sizeof(uint32_t) + sizeof(void*));
  b += uint64_t{layers} * sizeof(NeuronLayerStats);
  b += uint64_t{chunk_bundles} * sizeof(ByteSpan);  // decode_outs_
  // Per ring slot: positions, extents, pointers and the read plan.
  const uint64_t per_bundle = sizeof(uint32_t) + sizeof(layout::Extent) + sizeof(void*) +
                              sizeof(storage::PlannedSpan) + 2 * sizeof(storage::PlannedRead) +
                              sizeof(storage::RangeLocation) + sizeof(uint32_t) +
                              sizeof(storage::ByteRange) + sizeof(uint64_t);
  b += uint64_t{chunk_buffers} * (sizeof(Slot) + uint64_t{chunk_bundles} * per_bundle);
  b += (uint64_t{layers} * neurons / std::max<uint32_t>(chunk_bundles, 1) + layers) * sizeof(Job) +
       uint64_t{layers} * (2 * sizeof(uint32_t) + sizeof(std::vector<const std::byte*>));
  return b;
}

Result<std::unique_ptr<NeuronSource>> NeuronSource::Open(layout::StoreReader& reader,
                                                         std::span<const uint32_t> pinned,
                                                         const NeuronSourceOptions& options) {
  std::unique_ptr<NeuronSource> s(new NeuronSource(reader));
  s->extents_ = &reader.extent_reader();
  const uint32_t layers = reader.ffn_layer_count();
  if (layers == 0 || pinned.size() != layers) {
    return InvalidArgumentError("neuron source: pinned counts for " +
                                std::to_string(pinned.size()) + " layers, the store has " +
                                std::to_string(layers));
  }
  if (options.chunk_bundles == 0 || options.chunk_buffers == 0 ||
      options.chunk_buffers > kChunkBuffersMax) {
    return InvalidArgumentError("neuron source: chunk size and buffers must be positive (at most " +
                                std::to_string(kChunkBuffersMax) + " buffers)");
  }
  ASSIGN_OR_RETURN(s->geometry_, reader.FfnGeometry(0));
  ASSIGN_OR_RETURN(layout::FfnLayerRecord first, reader.FfnLayer(0));
  s->neurons_ = first.n_neurons;
  for (uint32_t l = 0; l < layers; ++l) {
    ASSIGN_OR_RETURN(layout::BundleGeometry g, reader.FfnGeometry(l));
    ASSIGN_OR_RETURN(layout::FfnLayerRecord rec, reader.FfnLayer(l));
    if (g.kind != s->geometry_.kind || g.dtype != s->geometry_.dtype || g.dim != s->geometry_.dim ||
        rec.n_neurons != s->neurons_) {
      return NotSupportedError("FFN layers with differing bundle geometry");
    }
    if (pinned[l] > s->neurons_) return InvalidArgumentError("neuron source: pinned > neurons");
  }
  s->options_ = options;
  s->pinned_.assign(pinned.begin(), pinned.end());
  uint64_t unpinned = 0;
  for (uint32_t l = 0; l < layers; ++l) unpinned += s->neurons_ - s->pinned_[l];
  s->cache_slots_ = static_cast<uint32_t>(std::min<uint64_t>(options.cache_slots, unpinned));
  if (options.regroup_pinned && s->cache_slots_ > 0) {
    return InvalidArgumentError(
        "neuron source: an LRU cache serves ad-hoc requests, which "
        "regrouped pinned bundles cannot");
  }
  s->layer_stats_.assign(layers, NeuronLayerStats());
  // Streamed bundles that are compressed cannot be read in place.
  bool streams = false;
  for (uint32_t l = 0; l < layers; ++l) {
    for (uint32_t p = s->pinned_[l]; p < s->neurons_; ++p) {
      streams = true;
      s->compressed_ = s->compressed_ || reader.BundleExtentAt(l, p).codec != layout::Codec::kNone;
    }
  }
  s->gap_max_bytes_ = options.merge_gap_bytes == NeuronSourceOptions::kGapOneStride
                          ? s->geometry_.stride_bytes
                          : options.merge_gap_bytes;
  s->decoded_spacing_ = AlignUp(s->geometry_.bundle_bytes, kSlotAlign);
  s->iota_.resize(s->neurons_);
  for (uint32_t p = 0; p < s->neurons_; ++p) s->iota_[p] = p;
  s->gathered_positions_.resize(s->neurons_);
  s->gathered_bundles_.resize(s->neurons_);
  s->ptr_.resize(s->neurons_);
  s->misses_.resize(s->neurons_);
  s->held_.resize(s->neurons_);
  s->decode_outs_.resize(options.chunk_bundles);
  RETURN_IF_ERROR(options.regroup_pinned ? s->LoadRegrouped() : s->LoadPinned());
  if (!streams) return s;

  // The ring and the dense schedule.
  const uint32_t chunk = std::min(options.chunk_bundles, s->neurons_);
  s->pipeline_ = options.pipeline && options.chunk_buffers >= 2 && !s->compressed_;
  const uint32_t ring = s->pipeline_ ? options.chunk_buffers : 1;
  const uint64_t a = s->extents_->alignment_bytes(), store_a = reader.header().alignment_bytes;
  if (options.split_read_bytes % a != 0) {
    return InvalidArgumentError("neuron source: read split of " +
                                std::to_string(options.split_read_bytes) +
                                " bytes is not a multiple of the alignment " + std::to_string(a));
  }
  const bool coalesce = options.coalesce && options.split_read_bytes == 0;
  s->options_.coalesce = Coalesces(s->geometry_, a, store_a, coalesce);
  s->slot_bytes_ = ChunkBufferBytes(s->geometry_, chunk, a, store_a, coalesce);
  ASSIGN_OR_RETURN(s->ring_memory_,
                   storage::AlignedBuffer::Allocate(uint64_t{ring} * s->slot_bytes_, 4096));
  s->slots_.resize(ring);
  for (uint32_t k = 0; k < ring; ++k) {
    Slot& slot = s->slots_[k];
    slot.buffer = s->ring_memory_.span().subspan(uint64_t{k} * s->slot_bytes_, s->slot_bytes_);
    ASSIGN_OR_RETURN(slot.group, s->extents_->AddGroup(layout::ReadSource::kFfn));
    slot.positions.resize(chunk);
    slot.extents.resize(chunk);
    slot.pointers.resize(chunk);
    slot.plan.Reserve(chunk);
  }
  s->options_.chunk_bundles = chunk;
  for (uint32_t l = 0; l < layers; ++l) {
    s->job_first_.push_back(static_cast<uint32_t>(s->jobs_.size()));
    for (uint32_t p = s->pinned_[l]; p < s->neurons_; p += chunk) {
      s->jobs_.push_back(Job{l, p, std::min(chunk, s->neurons_ - p)});
    }
    s->job_count_.push_back(static_cast<uint32_t>(s->jobs_.size()) - s->job_first_.back());
  }
  if (s->pipeline_) {  // chunks that land while another is awaited are verified meanwhile
    NeuronSource* self = s.get();
    ASSIGN_OR_RETURN(const uint32_t slot,
                     s->extents_->AddIdleWork([self] { return self->VerifyAhead(); }));
    s->idle_slot_ = slot;
  }
  return s;
}

NeuronSource::~NeuronSource() {
  if (idle_slot_ >= 0) extents_->RemoveIdleWork(static_cast<uint32_t>(idle_slot_));
  ResetRing();
  ReleaseHeld();
}

void NeuronSource::ResetStats() {
  stats_ = NeuronStats();
  std::fill(layer_stats_.begin(), layer_stats_.end(), NeuronLayerStats());
  if (cache_) cache_->ResetStats();
}

void NeuronSource::ReleaseHeld() {
  for (size_t i = 0; i < held_count_; ++i) cache_->Release(held_[i]);
  held_count_ = 0;
}

Status NeuronSource::LoadPinned() {
  uint64_t total = 0;
  for (uint32_t n : pinned_) total += n;
  resident_.resize(pinned_.size());
  if (total + cache_slots_ == 0) return Status::Ok();
  if (total + cache_slots_ > UINT32_MAX / 2) {
    return InvalidArgumentError("neuron source: too many bundles");
  }
  // One cache: the pinned bundles, and cache_slots_ more for the LRU over streamed ones.
  ASSIGN_OR_RETURN(cache_, cache::NeuronCache::Create(
                               (total + cache_slots_) * AlignUp(geometry_.bundle_bytes, kSlotAlign),
                               geometry_.bundle_bytes, kSlotAlign));
  cache_->SetWindow(options_.window_passes);
  // Layer by layer, in batches: reserve the slots, read the bundles straight into them (merged
  // reads through the staging buffer), then pin them for good.
  constexpr uint32_t kBatch = 4096;
  std::vector<cache::NeuronCache::Handle*> handles;
  std::vector<layout::Extent> extents;
  std::vector<ByteSpan> outs;
  for (uint32_t l = 0; l < pinned_.size(); ++l) {
    resident_[l].resize(pinned_[l]);
    for (uint32_t p0 = 0; p0 < pinned_[l]; p0 += kBatch) {
      const uint32_t count = std::min(kBatch, pinned_[l] - p0);
      handles.clear();
      extents.clear();
      outs.clear();
      Status st;
      for (uint32_t p = p0; p < p0 + count && st.ok(); ++p) {
        Result<cache::NeuronCache::Handle*> h = cache_->Reserve(l, p);
        if (!h.ok()) {
          st = h.status();
          break;
        }
        handles.push_back(*h);
        extents.push_back(reader_.BundleExtentAt(l, p));
        outs.push_back(cache_->Bytes(*h));
      }
      if (st.ok()) st = extents_->ReadExtents(extents, outs);
      if (!st.ok()) {
        for (cache::NeuronCache::Handle* h : handles) cache_->Abandon(h);
        return st.WithContext("loading FFN layer " + std::to_string(l));
      }
      for (uint32_t k = 0; k < count; ++k) {
        cache_->MarkFilled(handles[k]);
        cache_->PinForever(handles[k]);
        resident_[l][p0 + k] = outs[k].data();
      }
    }
  }
  return Status::Ok();
}

void NeuronSource::AdvanceHead() {
  slots_[ring_head_].job = -1;
  ring_head_ = (ring_head_ + 1) % RingSize();
  --ring_count_;
}

void NeuronSource::Unpark() {
  if (parked_ == 0) return;
  if (ring_count_ > 0) {  // a request left unfinished: start the ring afresh
    ResetRing();
    return;
  }
  for (uint32_t j = 0; j < parked_; ++j) Parked(j).job = -1;
  parked_ = 0;
  ring_head_ = 0;
}

const std::byte* NeuronSource::Admit(uint32_t position, const std::byte* bytes) {
  cache::NeuronCache::Handle* h = cache_slots_ != 0 ? cache_->TryReserve(layer_, position) : nullptr;
  if (h == nullptr) {
    ++stats_.admissions_refused;
    return bytes;
  }
  // Admitted: the bundle moves to its slot, the chunk's buffer need not hold it.
  const ByteSpan dst = cache_->Bytes(h);
  std::memcpy(dst.data(), bytes, geometry_.bundle_bytes);
  cache_->MarkFilled(h);
  held_[held_count_++] = h;
  ++stats_.bundles_admitted;
  return dst.data();
}

Status NeuronSource::LoadRegrouped() {
  const layout::BundleGeometry& g = geometry_;
  const uint64_t part = g.part_bytes;
  uint64_t total = 0;
  for (uint32_t n : pinned_) total += n;
  resident_.resize(pinned_.size());
  regrouped_.resize(pinned_.size());
  if (total == 0) return Status::Ok();
  if (total > UINT32_MAX / 2) return InvalidArgumentError("neuron source: too many bundles");
  ASSIGN_OR_RETURN(regrouped_memory_, storage::AlignedBuffer::Allocate(total * g.bundle_bytes, 64,
                                                                       /*huge_pages=*/true));
  // Read a few bundles at a time (checked against their checksums) into a staging buffer of
  // about 1 MiB, then copy each part to its place.
  const uint32_t stage =
      static_cast<uint32_t>(std::clamp<uint64_t>((uint64_t{1} << 20) / g.bundle_bytes, 1, 4096));
  std::vector<std::byte> staging(uint64_t{stage} * g.bundle_bytes);
  std::vector<layout::Extent> extents;
  std::vector<ByteSpan> outs;
  std::byte* base = regrouped_memory_.span().data();
  const DownLayout down_layout = DownLayout::For(g, options_.regroup_threads);
  for (uint32_t l = 0; l < pinned_.size(); ++l) {
    const uint32_t pinned = pinned_[l];
    if (pinned == 0) continue;
    std::byte* gate = g.has_gate() ? base : nullptr;
    std::byte* up = base + (g.has_gate() ? uint64_t{pinned} * part : 0);
    std::byte* down = up + uint64_t{pinned} * part;
    base += uint64_t{pinned} * g.bundle_bytes;
    resident_[l].resize(pinned);
    for (uint32_t p0 = 0; p0 < pinned; p0 += stage) {
      const uint32_t count = std::min(stage, pinned - p0);
      extents.clear();
      outs.clear();
      for (uint32_t k = 0; k < count; ++k) {
        extents.push_back(reader_.BundleExtentAt(l, p0 + k));
        outs.push_back(ByteSpan(staging.data() + uint64_t{k} * g.bundle_bytes, g.bundle_bytes));
      }
      RETURN_IF_ERROR(extents_->ReadExtents(extents, outs)
                          .WithContext("loading FFN layer " + std::to_string(l)));
      for (uint32_t k = 0; k < count; ++k) {
        const uint64_t p = p0 + k;
        const std::byte* b = outs[k].data();
        if (gate != nullptr) std::memcpy(gate + p * part, b + g.gate_offset(), part);
        std::memcpy(up + p * part, b + g.up_offset(), part);
        resident_[l][p] =
            down_layout.Place(down, pinned, static_cast<uint32_t>(p), b + g.down_offset());
      }
    }
    regrouped_[l] = Regroup(g, pinned, gate ? ByteSpan(gate, uint64_t{pinned} * part) : ByteSpan(),
                            ByteSpan(up, uint64_t{pinned} * part), resident_[l], down_layout);
  }
  return Status::Ok();
}

Status NeuronSource::Begin(uint32_t layer) {
  if (layer >= pinned_.size()) return InvalidArgumentError("neuron source: layer out of range");
  if (holding_) {  // the previous request's last chunk
    AdvanceHead();
    holding_ = false;
  }
  Unpark();  // the previous request's prefetched chunks
  if (cache_) {
    ReleaseHeld();  // the previous layer's bundles are done
    if (layer == 0) cache_->NextPass();
  }
  layer_ = layer;
  dense_ = true;
  pinned_served_ = false;
  request_ = {};
  if (!jobs_.empty()) {
    job_next_ = job_first_[layer];
    job_end_ = job_next_ + job_count_[layer];
  } else {
    job_next_ = job_end_ = 0;
  }
  return Status::Ok();
}

Status NeuronSource::Begin(uint32_t layer, std::span<const uint32_t> positions) {
  if (options_.regroup_pinned) {
    return InvalidArgumentError(
        "neuron source: pinned bundles regrouped for a dense FFN serve "
        "dense requests only");
  }
  RETURN_IF_ERROR(Begin(layer));
  for (size_t i = 0; i < positions.size(); ++i) {
    if (positions[i] >= neurons_ || (i > 0 && positions[i] <= positions[i - 1])) {
      return InvalidArgumentError("neuron source: positions must increase and be < " +
                                  std::to_string(neurons_));
    }
  }
  dense_ = false;
  if (prefetch_pending_ && prefetch_layer_ == layer && ring_count_ > 0) {
    // The chunks Prefetch read for this layer, all of the ring from its head: landed (verified)
    // and parked at the end of slots_, out of the ring, which starts empty before them.
    for (uint32_t j = 0; j < ring_count_; ++j) {
      if (Status st = Land(slots_[(ring_head_ + j) % RingSize()]); !st.ok()) return Fail(st);
    }
    const uint32_t parked = ring_count_;
    std::rotate(slots_.begin(), slots_.begin() + (ring_head_ + parked) % slots_.size(),
                slots_.end());
    ring_head_ = ring_count_ = 0;
    parked_ = parked;
  } else {
    ResetRing();  // what is in flight belongs to the dense schedule or another request
  }
  prefetch_pending_ = false;
  request_ = positions;
  request_streamed_ =
      std::lower_bound(positions.begin(), positions.end(), pinned_[layer]) - positions.begin();
  // Cached bundles are pinned for the layer, prefetched ones served from their parked chunks;
  // the rest are the misses, read in chunks.
  NeuronLayerStats& ls = layer_stats_[layer];
  ls.requested += positions.size();
  ls.pinned += request_streamed_;
  miss_count_ = 0;
  uint64_t prefetched = 0;
  uint32_t pj = 0, pk = 0;  // the next parked chunk and bundle not below positions[i]
  for (size_t i = request_streamed_; i < positions.size(); ++i) {
    cache::NeuronCache::Handle* h =
        cache_slots_ != 0 ? cache_->Lookup(layer, positions[i]) : nullptr;
    if (h != nullptr) {
      held_[held_count_++] = h;
      ptr_[i] = cache_->Bytes(h).data();
      continue;
    }
    while (pj < parked_ && (pk == Parked(pj).count || Parked(pj).positions[pk] < positions[i])) {
      if (pk == Parked(pj).count) {
        ++pj;
        pk = 0;
      } else {
        ++pk;
      }
    }
    if (pj < parked_ && Parked(pj).positions[pk] == positions[i]) {
      ptr_[i] = Admit(positions[i], Parked(pj).pointers[pk]);
      ++prefetched;
    } else {
      ptr_[i] = nullptr;
      misses_[miss_count_++] = static_cast<uint32_t>(i);
    }
  }
  const uint64_t cached = positions.size() - request_streamed_ - miss_count_ - prefetched;
  ls.cached += cached;
  ls.streamed += miss_count_ + prefetched;
  stats_.bundles_streamed += prefetched;
  stats_.prefetch_used += prefetched;
  stats_.bundles_cached += cached;
  stats_.bundles_resident += cached;
  request_next_ = 0;
  cursor_ = request_streamed_;
  // The misses' reads go out now, while the pinned and cached bundles are computed.
  if (Status st = FillRing(); !st.ok()) return Fail(st);
  return Status::Ok();
}

Status NeuronSource::Submit(Slot& slot) {
  slot.verified = 0;
  slot.verify_error = Status::Ok();
  for (uint32_t k = 0; k < slot.count; ++k) {
    slot.extents[k] = reader_.BundleExtentAt(slot.layer, slot.positions[k]);
  }
  const std::span<const layout::Extent> extents(slot.extents.data(), slot.count);
  if (compressed_) {  // read, verified and decoded now
    for (uint32_t k = 0; k < slot.count; ++k) {
      decode_outs_[k] = slot.buffer.subspan(k * decoded_spacing_, geometry_.bundle_bytes);
      slot.pointers[k] = decode_outs_[k].data();
    }
    return extents_->ReadExtents(extents,
                                 std::span<const ByteSpan>(decode_outs_.data(), slot.count));
  }
  RETURN_IF_ERROR(extents_->PlanExtents(extents, gap_max_bytes_, options_.coalesce, &slot.plan,
                                        options_.split_read_bytes));
  if (slot.plan.bytes > slot.buffer.size()) {
    return InternalError("neuron source: a chunk's reads do not fit its buffer");
  }
  RETURN_IF_ERROR(extents_->QueuePlan(slot.group, slot.plan, slot.buffer));
  RETURN_IF_ERROR(extents_->Submit());
  stats_.bytes_requested += slot.plan.requested_bytes;
  stats_.reads += slot.plan.reads.reads.size();
  for (const storage::PlannedRead& r : slot.plan.reads.reads) stats_.bytes_read += r.length_bytes;
  return Status::Ok();
}

Status NeuronSource::Land(Slot& slot) {
  if (compressed_) return Status::Ok();
  RETURN_IF_ERROR(extents_->Wait(slot.group));
  RETURN_IF_ERROR(slot.verify_error);  // found ahead
  for (uint32_t k = 0; k < slot.count; ++k) {
    const std::byte* p = slot.buffer.data() + slot.plan.Offset(k);
    if (k >= slot.verified) {
      RETURN_IF_ERROR(extents_->Verify(slot.extents[k], ConstByteSpan(p, geometry_.bundle_bytes)));
    }
    slot.pointers[k] = p;
  }
  slot.verified = slot.count;
  return Status::Ok();
}

bool NeuronSource::VerifyAhead() {
  const uint32_t ring = RingSize();
  for (uint32_t j = 0; j < ring_count_; ++j) {
    Slot& slot = slots_[(ring_head_ + j) % ring];
    if (slot.job == -1 || slot.verified >= slot.count || !slot.verify_error.ok() ||
        extents_->InFlight(slot.group)) {
      continue;
    }
    uint64_t hashed = 0;
    while (slot.verified < slot.count && hashed < layout::ExtentReader::kIdleVerifyBytes &&
           slot.verify_error.ok()) {
      const uint32_t k = slot.verified++;
      slot.verify_error = extents_->Verify(
          slot.extents[k],
          ConstByteSpan(slot.buffer.data() + slot.plan.Offset(k), geometry_.bundle_bytes));
      hashed += geometry_.bundle_bytes;
    }
    return true;
  }
  return false;
}

Status NeuronSource::FormAdHocChunk(Slot& slot) {
  // Up to chunk_bundles positions, fewer when their merged reads would not fit the buffer or
  // need more reads than a slot may have in flight.
  const uint32_t reads_max = ChunkReadsMax(geometry_, options_.chunk_bundles,
                                           extents_->limits().read_max_bytes, options_.coalesce,
                                           options_.split_read_bytes);
  uint32_t count =
      static_cast<uint32_t>(std::min<size_t>(options_.chunk_bundles, miss_count_ - request_next_));
  slot.layer = layer_;
  slot.miss_first = request_next_;
  while (true) {
    for (uint32_t k = 0; k < count; ++k) {
      slot.positions[k] = request_[misses_[request_next_ + k]];
      slot.extents[k] = reader_.BundleExtentAt(layer_, slot.positions[k]);
    }
    slot.count = count;
    if (compressed_) break;
    RETURN_IF_ERROR(
        extents_->PlanExtents(std::span<const layout::Extent>(slot.extents.data(), count),
                              gap_max_bytes_, options_.coalesce, &slot.plan,
                              options_.split_read_bytes));
    if ((slot.plan.bytes <= slot.buffer.size() && slot.plan.reads.reads.size() <= reads_max) ||
        count == 1) {
      break;
    }
    count = (count + 1) / 2;
  }
  request_next_ += count;
  slot.job = kAdHoc;
  return Submit(slot);
}

Status NeuronSource::FillRing() {
  const uint32_t ring = RingSize();
  while (ring_count_ < ring) {
    Slot& slot = slots_[(ring_head_ + ring_count_) % ring];
    if (dense_) {
      const Job& job = jobs_[next_job_];
      slot.layer = job.layer;
      slot.count = job.count;
      for (uint32_t k = 0; k < job.count; ++k) slot.positions[k] = job.first + k;
      slot.job = next_job_;
      next_job_ = (next_job_ + 1) % static_cast<uint32_t>(jobs_.size());
      ++ring_count_;  // counted before the reads go out, so that a failure resets it
      RETURN_IF_ERROR(Submit(slot));
    } else {
      if (request_next_ >= miss_count_) break;
      ++ring_count_;
      RETURN_IF_ERROR(FormAdHocChunk(slot));
    }
  }
  return Status::Ok();
}

void NeuronSource::ResetRing() {
  for (Slot& slot : slots_) {
    if (slot.job != -1) extents_->Wait(slot.group).IgnoreError();  // it may still be in flight
    slot.job = -1;
  }
  ring_head_ = ring_count_ = 0;
  holding_ = false;
  parked_ = 0;
  prefetch_pending_ = false;
}

Status NeuronSource::Prefetch(uint32_t layer, std::span<const uint32_t> positions) {
  if (layer >= pinned_.size()) return InvalidArgumentError("neuron source: layer out of range");
  if (options_.regroup_pinned) {
    return InvalidArgumentError(
        "neuron source: pinned bundles regrouped for a dense FFN serve "
        "dense requests only");
  }
  for (size_t i = 0; i < positions.size(); ++i) {
    if (positions[i] >= neurons_ || (i > 0 && positions[i] <= positions[i - 1])) {
      return InvalidArgumentError("neuron source: positions must increase and be < " +
                                  std::to_string(neurons_));
    }
  }
  // The current request ends here; nothing it read is needed any more.
  if (cache_) ReleaseHeld();
  ResetRing();
  dense_ = false;
  pinned_served_ = true;
  request_ = {};
  miss_count_ = request_next_ = cursor_ = 0;
  job_next_ = job_end_ = 0;
  // One slot stays free for the misses of the request the guess is for.
  if (compressed_ || slots_.size() < 2) return Status::Ok();
  layer_ = layer;
  request_ = positions;
  for (size_t i = std::lower_bound(positions.begin(), positions.end(), pinned_[layer]) -
                  positions.begin();
       i < positions.size(); ++i) {
    if (cache_slots_ != 0 && cache_->Contains(layer, positions[i])) continue;
    misses_[miss_count_++] = static_cast<uint32_t>(i);
  }
  const uint32_t ring = static_cast<uint32_t>(slots_.size()) - 1;
  while (ring_count_ < ring && request_next_ < miss_count_) {
    Slot& slot = slots_[(ring_head_ + ring_count_) % slots_.size()];
    ++ring_count_;
    if (Status st = FormAdHocChunk(slot); !st.ok()) return Fail(st);
    slot.job = kPrefetch;
    stats_.bundles_prefetched += slot.count;
  }
  request_ = {};
  miss_count_ = request_next_ = 0;
  prefetch_pending_ = ring_count_ > 0;
  prefetch_layer_ = layer;
  return Status::Ok();
}

Status NeuronSource::Fail(Status st) {
  ResetRing();
  if (cache_) ReleaseHeld();
  request_ = {};
  miss_count_ = request_next_ = cursor_ = 0;
  return st.WithContext("FFN layer " + std::to_string(layer_));
}

Result<bool> NeuronSource::Next(Batch* batch) {
  if (holding_) {  // the chunk handed out last time is done: its buffer takes the next one
    AdvanceHead();
    holding_ = false;
  }
  if (!pinned_served_) {
    pinned_served_ = true;
    const uint32_t pinned = pinned_[layer_];
    if (dense_ && pinned > 0 && options_.regroup_pinned) {
      *batch = Batch{std::span<const uint32_t>(iota_.data(), pinned), {}, &regrouped_[layer_]};
      stats_.bundles_resident += pinned;
      return true;
    }
    if (dense_ && pinned > 0) {
      *batch = Batch{std::span<const uint32_t>(iota_.data(), pinned),
                     std::span<const std::byte* const>(resident_[layer_].data(), pinned)};
      stats_.bundles_resident += pinned;
      return true;
    }
    if (!dense_ && request_streamed_ > 0) {
      for (size_t i = 0; i < request_streamed_; ++i) {
        gathered_positions_[i] = request_[i];
        gathered_bundles_[i] = resident_[layer_][request_[i]];
      }
      *batch =
          Batch{std::span<const uint32_t>(gathered_positions_.data(), request_streamed_),
                std::span<const std::byte* const>(gathered_bundles_.data(), request_streamed_)};
      stats_.bundles_resident += request_streamed_;
      return true;
    }
  }
  if (!dense_) return NextAdHoc(batch);
  {
    if (job_next_ == job_end_) return false;
    if (ring_count_ > 0 && slots_[ring_head_].job != static_cast<int64_t>(job_next_)) {
      ResetRing();  // out of step: an error, or another request came between
    }
    if (ring_count_ == 0) next_job_ = job_next_;
    if (Status st = FillRing(); !st.ok()) return Fail(st);
    ++job_next_;
  }
  Slot& head = slots_[ring_head_];
  if (Status st = Land(head); !st.ok()) return Fail(st);
  holding_ = true;
  stats_.bundles_streamed += head.count;
  *batch = Batch{std::span<const uint32_t>(head.positions.data(), head.count),
                 std::span<const std::byte* const>(head.pointers.data(), head.count)};
  return true;
}

Result<bool> NeuronSource::LandAdHoc() {
  Slot& head = slots_[ring_head_];
  RETURN_IF_ERROR(Land(head));
  bool needed = false;
  for (uint32_t k = 0; k < head.count; ++k) {
    const uint32_t i = misses_[head.miss_first + k];
    ptr_[i] = Admit(head.positions[k], head.pointers[k]);
    needed = needed || ptr_[i] == head.pointers[k];
  }
  stats_.bundles_streamed += head.count;
  return needed;
}

Result<bool> NeuronSource::NextAdHoc(Batch* batch) {
  // Walks the request in position order, gathering cached and landed bundles, landing the ring's
  // head chunk when its first miss is reached. A chunk whose bundles all went into the cache frees
  // its buffer at once (more reads go out); one that still serves bundles is held, and the batch
  // ends before the next chunk's first miss.
  size_t n = 0;
  while (cursor_ < request_.size()) {
    if (ptr_[cursor_] == nullptr) {
      if (holding_) break;  // the held chunk's views must outlive this batch
      if (Status st = FillRing(); !st.ok()) return Fail(st);
      CHECK_GT(ring_count_, 0u);
      Result<bool> needed = LandAdHoc();
      if (!needed.ok()) return Fail(needed.status());
      if (*needed) {
        holding_ = true;
      } else {
        AdvanceHead();
        if (Status st = FillRing(); !st.ok()) return Fail(st);
      }
      CHECK(ptr_[cursor_] != nullptr);
    }
    gathered_positions_[n] = request_[cursor_];
    gathered_bundles_[n] = ptr_[cursor_];
    ++n;
    ++cursor_;
  }
  if (n == 0) return false;
  *batch = Batch{std::span<const uint32_t>(gathered_positions_.data(), n),
                 std::span<const std::byte* const>(gathered_bundles_.data(), n)};
  return true;
}

}  // namespace flashlm::engine
