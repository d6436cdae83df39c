// NeuronSource: a store's FFN neuron bundles, served to the forward pass as batches of (position,
// bundle bytes) in increasing position order: from DRAM where the residency plan pinned them,
// from flash for the rest.
//
// Positions are the store's bundle order (layout/bundle_layout.h: hot-first stores put each
// layer's most frequently firing neurons first); permutation(layer) maps them to neurons.
//
// Residency goes through cache/: the pinned bundles (per layer the first pinned[layer] positions)
// live in slots of a cache::NeuronCache, reserved, filled and pinned for the source's lifetime at
// Open. Everything else is read through the store's ExtentReader (the one road to its data files)
// into a ring of chunk buffers: a chunk is up to chunk_bundles bundles of one layer, planned as
// reads with neighbouring bundles merged (coalesce) and split at 1 MiB, read straight into the
// buffer with O_DIRECT and verified there against its checksums. Compressed bundles cannot be
// read in place: they are read, verified and decoded synchronously (ExtentReader::ReadExtents).
//
// Besides the pinned bundles the cache may hold `cache_slots` more (the plan's LRU share): with
// ad-hoc requests (a sparse FFN) every streamed bundle is looked up there first, and a miss, once
// read and verified, is copied into a slot (admitted: LRU over cold bundles, within the cache's
// sliding window, see cache/neuron_cache.h). The dense schedule reads every bundle every pass and
// bypasses it. Misses of a request are read as one sorted set: neighbours merged across gaps of
// at most merge_gap_bytes (reading the bytes between, fewer and larger reads), the chunks of the
// request submitted together up to the ring's depth.
//
// Two kinds of request:
//  - Begin(layer): every position (the dense FFN). The streamed chunks of all layers form a fixed
//    cyclic schedule (layer 0's chunks, layer 1's, ..., then the next pass); with pipelining the
//    ring keeps the next chunks of that schedule in flight, across layers and passes, while one is
//    computed.
//  - Begin(layer, positions): any set of positions, contiguous or scattered (what a sparse FFN
//    asks for). Its chunks are read ahead within the request; a ring holding chunks of the dense
//    schedule is drained first.
// Lookahead: Prefetch(layer, positions) reads a guess at a later ad-hoc request's bundles (a
// predictor's, made from an earlier activation than the layer's own FFN input) into the ring
// ahead of time; the next Begin(layer, positions) lands those chunks, serves the requested
// bundles they hold from there (they stay parked in the ring for the request) and reads only the
// rest. Which bundles a request serves, and so what is computed, does not change: only when the
// reads go out. A wrong guess costs its bytes (stats: bundles_prefetched against prefetch_used).
// Batches of a dense request: the pinned positions (one batch), then one batch per chunk. Of an
// ad-hoc request: its pinned positions, then the rest in increasing position order, cached and
// streamed bundles mixed (a batch ends after a chunk whose bundles could not all be admitted). A
// batch's views stay valid until the next Next() or Begin(). Nothing allocates after Open.
// Not thread-safe: the forward pass's owner thread.
#ifndef FLASHLM_ENGINE_NEURON_SOURCE_H_
#define FLASHLM_ENGINE_NEURON_SOURCE_H_

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "cache/neuron_cache.h"
#include "engine/bundle_ffn.h"
#include "layout/bundle_layout.h"
#include "layout/extent_reader.h"
#include "layout/store_reader.h"
#include "storage/aligned_buffer.h"
#include "storage/status.h"

