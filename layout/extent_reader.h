// ExtentReader: the one road from a store's data files to DRAM.
//
// It owns the store's open data files (O_DIRECT, with storage::File's logged buffered fallback)
// and the one storage::ReadBackend (io_uring, pread fallback) that reads them, and it is the one
// place where an extent's checksum is verified: Verify() reports a mismatch as Corruption in one
// format that names the extent, what it holds (the describe callback), its file and offset.
// Everything that reads a store goes through it: StoreReader (ReadTensor, VerifyAll, `verify`)
// and the engine's weight streamers.
//
// Two ways to read:
//  - Synchronous and planned: ReadExtents(extents, outs) coalesces neighbouring extents with
//    storage::PlanReads into a staging buffer sized at Open, verifies every extent there and
//    copies (or zstd-decodes) it into its destination. ForEachExtent hands the verified bytes to
//    a callback instead. Used for resident weights, tensors and verification.
//  - Asynchronous, in read groups: a caller that keeps reads in flight (a ring of buffers, a
//    prefetch) takes groups at set-up (AddGroup), plans extents once (PlanExtents: merged,
//    aligned spans laid out back to back in a destination buffer), queues the plan's reads
//    straight into its own aligned buffer (QueuePlan, QueueRange), submits them (Submit) and
//    later waits for a group (Wait), which books completions of other groups as they arrive.
//    Reads carry tags into a table sized by SetLimits; nothing allocates per read, and an OK
//    Status allocates nothing, so the per-token path allocates nothing.
//
// Accounting: ReadCounters() are the bytes the callers asked for (extents' stored bytes), the
// bytes and reads the backend issued (aligned covers, merged), and the time spent waiting.
// Not thread-safe: one owner thread (the backend's rule).
#ifndef FLASHLM_LAYOUT_EXTENT_READER_H_
#define FLASHLM_LAYOUT_EXTENT_READER_H_

#include <algorithm>
#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "layout/store_format.h"
#include "storage/aligned_buffer.h"
#include "storage/bytes.h"
#include "storage/file.h"
#include "storage/read_backend.h"
#include "storage/read_planner.h"
#include "storage/status.h"

