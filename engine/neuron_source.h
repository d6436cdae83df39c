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
// Two kinds of request:
//  - Begin(layer): every position (the dense FFN). The streamed chunks of all layers form a fixed
//    cyclic schedule (layer 0's chunks, layer 1's, ..., then the next pass); with pipelining the
//    ring keeps the next chunks of that schedule in flight, across layers and passes, while one is
//    computed.
//  - Begin(layer, positions): any set of positions, contiguous or scattered (what a sparse FFN
//    asks for). Its chunks are read ahead within the request; a ring holding chunks of the dense
//    schedule is drained first.
// Batches of a request: the pinned positions (one batch), then one batch per chunk. A batch's
// views stay valid until the next Next() or Begin(). Nothing allocates after Open.
// Not thread-safe: the forward pass's owner thread.
#ifndef FLASHLM_ENGINE_NEURON_SOURCE_H_
#define FLASHLM_ENGINE_NEURON_SOURCE_H_

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "cache/neuron_cache.h"
#include "layout/bundle_layout.h"
#include "layout/extent_reader.h"
#include "layout/store_reader.h"
#include "storage/aligned_buffer.h"
#include "storage/status.h"

namespace flashlm::engine {

inline constexpr uint32_t kChunkBuffersMax = 64;

struct NeuronSourceOptions {
  uint32_t chunk_bundles = 256;  // bundles per streamed chunk
  uint32_t chunk_buffers = 4;    // ring depth: 1 = naive (each chunk read when needed)
  bool pipeline = true;          // keep the next chunks in flight (needs chunk_buffers >= 2)
  bool coalesce = true;          // merge neighbouring bundles into one read (false: a read each)
};

struct NeuronStats {
  uint64_t bundles_resident = 0;  // served from DRAM
  uint64_t bundles_streamed = 0;  // read from flash
};

class NeuronSource {
 public:
  struct Batch {
    std::span<const uint32_t> positions;       // increasing
    std::span<const std::byte* const> bundles;  // [k] bytes of positions[k]
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
  // Reads per chunk, at most (for the ExtentReader's limits).
  static uint32_t ChunkReadsMax(const layout::BundleGeometry& geometry, uint32_t chunk_bundles,
                                uint64_t read_max_bytes, bool coalesce);
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

  const layout::BundleGeometry& geometry() const { return geometry_; }
  uint32_t layers() const { return static_cast<uint32_t>(pinned_.size()); }
  uint32_t neurons() const { return neurons_; }
  uint32_t pinned(uint32_t layer) const { return pinned_[layer]; }
  // Position -> neuron of `layer`; empty when stored in neuron order.
  std::span<const uint32_t> permutation(uint32_t layer) const {
    return reader_.Permutation(layer);
  }
  bool pipelined() const { return pipeline_; }
  bool coalesced() const { return options_.coalesce; }

  // Starts serving every position of `layer`. Errors: InvalidArgument (layer out of range).
  Status Begin(uint32_t layer);
  // Starts serving `positions` (strictly increasing, < neurons()) of `layer`; the span must stay
  // valid until the last Next(). Errors: InvalidArgument.
  Status Begin(uint32_t layer, std::span<const uint32_t> positions);
  // The next batch of the request, or false when it is done. Errors: IoError, Corruption (the
  // message names the bundle); the ring is then reset, and a later Begin starts afresh.
  Result<bool> Next(Batch* batch);

  const NeuronStats& stats() const { return stats_; }
  void ResetStats() { stats_ = NeuronStats(); }

 private:
  // One chunk buffer of the ring and what it holds.
  struct Slot {
    ByteSpan buffer;
    uint32_t group = 0;  // its ExtentReader read group
    int64_t job = -1;    // dense schedule job, or kAdHoc; -1 = free
    uint32_t layer = 0, count = 0;
    layout::ExtentPlan plan;
    std::vector<uint32_t> positions;         // [chunk_bundles]
    std::vector<layout::Extent> extents;     // [chunk_bundles]
    std::vector<const std::byte*> pointers;  // [chunk_bundles]
  };
  struct Job {  // a chunk of the dense schedule: positions [first, first + count) of `layer`
    uint32_t layer = 0, first = 0, count = 0;
  };
  static constexpr int64_t kAdHoc = -2;

  NeuronSource(layout::StoreReader& reader) : reader_(reader) {}
  Status LoadPinned();
  Status Submit(Slot& slot);  // reads slot.positions of slot.layer into slot.buffer
  Status Land(Slot& slot);    // waits for the slot's reads and verifies its bundles
  Status FillRing();          // submits upcoming chunks into free slots
  Status FormAdHocChunk(Slot& slot);  // the next chunk of the current ad-hoc request
  void ResetRing();           // waits for everything in flight; every slot free
  Status Fail(Status st);

  layout::StoreReader& reader_;
  layout::ExtentReader* extents_ = nullptr;
  layout::BundleGeometry geometry_;
  uint32_t neurons_ = 0;
  NeuronSourceOptions options_;
  bool pipeline_ = false, compressed_ = false;
  uint64_t gap_max_bytes_ = 0;
  uint64_t slot_bytes_ = 0;
  uint64_t decoded_spacing_ = 0;  // compressed bundles: decoded bundle k at k * this in a slot
  std::vector<uint32_t> pinned_;  // [layer]
  std::unique_ptr<cache::NeuronCache> cache_;
  std::vector<std::vector<const std::byte*>> resident_;  // [layer][position < pinned] slot bytes
  std::vector<uint32_t> iota_;                           // [neurons] 0, 1, 2, ...
  std::vector<uint32_t> gathered_positions_;             // [neurons] ad-hoc pinned batch
  std::vector<const std::byte*> gathered_bundles_;       // [neurons]
  std::vector<ByteSpan> decode_outs_;                    // [chunk_bundles]
  storage::AlignedBuffer ring_memory_;
  std::vector<Slot> slots_;
  std::vector<Job> jobs_;
  std::vector<uint32_t> job_first_, job_count_;  // [layer]
  uint32_t ring_head_ = 0, ring_count_ = 0, next_job_ = 0;
  // The current request.
  uint32_t layer_ = 0;
  bool dense_ = true;
  bool pinned_served_ = false;
  std::span<const uint32_t> request_;  // ad hoc: the positions
  size_t request_streamed_ = 0;        // ad hoc: index of the first position not pinned
  size_t request_next_ = 0;            // ad hoc: first position not yet in a chunk
  uint32_t job_next_ = 0, job_end_ = 0;  // dense: the layer's jobs still to serve
  bool holding_ = false;               // the head slot was handed out by the last Next
  NeuronStats stats_;
};

}  // namespace flashlm::engine

#endif  // FLASHLM_ENGINE_NEURON_SOURCE_H_