namespace flashlm::engine {

inline constexpr uint32_t kChunkBuffersMax = 64;
inline constexpr uint32_t kWindowPassesMax = 1u << 20;  // --window, at most

struct NeuronSourceOptions {
  uint32_t chunk_bundles = 256;  // bundles per streamed chunk
  uint32_t chunk_buffers = 4;    // ring depth: 1 = naive (each chunk read when needed)
  bool pipeline = true;          // keep the next chunks in flight (needs chunk_buffers >= 2)
  bool coalesce = true;          // merge neighbouring bundles into one read (false: a read each)
  // Not 0: every bundle is read on its own in reads of at most this many bytes (a multiple of
  // the files' alignment; coalesce is then off). SplitReadBytes gives the split that reads a
  // bundle as one read per matrix it holds a row of: the read pattern of separate gate, up and
  // down matrices, for the ablation of bundling (--split-bundle-reads).
  uint64_t split_read_bytes = 0;
  // Ad-hoc requests: merge neighbouring misses whose aligned covers are at most this far apart
  // (kGapOneStride: one bundle stride, i.e. across one bundle not needed).
  uint64_t merge_gap_bytes = kGapOneStride;
  static constexpr uint64_t kGapOneStride = UINT64_MAX;
  uint32_t cache_slots = 0;    // LRU slots for streamed bundles of ad-hoc requests (0: none)
  uint32_t window_passes = 0;  // the cache's sliding window, in passes (0: plain LRU)
  // For a dense FFN (only Begin(layer) requests; ad-hoc ones and cache_slots are then refused):
  // the pinned bundles are kept with their parts regrouped, per layer [gate rows |] up rows as
  // matrices (in strips where the kernels read them so, KeepInStrips) and the down columns back
  // to back, and served as one RegroupedBundles batch. The same products and sums as the bundles
  // (BundleFfnKernel::AccumulateRegrouped), read as a few streams instead of 16 rows at a time.
  bool regroup_pinned = false;
  // The threads the FFN kernel runs on: regrouped down columns are laid out a part a thread
  // (DownLayout::For).
  uint32_t regroup_threads = 1;
};

// One layer's bundles, counted per request (a sparse FFN asks for the firing neurons; a dense one
// for every neuron).
struct NeuronLayerStats {
  uint64_t requested = 0;  // bundles asked for
  uint64_t pinned = 0;     // served from the pinned set
  uint64_t cached = 0;     // served from the LRU cache (hits)
  uint64_t streamed = 0;   // read from flash (misses)
  double hit_rate() const {
    return requested ? static_cast<double>(pinned + cached) / requested : 1.0;
  }
};

struct NeuronStats {
  uint64_t bundles_resident = 0;    // served from DRAM (pinned or cached)
  uint64_t bundles_streamed = 0;    // read from flash
  uint64_t bundles_cached = 0;      // of the resident: LRU cache hits
  uint64_t bundles_admitted = 0;    // streamed bundles copied into the LRU cache
  uint64_t admissions_refused = 0;  // misses not admitted (window full, or no cache)
  uint64_t bundles_prefetched = 0;  // read by Prefetch (part of bytes_read and reads)
  uint64_t prefetch_used = 0;       // of those, served to the request they were read for
  // The FFN's own reads (bundles), a part of the reader's counters.
  uint64_t bytes_requested = 0;  // stored bytes of the bundles read
  uint64_t bytes_read = 0;       // bytes the reads covered (merged spans, gaps included)
  uint64_t reads = 0;
};

class NeuronSource {
 public:
  struct Batch {
    std::span<const uint32_t> positions;        // increasing
    std::span<const std::byte* const> bundles;  // [k] bytes of positions[k]
    // With regroup_pinned, a dense request's first batch: positions [0, regrouped->count()), their
    // parts regrouped (bundles is then empty).
    const RegroupedBundles* regrouped = nullptr;
  };

  // Whether neighbouring bundles are merged into one read: asked for (`coalesce`), and the
  // store's padding between bundles is at most each bundle's own aligned cover (files read at
  // `alignment_bytes`, a store aligned to `store_alignment_bytes`).
  static bool Coalesces(const layout::BundleGeometry& geometry, uint64_t alignment_bytes,
                        uint64_t store_alignment_bytes, bool coalesce);
  // DRAM one chunk buffer takes: the bundles' aligned covers on flash as they are read (merged
  // or one by one, see Coalesces), or decoded bundles.
  static uint64_t ChunkBufferBytes(const layout::BundleGeometry& geometry, uint32_t chunk_bundles,
                                   uint64_t alignment_bytes, uint64_t store_alignment_bytes,
                                   bool coalesce);
  // Reads per chunk, at most (for the ExtentReader's limits); split_read_bytes as in the options.
  static uint32_t ChunkReadsMax(const layout::BundleGeometry& geometry, uint32_t chunk_bundles,
                                uint64_t read_max_bytes, bool coalesce,
                                uint64_t split_read_bytes = 0);
  // The split that reads a bundle as one read per matrix row it holds (2 for [up | down], 3 for
  // [gate | up | down]), each rounded up to `alignment_bytes`.
  static uint64_t SplitReadBytes(const layout::BundleGeometry& geometry, uint64_t alignment_bytes);
  // DRAM one pinned bundle takes: its cache slot and the bookkeeping that comes with it (an
  // upper bound; the cache's whole pool also rounds up to one huge page, counted in FixedBytes).
  static uint64_t PinnedBundleBytes(const layout::BundleGeometry& geometry);
  // DRAM a source holds besides its pinned bundles and its chunk buffers: tables for `layers` x
  // `neurons`, the bookkeeping of up to `chunk_buffers` ring slots, the cache pool's rounding.
  static uint64_t FixedBytes(const layout::BundleGeometry& geometry, uint32_t layers,
                             uint32_t neurons, uint32_t chunk_bundles, uint32_t chunk_buffers);