namespace flashlm::layout {

// One extent as readers need it: where its bytes are and how to check them.
struct Extent {
  uint64_t index = 0;
  uint32_t file_index = 0;
  uint64_t offset_bytes = 0;  // multiple of the store alignment
  uint64_t stored_bytes = 0;  // bytes to read
  uint64_t raw_bytes = 0;     // bytes after decoding
  Codec codec = Codec::kNone;
  uint64_t checksum = 0;  // XXH3-64 of the stored bytes
};

struct ExtentReaderOptions {
  storage::BackendKind backend = storage::BackendKind::kAuto;
  bool direct = true;  // O_DIRECT data files
};

// Bounds fixed at set-up (SetLimits); nothing grows afterwards.
struct ExtentReaderLimits {
  uint32_t queue_depth = 32;               // reads in flight, all groups together
  uint32_t groups = 0;                     // asynchronous read groups callers may take
  uint64_t staging_bytes = 4ull << 20;     // ReadExtents' staging buffer
  uint64_t read_max_bytes = 1ull << 20;    // longest single read (a multiple of 4 KiB)
  uint32_t plan_extents = 4096;            // extents per ReadExtents batch (planner capacity)
};

// What an asynchronous read group reads (AddGroup), so that bytes and waits can be told apart
// by what they were for. kOther: the synchronous path (start-up loads, verification) and groups
// that name nothing.
enum class ReadSource : uint8_t { kOther = 0, kAttention, kFfn, kClassifier, kEmbedding };
inline constexpr size_t kReadSources = 5;
// "other", "attention", "ffn", "classifier", "embedding".
const char* ReadSourceName(ReadSource source);

struct SourceCounters {
  uint64_t bytes_read = 0;  // bytes of the reads that landed (what the backend returned)
  uint64_t reads = 0;       // reads that landed
  uint64_t wait_ns = 0;     // time spent in Wait for a group of this source
};

struct ReadCounters {
  uint64_t bytes_requested = 0;  // stored bytes of the extents asked for
  uint64_t bytes_read = 0;       // bytes the backend read (aligned covers, merged spans)
  uint64_t reads = 0;            // reads the backend issued
  uint64_t wait_ns = 0;          // time spent waiting for reads to land
  // The reads and waits above by what they were for (indexed by ReadSource). The wait of a group
  // is booked to its source even while completions of other groups land during it: it is the
  // time the caller waiting for that source was held up.
  std::array<SourceCounters, kReadSources> by_source{};
  const SourceCounters& of(ReadSource s) const { return by_source[static_cast<size_t>(s)]; }
};

// Extents planned as reads into one destination buffer: spans (merged neighbours, aligned to the
// files' O_DIRECT alignment) are laid out back to back from its start, each at an aligned offset.
// Reuse one plan per buffer: its vectors keep their capacity (Reserve at set-up).
struct ExtentPlan {
  storage::ReadPlan reads;                // over keys (file << 48 | offset), see PlanExtents
  std::vector<storage::ByteRange> ranges;  // [extent] scratch
  std::vector<uint64_t> span_at;          // [span] offset of the span in the destination
  uint64_t bytes = 0;                     // destination bytes the spans need
  uint64_t requested_bytes = 0;           // stored bytes of the extents
  void Reserve(size_t extents);
  // Where extent i's stored bytes land in the destination.
  uint64_t Offset(size_t i) const {
    const storage::RangeLocation& l = reads.locations[i];
    return span_at[l.span_index] + l.offset_in_span_bytes;
  }
};

class ExtentReader {
 public:
  // What extent `index` holds ("tensor blk.0.attn_q.weight rows 0..63", "FFN layer 3 bundle 17
  // (neuron 42)"), for error messages; called only on the error path.
  using DescribeFn = std::function<std::string(uint64_t index)>;

  // Opens `data_files` (in index order) for reading with default limits (SetLimits to change
  // them). Errors: NotFound naming a missing file, IoError, NotSupported (backend refused).
  static Result<std::unique_ptr<ExtentReader>> Open(const std::vector<std::string>& data_files,
                                                    const ExtentReaderOptions& options,
                                                    DescribeFn describe);
  ~ExtentReader();

  // Re-sizes the read table, the groups, the staging buffer and the backend's queue. Set-up only:
  // every group taken so far is given back (their holders must not use them again).
  // Precondition (CHECKed): nothing in flight. Errors: InvalidArgument (zero queue depth, read
  // size not a multiple of 4 KiB), ResourceExhausted.
  Status SetLimits(const ExtentReaderLimits& limits);
  const ExtentReaderLimits& limits() const { return limits_; }
  // DRAM this reader holds with `limits` (staging buffer, tables), for budgets.
  static uint64_t ResidentBytes(const ExtentReaderLimits& limits);

  uint32_t file_count() const { return static_cast<uint32_t>(files_.size()); }
  uint64_t file_bytes(uint32_t file) const { return files_.at(file).size_bytes(); }
  // The largest O_DIRECT alignment among the data files (1 when every one is buffered). Offsets,
  // lengths and buffer addresses of QueueRange must be multiples of it.
  uint64_t alignment_bytes() const { return alignment_; }
  // Alignment for buffers that reads land in: alignment_bytes(), at least 64.
  uint64_t buffer_alignment_bytes() const { return std::max<uint64_t>(alignment_, 64); }
  bool direct_io() const { return !files_.empty() && files_[0].is_direct(); }
  std::string_view backend_name() const { return backend_->name(); }
  const storage::IoStats& io_stats() const { return backend_->stats(); }

