#include "layout/extent_reader.h"

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <cstring>

#include "storage/check.h"
#include "storage/checksum.h"
#include "storage/zstd_codec.h"

namespace flashlm::layout {
namespace {

// Plans run over one address space: the file index in the top bits, the offset below, so that
// extents of different files never merge (file offsets are < 2^48: 256 TiB).
constexpr int kFileShift = 48;
constexpr uint64_t kOffsetMask = (uint64_t{1} << kFileShift) - 1;

std::string Hex(uint64_t v) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "0x%016" PRIx64, v);
  return buf;
}

}  // namespace

void ExtentPlan::Reserve(size_t extents) {
  reads.spans.reserve(extents);
  reads.reads.reserve(extents * 2 + 8);
  reads.locations.reserve(extents);
  reads.order_scratch.reserve(extents);
  ranges.reserve(extents);
  span_at.reserve(extents);
}

Result<std::unique_ptr<ExtentReader>> ExtentReader::Open(const std::vector<std::string>& data_files,
                                                         const ExtentReaderOptions& options,
                                                         DescribeFn describe) {
  std::unique_ptr<ExtentReader> r(new ExtentReader());
  r->options_ = options;
  r->describe_ = std::move(describe);
  storage::FileOptions fo;
  fo.direct = options.direct;
  for (const std::string& path : data_files) {
    ASSIGN_OR_RETURN(storage::File f, storage::File::OpenForRead(path, fo));
    r->alignment_ = std::max(r->alignment_, f.required_alignment_bytes());
    r->files_.push_back(std::move(f));
  }
  RETURN_IF_ERROR(r->SetLimits(ExtentReaderLimits()));
  return r;
}

ExtentReader::~ExtentReader() { Drain(); }

uint64_t ExtentReader::ResidentBytes(const ExtentReaderLimits& l) {
  const uint64_t per_tag = sizeof(Pending) + sizeof(uint32_t) + sizeof(storage::ReadRequest) +
                           sizeof(storage::ReadCompletion);
  const uint64_t per_extent = sizeof(storage::PlannedSpan) + 2 * sizeof(storage::PlannedRead) +
                              sizeof(storage::RangeLocation) + sizeof(uint32_t) +
                              sizeof(storage::ByteRange) + sizeof(uint64_t);
  return storage::AlignedBuffer::ResidentBytes(l.staging_bytes, 4096) +
         uint64_t{l.queue_depth} * per_tag + (uint64_t{l.groups} + 1) * sizeof(Group) +
         uint64_t{l.plan_extents} * per_extent + (64u << 10);  // + the ring's own pages
}

Status ExtentReader::SetLimits(const ExtentReaderLimits& limits) {
  CHECK(backend_ == nullptr || backend_->in_flight() == 0);
  if (limits.queue_depth == 0 || limits.queue_depth > 4096) {
    return InvalidArgumentError("extent reader: queue depth must be in [1, 4096]");
  }
  if (limits.read_max_bytes == 0 || limits.read_max_bytes % 4096 != 0 ||
      limits.read_max_bytes % alignment_ != 0) {
    return InvalidArgumentError("extent reader: read size must be a positive multiple of 4 KiB");
  }
  if (limits.plan_extents == 0) return InvalidArgumentError("extent reader: zero plan capacity");
  storage::ReadBackendOptions bo;
  bo.queue_depth_max = limits.queue_depth;
  bo.files_max = static_cast<uint32_t>(std::max<size_t>(files_.size(), 1));
  backend_.reset();
  ASSIGN_OR_RETURN(backend_, storage::MakeReadBackend(options_.backend, bo));
  file_ids_.clear();
  for (const storage::File& f : files_) {
    ASSIGN_OR_RETURN(uint32_t id, backend_->RegisterFile(f));
    file_ids_.push_back(id);
  }
  limits_ = limits;
  pending_.assign(limits.queue_depth, Pending());
  free_tags_.clear();
  free_tags_.reserve(limits.queue_depth);
  for (uint32_t t = limits.queue_depth; t > 0; --t) free_tags_.push_back(t - 1);
  groups_.assign(uint64_t{limits.groups} + 1, Group());
  idle_.clear();
  idle_.reserve(kIdleWorkMax);
  idle_count_ = 0;
  groups_taken_ = 0;
  requests_.clear();
  requests_.reserve(limits.queue_depth);
  completions_.assign(limits.queue_depth, storage::ReadCompletion());
  plan_.Reserve(limits.plan_extents);
  if (staging_.size_bytes() != 0 && staging_.size_bytes() != limits.staging_bytes) {
    staging_ = storage::AlignedBuffer();  // re-allocated at first use
  }
  ResetCounters();
  return Status::Ok();
}