  // Loads the pinned bundles (pinned[l] first positions of layer l) and takes read groups from
  // the reader's ExtentReader (whose limits must allow options.chunk_buffers groups and their
  // reads). Errors: the reader's (IoError, Corruption naming the bundle), InvalidArgument
  // (options, sizes), ResourceExhausted.
  static Result<std::unique_ptr<NeuronSource>> Open(layout::StoreReader& reader,
                                                    std::span<const uint32_t> pinned,
                                                    const NeuronSourceOptions& options);
  ~NeuronSource();

  // The idle work the source gives its ExtentReader (with pipelining): verifies up to
  // kIdleVerifyBytes of bundles of a ring chunk whose reads have landed (as far as the reader
  // has booked them) and that Next has not reached yet; a mismatch is kept and returned when
  // Next reaches that chunk. False when there is nothing to verify. Public for tests.
  bool VerifyAhead();

  const layout::BundleGeometry& geometry() const { return geometry_; }
  uint32_t layers() const { return static_cast<uint32_t>(pinned_.size()); }
  uint32_t neurons() const { return neurons_; }
  uint32_t pinned(uint32_t layer) const { return pinned_[layer]; }
  // Position -> neuron of `layer`; empty when stored in neuron order.
  std::span<const uint32_t> permutation(uint32_t layer) const { return reader_.Permutation(layer); }
  bool pipelined() const { return pipeline_; }
  bool coalesced() const { return options_.coalesce; }
  uint64_t split_read_bytes() const { return options_.split_read_bytes; }

  // Starts serving every position of `layer`. Errors: InvalidArgument (layer out of range).
  Status Begin(uint32_t layer);
  // Starts serving `positions` (strictly increasing, < neurons()) of `layer`; the span must stay
  // valid until the last Next(). Errors: InvalidArgument.
  Status Begin(uint32_t layer, std::span<const uint32_t> positions);
  // Speculative reads for the next request, Begin(layer, ...) (the lookahead, see above). Ends
  // the current request (its views become invalid; Next returns false until the next Begin) and
  // drops whatever the ring holds; then reads the bundles of `positions` (strictly increasing,
  // < neurons()) that are neither pinned nor cached, in chunks, as many as the ring takes (the
  // rest are not read). A no-op for compressed stores (their reads are synchronous). Errors:
  // InvalidArgument; IoError (submission; the ring is then reset).
  Status Prefetch(uint32_t layer, std::span<const uint32_t> positions);
  // The next batch of the request, or false when it is done. Errors: IoError, Corruption (the
  // message names the bundle); the ring is then reset, and a later Begin starts afresh.
  Result<bool> Next(Batch* batch);

  const NeuronStats& stats() const { return stats_; }
  // [layer], since Open or ResetStats; the view lives as long as the source.
  std::span<const NeuronLayerStats> layer_stats() const { return layer_stats_; }
  void ResetStats();
  uint32_t cache_slots() const { return cache_slots_; }
  uint32_t window_passes() const { return options_.window_passes; }
  uint64_t merge_gap_bytes() const { return gap_max_bytes_; }

 private:
  // One chunk buffer of the ring and what it holds.
  struct Slot {
    ByteSpan buffer;
    uint32_t group = 0;  // its ExtentReader read group
    // Bundles [0, verified) checked ahead of Land (VerifyAhead), and the first mismatch found.
    uint32_t verified = 0;
    Status verify_error;
    int64_t job = -1;    // dense schedule job, or kAdHoc; -1 = free
    uint32_t layer = 0, count = 0;
    layout::ExtentPlan plan;
    std::vector<uint32_t> positions;         // [chunk_bundles]
    std::vector<layout::Extent> extents;     // [chunk_bundles]
    std::vector<const std::byte*> pointers;  // [chunk_bundles]
    size_t miss_first = 0;                   // ad hoc: its first bundle's index in misses_
  };
  struct Job {  // a chunk of the dense schedule: positions [first, first + count) of `layer`
    uint32_t layer = 0, first = 0, count = 0;
  };
  static constexpr int64_t kAdHoc = -2;
  static constexpr int64_t kPrefetch = -3;  // a Prefetch chunk (in flight, then parked)

  NeuronSource(layout::StoreReader& reader) : reader_(reader) {}
  Status LoadPinned();
  Status LoadRegrouped();                // LoadPinned with regroup_pinned
  Status Submit(Slot& slot);             // reads slot.positions of slot.layer into slot.buffer
  Status Land(Slot& slot);               // waits for the slot's reads and verifies its bundles