  // Checks `stored` (exactly the extent's stored bytes) against its checksum. Errors: Corruption
  // "checksum mismatch in extent N (what it holds; data-0000F.bin offset O, S bytes): catalog
  // 0x..., data 0x...". Allocates nothing when the checksum matches.
  Status Verify(const Extent& extent, ConstByteSpan stored) const;
  // The same check for a checksum the caller computed (storage::Checksum64Stream over exactly the
  // extent's stored bytes), in the same words.
  Status CheckDigest(const Extent& extent, uint64_t digest) const;
  // Which reads Verify and CheckDigest check. By default every read of an extent is hashed and
  // checked. After VerifyFirstReadOnly (set-up only; extent indices below `extent_count`), an
  // extent that has passed once in this reader's life is not checked again: Verify returns Ok
  // without hashing, and callers that hash ahead skip it (Verified). Damage at rest is still
  // found the first time an extent is read; a later read that goes wrong is not. One bit per
  // extent, allocated here.
  void VerifyFirstReadOnly(uint64_t extent_count);
  // True when first-read-only checking is on and `extent` has passed.
  bool Verified(const Extent& extent) const {
    return extent.index < verified_extents_ &&
           (verified_[extent.index >> 6] >> (extent.index & 63) & 1) != 0;
  }
  // DRAM of that record (0 when every read is checked).
  uint64_t verified_record_bytes() const { return verified_.capacity() * sizeof(uint64_t); }

  // Work a holder of a read group may do while Wait waits for another group: verifying bytes of
  // its own that have already landed. Wait calls it between looks at completions for as long as
  // the awaited group has reads in flight and the work returns true (it did a piece: it should
  // take well under a read's latency); false means nothing to do now, and Wait sleeps until a
  // read lands. The time it takes is not counted as waiting. It may call Verify, CheckDigest and
  // InFlight, nothing that queues, submits or waits. Set-up only (SetLimits clears them);
  // at most kIdleWorkMax.
  using IdleWork = std::function<bool()>;
  static constexpr size_t kIdleWorkMax = 4;
  // Bytes a piece of idle work that verifies should hash at most (~30 us at the ~8 GB/s that
  // freshly landed bytes hash at here).
  static constexpr uint64_t kIdleVerifyBytes = 256 << 10;
  // Returns the work's slot, for RemoveIdleWork (its holder must remove it before it goes away).
  // Errors: ResourceExhausted (kIdleWorkMax taken).
  Result<uint32_t> AddIdleWork(IdleWork work);
  void RemoveIdleWork(uint32_t slot);

  // Synchronous: reads `extents` (any order, any files), verifies each and writes its raw bytes
  // into outs[i] (exactly raw_bytes; zstd extents are decoded). Neighbours are merged into larger
  // reads. Stops at the first failure, after every read in flight of this call has landed.
  // Errors: InvalidArgument (sizes), IoError, Corruption (checksum, bad zstd frame).
  Status ReadExtents(std::span<const Extent> extents, std::span<const ByteSpan> outs);
  // Same reads, but hands the verified (and decoded) bytes of extents[i] to consume(i, bytes), in
  // an order of its choosing; the view lives during the call. Stops at the first error, its own
  // or consume's.
  Status ForEachExtent(std::span<const Extent> extents,
                       const std::function<Status(size_t, ConstByteSpan)>& consume);