std::string ExtentReader::DescribeExtent(const Extent& e) const {
  std::string what = describe_ ? describe_(e.index) : std::string();
  return "extent " + std::to_string(e.index) + " (" + (what.empty() ? "" : what + "; ") +
         DataFileName(e.file_index) + " offset " + std::to_string(e.offset_bytes) + ", " +
         std::to_string(e.stored_bytes) + " bytes)";
}

Status ExtentReader::Verify(const Extent& e, ConstByteSpan stored) const {
  if (stored.size() == e.stored_bytes && Verified(e)) return Status::Ok();
  const uint64_t sum = storage::Checksum64(stored);
  if (stored.size() == e.stored_bytes) return CheckDigest(e, sum);
  return MismatchError(e, sum);
}

Status ExtentReader::CheckDigest(const Extent& e, uint64_t digest) const {
  if (digest != e.checksum) return MismatchError(e, digest);
  if (e.index < verified_extents_) verified_[e.index >> 6] |= uint64_t{1} << (e.index & 63);
  return Status::Ok();
}

void ExtentReader::VerifyFirstReadOnly(uint64_t extent_count) {
  verified_.assign(CeilDiv(extent_count, 64), 0);
  verified_extents_ = extent_count;
}

Status ExtentReader::MismatchError(const Extent& e, uint64_t digest) const {
  return CorruptionError("checksum mismatch in " + DescribeExtent(e) + ": catalog " +
                         Hex(e.checksum) + ", data " + Hex(digest));
}

Result<uint32_t> ExtentReader::AddIdleWork(IdleWork work) {
  for (uint32_t i = 0; i < idle_.size(); ++i) {
    if (!idle_[i]) {
      idle_[i] = std::move(work);
      ++idle_count_;
      return i;
    }
  }
  if (idle_.size() >= kIdleWorkMax) {
    return ResourceExhaustedError("extent reader: more than " + std::to_string(kIdleWorkMax) +
                                  " idle works");
  }
  idle_.push_back(std::move(work));
  ++idle_count_;
  return static_cast<uint32_t>(idle_.size() - 1);
}

void ExtentReader::RemoveIdleWork(uint32_t slot) {
  if (slot < idle_.size() && idle_[slot]) {
    idle_[slot] = nullptr;
    --idle_count_;
  }
}

bool ExtentReader::RunIdleWork() {
  for (IdleWork& w : idle_) {
    if (w && w()) return true;
  }
  return false;
}

const char* ReadSourceName(ReadSource source) {
  switch (source) {
    case ReadSource::kOther:
      return "other";
    case ReadSource::kAttention:
      return "attention";
    case ReadSource::kFfn:
      return "ffn";
    case ReadSource::kClassifier:
      return "classifier";
    case ReadSource::kEmbedding:
      return "embedding";
  }
  return "other";
}

Result<uint32_t> ExtentReader::AddGroup(ReadSource source) {
  if (groups_taken_ >= limits_.groups) {
    return ResourceExhaustedError("extent reader: all " + std::to_string(limits_.groups) +
                                  " read groups are taken");
  }
  groups_[++groups_taken_].source = source;
  return groups_taken_;
}

uint32_t ExtentReader::ReadsFor(uint64_t bytes) const {
  return static_cast<uint32_t>(CeilDiv(bytes, limits_.read_max_bytes));
}