  Status FillRing();                     // submits upcoming chunks into free slots
  Status FormAdHocChunk(Slot& slot);     // the next chunk of the current ad-hoc request
  Result<bool> NextAdHoc(Batch* batch);  // the streamed part of an ad-hoc request
  // Lands the ring's head chunk of an ad-hoc request and gives its bundles their views, admitted
  // into the cache where it takes them; returns whether the chunk's buffer is still needed.
  Result<bool> LandAdHoc();
  void ReleaseHeld();  // the cache handles of the current request
  // A streamed bundle of the current ad-hoc request at `position`, `bytes` in a chunk buffer:
  // copied into an LRU slot when the cache admits it (returns the slot's bytes), else `bytes`.
  const std::byte* Admit(uint32_t position, const std::byte* bytes);
  // Parked chunks sit at the end of slots_ (the j-th in the order read); the ring uses the rest.
  Slot& Parked(uint32_t j) { return slots_[slots_.size() - parked_ + j]; }
  uint32_t RingSize() const { return static_cast<uint32_t>(slots_.size()) - parked_; }
  void Unpark();       // the parked chunks' buffers are free again
  void AdvanceHead();  // the head slot is free again
  void ResetRing();    // waits for everything in flight; every slot free (parked ones too)
  Status Fail(Status st);

  layout::StoreReader& reader_;
  layout::ExtentReader* extents_ = nullptr;
  layout::BundleGeometry geometry_;
  uint32_t neurons_ = 0;
  NeuronSourceOptions options_;
  bool pipeline_ = false, compressed_ = false;
  int64_t idle_slot_ = -1;  // the ExtentReader's idle-work slot, when taken
  uint64_t gap_max_bytes_ = 0;
  uint64_t slot_bytes_ = 0;
  uint64_t decoded_spacing_ = 0;  // compressed bundles: decoded bundle k at k * this in a slot
  std::vector<uint32_t> pinned_;  // [layer]
  std::unique_ptr<cache::NeuronCache> cache_;
  // [layer][position < pinned] slot bytes (with regroup_pinned: the position's down column).
  std::vector<std::vector<const std::byte*>> resident_;
  storage::AlignedBuffer regrouped_memory_;  // regroup_pinned: every layer's regrouped parts
  std::vector<RegroupedBundles> regrouped_;  // [layer]
  std::vector<uint32_t> iota_;                           // [neurons] 0, 1, 2, ...
  std::vector<uint32_t> gathered_positions_;             // [neurons] ad-hoc pinned batch
  std::vector<const std::byte*> gathered_bundles_;       // [neurons]
  std::vector<ByteSpan> decode_outs_;                    // [chunk_bundles]
  storage::AlignedBuffer ring_memory_;
  std::vector<Slot> slots_;
  std::vector<Job> jobs_;
  std::vector<uint32_t> job_first_, job_count_;  // [layer]
  uint32_t ring_head_ = 0, ring_count_ = 0, next_job_ = 0;
  // Chunks read by Prefetch: in the ring (from its head) until the next Begin, which lands the
  // ones of its layer and parks them: they leave the ring for the last parked_ entries of slots_
  // and keep their buffers until the request ends (the ring meanwhile uses the others).
  bool prefetch_pending_ = false;
  uint32_t prefetch_layer_ = 0;
  uint32_t parked_ = 0;
  // The current request.
  uint32_t layer_ = 0;
  bool dense_ = true;
  bool pinned_served_ = false;
  std::span<const uint32_t> request_;  // ad hoc: the positions
  size_t request_streamed_ = 0;        // ad hoc: index of the first position not pinned
  size_t request_next_ = 0;            // ad hoc: first miss (index into misses_) not in a chunk
  size_t cursor_ = 0;                  // ad hoc: first request index not yet served
  std::vector<const std::byte*> ptr_;  // [neurons] ad hoc: request index -> bundle, or nullptr
  std::vector<uint32_t> misses_;       // [neurons] ad hoc: request indices of the misses
  size_t miss_count_ = 0;
  std::vector<cache::NeuronCache::Handle*> held_;  // [neurons] cache pins of the request
  size_t held_count_ = 0;
  uint32_t cache_slots_ = 0;                   // LRU slots beyond the pinned ones
  std::vector<NeuronLayerStats> layer_stats_;  // [layer]
  uint32_t job_next_ = 0, job_end_ = 0;        // dense: the layer's jobs still to serve
  bool holding_ = false;                       // the head slot was handed out by the last Next
  NeuronStats stats_;
};

}  // namespace flashlm::engine

#endif  // FLASHLM_ENGINE_NEURON_SOURCE_H_