  // Asynchronous groups. AddGroup takes one (set-up only), its reads and waits counted under
  // `source`. Errors: ResourceExhausted.
  Result<uint32_t> AddGroup(ReadSource source = ReadSource::kOther);
  // Plans reads of `extents` (uncompressed or not: the stored bytes are read) into one
  // destination: neighbours whose aligned covers are at most gap_max_bytes apart are merged
  // (merge = false: one span per extent), spans are split into reads of at most read_max_bytes
  // (`split_bytes`, when not 0 and smaller: at most that, a multiple of alignment_bytes()).
  // Allocates only while `plan`'s capacities grow. Errors: InvalidArgument (bad file index, a
  // split not a multiple of the alignment).
  Status PlanExtents(std::span<const Extent> extents, uint64_t gap_max_bytes, bool merge,
                     ExtentPlan* plan, uint64_t split_bytes = 0) const;
  // Queues the reads of `plan` into `dst` (at least plan.bytes, aligned to
  // buffer_alignment_bytes()) in `group`, counting its extents as requested. Not submitted yet.
  // Errors: ResourceExhausted (more reads than free tags: the limits are too small), and then
  // nothing is queued.
  Status QueuePlan(uint32_t group, const ExtentPlan& plan, ByteSpan dst);
  // Queues a read of [offset, offset + dst.size()) of `file` into dst (split at read_max_bytes).
  // offset, dst's size and address must be multiples of alignment_bytes(). Same errors.
  Status QueueRange(uint32_t group, uint32_t file, uint64_t offset, ByteSpan dst);
  // Submits everything queued, all or none (on error the queued reads are dropped).
  Status Submit();
  // Waits until `group` has nothing in flight and returns the first failure among its reads
  // since the group was last waited for (IoError, a short read inside the file), then clears it.
  // The time spent counts as wait_ns.
  Status Wait(uint32_t group);
  bool InFlight(uint32_t group) const { return groups_[group].pending > 0; }
  // Books the completions that have landed, without waiting (Wait does this itself; for a holder
  // that polls). Errors: the backend's (IoError).
  Status Poll() { return ReapSome(/*block=*/false); }
  // Drops what is queued and waits for every read in flight (errors are dropped); used before
  // buffers are freed.
  void Drain();

  ReadCounters counters() const;
  void ResetCounters();

 private:
  struct Pending {  // one read in flight, by tag
    uint32_t group = 0;
    uint32_t file = 0;
    uint64_t offset = 0;
    uint64_t len = 0;
  };
  struct Group {
    uint32_t pending = 0;
    Status error;
    ReadSource source = ReadSource::kOther;
  };
  ExtentReader() = default;
  // Books completions: at least one (sleeping until one lands) when `block`, else those ready.
  Status ReapSome(bool block = true);
  void BookWait(const Group& g, uint64_t ns);
  // Runs the idle work until a piece is done; false when none had anything to do.
  bool RunIdleWork();
  // The synchronous path: reads and verifies `extents` in staging-sized batches, then calls
  // sink(i, extent, stored bytes) for each.
  template <typename Sink>
  Status Batched(std::span<const Extent> extents, Sink&& sink);
  Status QueueOne(uint32_t group, uint32_t file, uint64_t offset, ByteSpan dst);
  uint32_t ReadsFor(uint64_t bytes) const;
  std::string DescribeExtent(const Extent& e) const;
  // Corruption "checksum mismatch in <extent>: catalog 0x..., data 0x<digest>".
  Status MismatchError(const Extent& e, uint64_t digest) const;

  std::vector<storage::File> files_;
  std::vector<uint32_t> file_ids_;
  uint64_t alignment_ = 1;
  ExtentReaderOptions options_;
  ExtentReaderLimits limits_;
  DescribeFn describe_;
  std::unique_ptr<storage::ReadBackend> backend_;
  std::vector<Pending> pending_;     // [queue_depth] by tag
  std::vector<uint32_t> free_tags_;  // stack
  std::vector<Group> groups_;        // [0] is the synchronous path's own
  uint32_t groups_taken_ = 0;
  std::vector<IdleWork> idle_;  // AddIdleWork; capacity kIdleWorkMax; empty slots removed
  uint32_t idle_count_ = 0;     // slots holding a work
  // VerifyFirstReadOnly: a bit per extent index below verified_extents_, set when it passes
  // (written by the const checks: a record of what was checked, not of what was read).
  mutable std::vector<uint64_t> verified_;
  uint64_t verified_extents_ = 0;
  std::vector<storage::ReadRequest> requests_;        // queued, not yet submitted
  std::vector<storage::ReadCompletion> completions_;  // [queue_depth]
  // Synchronous path.
  storage::AlignedBuffer staging_;
  ExtentPlan plan_;
  std::vector<std::byte> decoded_;  // one zstd extent (ForEachExtent only)
  ReadCounters counters_;  // bytes_read and reads come from the backend
  uint64_t bytes_base_ = 0, reads_base_ = 0;
};

}  // namespace flashlm::layout

#endif  // FLASHLM_LAYOUT_EXTENT_READER_H_