Status ExtentReader::PlanExtents(std::span<const Extent> extents, uint64_t gap_max_bytes,
                                 bool merge, ExtentPlan* plan, uint64_t split_bytes) const {
  if (split_bytes % alignment_ != 0) {
    return InvalidArgumentError("read split of " + std::to_string(split_bytes) +
                                " bytes is not a multiple of the alignment " +
                                std::to_string(alignment_));
  }
  plan->ranges.clear();
  plan->requested_bytes = 0;
  for (const Extent& e : extents) {
    if (e.file_index >= files_.size()) {
      return InvalidArgumentError("extent " + std::to_string(e.index) + " names data file " +
                                  std::to_string(e.file_index) + " of " +
                                  std::to_string(files_.size()));
    }
    plan->ranges.push_back(storage::ByteRange{
        (uint64_t{e.file_index} << kFileShift) | (e.offset_bytes & kOffsetMask), e.stored_bytes});
    plan->requested_bytes += e.stored_bytes;
  }
  storage::PlannerOptions po;
  po.alignment_bytes = alignment_;
  po.gap_max_bytes = gap_max_bytes;
  po.read_max_bytes = split_bytes != 0 ? std::min(split_bytes, limits_.read_max_bytes)
                                       : limits_.read_max_bytes;
  po.merge = merge;
  RETURN_IF_ERROR(storage::PlanReads(plan->ranges, po, &plan->reads));
  // Spans back to back in the destination, each at an aligned offset.
  const uint64_t align = buffer_alignment_bytes();
  plan->span_at.clear();
  uint64_t at = 0;
  for (const storage::PlannedSpan& s : plan->reads.spans) {
    at = AlignUp(at, align);
    plan->span_at.push_back(at);
    at += s.length_bytes;
  }
  plan->bytes = at;
  return Status::Ok();
}

Status ExtentReader::QueueOne(uint32_t group, uint32_t file, uint64_t offset, ByteSpan dst) {
  CHECK(!free_tags_.empty());
  const uint32_t tag = free_tags_.back();
  free_tags_.pop_back();
  pending_[tag] = Pending{group, file, offset, dst.size()};
  requests_.push_back(storage::ReadRequest{file_ids_[file], offset, dst, tag});
  ++groups_[group].pending;
  return Status::Ok();
}

Status ExtentReader::QueuePlan(uint32_t group, const ExtentPlan& plan, ByteSpan dst) {
  CHECK_LE(group, groups_taken_);
  CHECK_GE(dst.size(), plan.bytes);
  if (plan.reads.reads.size() > free_tags_.size()) {
    return ResourceExhaustedError("extent reader: " + std::to_string(plan.reads.reads.size()) +
                                  " reads queued with " + std::to_string(free_tags_.size()) +
                                  " free of " + std::to_string(limits_.queue_depth));
  }
  for (const storage::PlannedRead& r : plan.reads.reads) {
    RETURN_IF_ERROR(QueueOne(group, static_cast<uint32_t>(r.offset_bytes >> kFileShift),
                             r.offset_bytes & kOffsetMask,
                             dst.subspan(plan.span_at[r.span_index] + r.offset_in_span_bytes,
                                         r.length_bytes)));
  }
  counters_.bytes_requested += plan.requested_bytes;
  return Status::Ok();
}

Status ExtentReader::QueueRange(uint32_t group, uint32_t file, uint64_t offset, ByteSpan dst) {
  CHECK_LE(group, groups_taken_);
  CHECK_LT(file, files_.size());
  if (ReadsFor(dst.size()) > free_tags_.size()) {
    return ResourceExhaustedError("extent reader: a range of " + std::to_string(dst.size()) +
                                  " bytes needs more reads than the free tags");
  }
  for (uint64_t at = 0; at < dst.size(); at += limits_.read_max_bytes) {
    const uint64_t len = std::min<uint64_t>(limits_.read_max_bytes, dst.size() - at);
    RETURN_IF_ERROR(QueueOne(group, file, offset + at, dst.subspan(at, len)));
  }
  return Status::Ok();
}

