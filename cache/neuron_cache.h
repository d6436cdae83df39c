// NeuronCache: FFN neuron bundles resident in DRAM, within a byte budget fixed at start-up.
//
// A bundle is what one FFN neuron needs (gate row i, up row i, down column i; see
// layout/bundle_layout.h), addressed by (layer, neuron) — or, as the engine's NeuronSource does,
// by (layer, position in the store), the order bundles are stored in. The cache carves its budget
// into equal, aligned slots held in one storage::BufferPool, so a miss is read from flash with
// O_DIRECT straight into its slot (and, when the pool is registered with the io_uring backend,
// with READ_FIXED). Residency is an LruCache over the slots: a pinned hot set (the neurons that
// fire most, from activation statistics) is never evicted; the rest is LRU over cold bundles.
// The sliding window of "LLM in a flash" (SetWindow(K)): a bundle used in one of the last K passes
// (decode tokens) is never evicted to admit another; TryReserve then refuses, and the caller
// serves that miss from its streaming buffer without caching it. Because LRU order is the order
// of last use, the window needs no lists: the eviction candidate (the LRU tail) is the least
// recently used bundle, so when it is inside the window, every other unpinned bundle is too.
//
// Protocol for one layer: Lookup each needed neuron; for a miss call Reserve, read the bundle
// into the returned span, then MarkFilled. Release every handle once the layer's FFN is done.
// A reserved-but-unfilled slot is pinned, so nothing can evict it while the read is in flight.
// Thread-compatible: one owner thread (the engine's).
#ifndef FLASHLM_CACHE_NEURON_CACHE_H_
#define FLASHLM_CACHE_NEURON_CACHE_H_

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "cache/lru_cache.h"
#include "storage/buffer_pool.h"
#include "storage/bytes.h"
#include "storage/status.h"

namespace flashlm::cache {

class NeuronCache {
 public:
  using Handle = LruCache::Handle;

  // A cache of floor(capacity_bytes / AlignUp(bundle_bytes, alignment_bytes)) slots.
  // Errors: InvalidArgument when not even one slot fits, ResourceExhausted when the memory
  // cannot be allocated.
  static Result<std::unique_ptr<NeuronCache>> Create(uint64_t capacity_bytes, uint64_t bundle_bytes,
                                                     uint64_t alignment_bytes = 4096);
  // DRAM a cache of `slots` slots holds (slot memory and bookkeeping), for budgets.
  static uint64_t ResidentBytes(uint32_t slots, uint64_t bundle_bytes,
                                uint64_t alignment_bytes = 4096);
  // What one more slot adds to that at most: the slot and its share of the bookkeeping (a cache's
  // pool as a whole also rounds up to one huge page, kHugePageSlackBytes at most).
  static uint64_t SlotBytesMax(uint64_t bundle_bytes, uint64_t alignment_bytes = 4096);
  static constexpr uint64_t kHugePageSlackBytes = uint64_t{2} << 20;

  static uint64_t Key(uint32_t layer, uint32_t neuron) {
    return static_cast<uint64_t>(layer) << 32 | neuron;
  }

  // A pinned handle on a filled bundle, or nullptr on a miss (counted in stats()).
  Handle* Lookup(uint32_t layer, uint32_t neuron);
  // Whether the bundle has a slot (filled, or reserved for a read in flight). Not a lookup: not
  // counted, recency untouched.
  bool Contains(uint32_t layer, uint32_t neuron) const { return lru_.Contains(Key(layer, neuron)); }

  // Takes a slot for a missing bundle, evicting the least recently used unpinned bundle when
  // full; returns the pinned handle. Its Bytes() span is the read destination.
  // Errors: ResourceExhausted when every slot is pinned; InvalidArgument when already present.
  Result<Handle*> Reserve(uint32_t layer, uint32_t neuron);

  // Reserve for admitting a streamed bundle: nullptr (nothing evicted) when the cache is full
  // and its least recently used unpinned bundle is inside the window, or every slot is pinned.
  // Precondition: (layer, neuron) is not cached. Counts a refusal in refusals().
  Handle* TryReserve(uint32_t layer, uint32_t neuron);

  // The window, in passes (0: plain LRU). Set-up only.
  void SetWindow(uint32_t passes) { window_ = passes; }
  uint32_t window() const { return window_; }
  // Starts the next pass (token): bundles used from now on are stamped with it.
  void NextPass() { ++pass_; }
  uint64_t refusals() const { return refusals_; }

  // Declares the reserved slot's bytes valid. Until then Lookup of that neuron misses.
  void MarkFilled(Handle* h);

  // Drops a reserved slot whose read failed, so a later Lookup misses instead of seeing garbage.
  // Precondition: `h` is the only pin.
  void Abandon(Handle* h);

  void Release(Handle* h) { lru_.Release(h); }

  // The slot's bytes: bundle_bytes() long, aligned. Valid while `h` is held.
  ByteSpan Bytes(const Handle* h) const;

  // Bundles pinned for the cache's lifetime (the hot set); they count against the capacity.
  // Reserve + fill + MarkFilled, then PinForever(h) instead of Release.
  void PinForever(Handle* h) { hot_.push_back(h); }

  uint64_t bundle_bytes() const { return bundle_bytes_; }
  uint64_t slot_bytes() const { return pool_.buffer_bytes(); }
  uint32_t slot_count() const { return pool_.buffer_count(); }
  uint32_t hot_count() const { return static_cast<uint32_t>(hot_.size()); }
  const CacheStats& stats() const { return lru_.stats(); }
  void ResetStats() {
    lru_.ResetStats();
    refusals_ = 0;
  }
  // For registering the slots with a ReadBackend (storage::ReadBackendOptions::registered_buffers).
  const storage::BufferPool& pool() const { return pool_; }

  ~NeuronCache();

 private:
  NeuronCache(storage::BufferPool pool, uint64_t bundle_bytes);

  storage::BufferPool pool_;
  const uint64_t bundle_bytes_;
  std::vector<uint8_t> filled_;      // [slot_count] 1 once MarkFilled
  std::vector<uint32_t> used_pass_;  // [slot_count] the pass of the slot's last use
  uint32_t window_ = 0;
  uint32_t pass_ = 0;
  uint64_t refusals_ = 0;
  LruCache lru_;              // value = slot index in pool_
  std::vector<Handle*> hot_;  // pinned for the cache's lifetime
};

}  // namespace flashlm::cache

#endif  // FLASHLM_CACHE_NEURON_CACHE_H_