Status ExtentReader::Submit() {
  if (requests_.empty()) return Status::Ok();
  Status st = backend_->Submit(requests_);
  if (!st.ok()) {  // nothing was submitted: give the tags back
    for (const storage::ReadRequest& r : requests_) {
      --groups_[pending_[r.tag].group].pending;
      free_tags_.push_back(static_cast<uint32_t>(r.tag));
    }
  }
  requests_.clear();
  return st;
}

Status ExtentReader::ReapSome(bool block) {
  ASSIGN_OR_RETURN(size_t n, backend_->Reap(block ? 1 : 0, completions_));
  for (size_t i = 0; i < n; ++i) {
    const storage::ReadCompletion& c = completions_[i];
    const Pending p = pending_[c.tag];
    free_tags_.push_back(static_cast<uint32_t>(c.tag));
    Group& g = groups_[p.group];
    --g.pending;
    SourceCounters& sc = counters_.by_source[static_cast<size_t>(g.source)];
    ++sc.reads;
    if (c.status.ok()) sc.bytes_read += c.bytes_read;
    if (!g.error.ok()) continue;
    if (!c.status.ok()) {
      g.error = c.status.WithContext(DataFileName(p.file) + " offset " + std::to_string(p.offset));
    } else if (c.bytes_read < p.len && p.offset + c.bytes_read < files_[p.file].size_bytes()) {
      // Short only past the end of the data file (a last extent's padding) is expected.
      g.error = IoError("short read from " + DataFileName(p.file) + " at offset " +
                        std::to_string(p.offset));
    }
  }
  return Status::Ok();
}

Status ExtentReader::Wait(uint32_t group) {
  Group& g = groups_[group];
  if (g.pending > 0) {
    const uint64_t t0 = storage::NowNs();
    uint64_t idle_ns = 0;  // spent on idle work: not waiting
    while (g.pending > 0) {
      // First what has landed, then a piece of idle work; sleep only when there is none.
      Status st;
      bool worked = false;
      if (idle_count_ > 0) {
        st = ReapSome(/*block=*/false);
        if (st.ok() && g.pending > 0) {
          const uint64_t i0 = storage::NowNs();
          worked = RunIdleWork();
          idle_ns += storage::NowNs() - i0;
        }
      }
      if (st.ok() && !worked && g.pending > 0) st = ReapSome();
      if (!st.ok()) {  // the backend is unusable: nothing more will land
        BookWait(g, storage::NowNs() - t0 - idle_ns);
        return st;
      }
    }
    BookWait(g, storage::NowNs() - t0 - idle_ns);
  }
  Status st = std::move(g.error);
  g.error = Status::Ok();
  return st;
}

void ExtentReader::BookWait(const Group& g, uint64_t ns) {
  counters_.wait_ns += ns;
  counters_.by_source[static_cast<size_t>(g.source)].wait_ns += ns;
}

void ExtentReader::Drain() {
  for (const storage::ReadRequest& r : requests_) {  // queued, never submitted: give them back
    --groups_[pending_[r.tag].group].pending;
    free_tags_.push_back(static_cast<uint32_t>(r.tag));
  }
  requests_.clear();
  while (backend_ && backend_->in_flight() > 0) {
    if (!ReapSome().ok()) break;
  }
  for (Group& g : groups_) g.error = Status::Ok();
}

ReadCounters ExtentReader::counters() const {
  ReadCounters c = counters_;
  c.bytes_read = backend_->stats().bytes() - bytes_base_;
  c.reads = backend_->stats().reads() - reads_base_;
  return c;
}

void ExtentReader::ResetCounters() {
  counters_ = ReadCounters();
  bytes_base_ = backend_ ? backend_->stats().bytes() : 0;
  reads_base_ = backend_ ? backend_->stats().reads() : 0;
}

// The synchronous path. A batch is as many extents as the staging buffer holds (at least one,
// for which it grows), planned with neighbours merged; its reads go out as the read table allows
// (completions of other groups are booked on the way); once all have landed, each extent is
// verified in the staging buffer and handed to `sink`.
template <typename Sink>
Status ExtentReader::Batched(std::span<const Extent> extents, Sink&& sink) {
  const uint64_t a = alignment_, slack = buffer_alignment_bytes();
  size_t next = 0;
  Status result;
  while (next < extents.size() && result.ok()) {
    // 1. The batch: extents [first, next).
    const size_t first = next;
    uint64_t need = 0;
    while (next < extents.size() && next - first < limits_.plan_extents) {
      const Extent& e = extents[next];
      const uint64_t cover =
          AlignUp(e.offset_bytes + e.stored_bytes, a) - AlignDown(e.offset_bytes, a) + slack;
      if (next > first && need + cover > limits_.staging_bytes) break;
      need += cover;
      ++next;
    }
    const std::span<const Extent> batch = extents.subspan(first, next - first);
    RETURN_IF_ERROR(PlanExtents(batch, 0, true, &plan_));
    const uint64_t staging = std::max(limits_.staging_bytes, plan_.bytes);
    if (staging_.size_bytes() < plan_.bytes) {
      ASSIGN_OR_RETURN(staging_, storage::AlignedBuffer::Allocate(staging, std::max<uint64_t>(slack, 4096)));
    }
    // 2. Its reads, as tags free up.
    Status queued;
    for (const storage::PlannedRead& r : plan_.reads.reads) {
      while (free_tags_.empty() && queued.ok()) {
        queued = Submit();
        if (queued.ok()) queued = ReapSome();
      }
      if (!queued.ok()) break;
      queued = QueueOne(0, static_cast<uint32_t>(r.offset_bytes >> kFileShift),
                        r.offset_bytes & kOffsetMask,
                        staging_.span().subspan(plan_.span_at[r.span_index] +
                                                    r.offset_in_span_bytes,
                                                r.length_bytes));
    }
    if (queued.ok()) queued = Submit();
    counters_.bytes_requested += plan_.requested_bytes;
    Status landed = Wait(0);
    RETURN_IF_ERROR(queued);
    RETURN_IF_ERROR(landed);
    // 3. Verify and hand over.
    for (size_t i = 0; i < batch.size() && result.ok(); ++i) {
      const Extent& e = batch[i];
      ConstByteSpan stored(staging_.data() + plan_.Offset(i), e.stored_bytes);
      result = Verify(e, stored);
      if (result.ok()) result = sink(first + i, e, stored);
    }
  }
  return result;
}

Status ExtentReader::ReadExtents(std::span<const Extent> extents, std::span<const ByteSpan> outs) {
  if (extents.size() != outs.size()) return InvalidArgumentError("ReadExtents: size mismatch");
  for (size_t i = 0; i < extents.size(); ++i) {
    if (outs[i].size() != extents[i].raw_bytes) {
      return InvalidArgumentError("ReadExtents: buffer of " + std::to_string(outs[i].size()) +
                                  " bytes for extent " + std::to_string(extents[i].index) + " of " +
                                  std::to_string(extents[i].raw_bytes));
    }
  }
  return Batched(extents, [&](size_t i, const Extent& e, ConstByteSpan stored) -> Status {
    if (e.codec == Codec::kZstd) {
      Status s = storage::ZstdDecompress(stored, outs[i]);
      return s.ok() ? s : s.WithContext("extent " + std::to_string(e.index));
    }
    std::memcpy(outs[i].data(), stored.data(), stored.size());
    return Status::Ok();
  });
}

Status ExtentReader::ForEachExtent(std::span<const Extent> extents,
                                   const std::function<Status(size_t, ConstByteSpan)>& consume) {
  return Batched(extents, [&](size_t i, const Extent& e, ConstByteSpan stored) -> Status {
    if (e.codec == Codec::kZstd) {
      decoded_.resize(e.raw_bytes);
      Status s = storage::ZstdDecompress(stored, decoded_);
      if (!s.ok()) return s.WithContext("extent " + std::to_string(e.index));
      return consume(i, decoded_);
    }
    return consume(i, stored);
  });
}

}  // namespace flashlm::layout
