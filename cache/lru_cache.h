// LruCache: DRAM residency under a fixed byte budget, with pin handles and byte charges.
//
// The shape is LevelDB's cache (include/leveldb/cache.h): each entry is charged a number of
// bytes against a capacity fixed at construction; Lookup and Insert hand out a pinned Handle;
// a pinned entry is never evicted; Release unpins it. Unpinned entries sit on an LRU list and are
// evicted least-recently-used first when an Insert needs room.
//
// Unlike LevelDB's cache, every bound is fixed at start-up: the entry table (max_entries) and the
// hash index are allocated once by the constructor, so Lookup/Insert/Release/Erase never
// allocate. Values are opaque 64-bit words (an index into a slab the owner manages, a pointer);
// when an entry leaves the cache (eviction, Erase, or destruction) the owner's evict callback is
// told its key and value, so the owner can recycle the slot.
//
// Thread-compatible, not thread-safe: one owner thread (the engine's), or external locking.
#ifndef FLASHLM_CACHE_LRU_CACHE_H_
#define FLASHLM_CACHE_LRU_CACHE_H_

#include <cstdint>
#include <functional>
#include <vector>

#include "storage/status.h"

namespace flashlm::cache {

struct CacheStats {
  uint64_t lookups = 0;
  uint64_t hits = 0;
  uint64_t inserts = 0;
  uint64_t evictions = 0;
  uint64_t evicted_bytes = 0;
  double hit_rate() const { return lookups ? static_cast<double>(hits) / lookups : 0.0; }
};

class LruCache {
 public:
  // An opaque pin on one entry. Valid until passed to Release().
  struct Handle;
  using EvictFn = std::function<void(uint64_t key, uint64_t value)>;

  // DRAM the entry table and index of a cache of `max_entries` hold, for budgets.
  static uint64_t ResidentBytes(uint32_t max_entries);

  // Preconditions: capacity_bytes > 0, max_entries > 0. `on_evict` may be empty.
  LruCache(uint64_t capacity_bytes, uint32_t max_entries, EvictFn on_evict = {});
  ~LruCache();  // every entry must be released; calls on_evict for each remaining entry
  LruCache(const LruCache&) = delete;
  LruCache& operator=(const LruCache&) = delete;

  // Returns a pinned handle on `key`'s entry and marks it most recently used, or nullptr on a
  // miss. Counts towards the hit rate.
  Handle* Lookup(uint64_t key);

  // Inserts `key` (which must not be present) charged `charge_bytes`, evicting unpinned entries
  // LRU-first until it fits. Returns the pinned handle.
  // Errors: ResourceExhausted when the charge cannot fit even after evicting every unpinned
  // entry, or the entry table is full of pinned entries; InvalidArgument when `key` is present
  // or charge_bytes > capacity. On error nothing is inserted (entries may have been evicted).
  Result<Handle*> Insert(uint64_t key, uint64_t value, uint64_t charge_bytes);

  // Unpins; the entry becomes evictable once no pin remains. Precondition: `h` came from this
  // cache and was not released yet.
  void Release(Handle* h);

  // Removes `key` if present and unpinned (returns true), else false. Pinned entries stay.
  bool Erase(uint64_t key);

  // Evicts unpinned entries until usage <= target_bytes. Returns the bytes evicted.
  uint64_t ShrinkTo(uint64_t target_bytes);

  // The value of the least recently used unpinned entry (the next to be evicted), or false when
  // every entry is pinned or the cache is empty. Does not touch recency.
  bool Oldest(uint64_t* value) const;

  uint64_t Value(const Handle* h) const;
  uint64_t Key(const Handle* h) const;
  bool Contains(uint64_t key) const;  // does not count as a lookup or touch recency

  uint64_t capacity_bytes() const { return capacity_bytes_; }
  uint64_t usage_bytes() const { return usage_bytes_; }
  uint64_t pinned_bytes() const { return pinned_bytes_; }
  uint32_t size() const { return size_; }
  uint32_t max_entries() const { return static_cast<uint32_t>(entries_.size()); }
  const CacheStats& stats() const { return stats_; }
  void ResetStats() { stats_ = CacheStats(); }

 private:
  static constexpr uint32_t kNil = UINT32_MAX;

  struct Entry {
    uint64_t key = 0;
    uint64_t value = 0;
    uint64_t charge = 0;
    uint32_t pins = 0;
    uint32_t prev = kNil;  // LRU list (unpinned entries) or free list (next only)
    uint32_t next = kNil;
    bool in_use = false;
  };

  uint32_t FindSlot(uint64_t key) const;  // index into index_, of the key or of an empty slot
  void IndexErase(uint64_t key);
  void LruUnlink(uint32_t e);
  void LruPushFront(uint32_t e);  // most recently used at the front
  void Remove(uint32_t e);        // unlinks an unpinned entry, calls on_evict, frees it
  static uint64_t Hash(uint64_t key);

  const uint64_t capacity_bytes_;
  EvictFn on_evict_;
  std::vector<Entry> entries_;   // fixed at construction
  std::vector<uint32_t> index_;  // open addressing, linear probing: entry index or kNil
  uint64_t index_mask_;
  uint32_t free_head_ = kNil;
  uint32_t lru_head_ = kNil;  // most recent
  uint32_t lru_tail_ = kNil;  // least recent: evicted first
  uint32_t size_ = 0;
  uint64_t usage_bytes_ = 0;
  uint64_t pinned_bytes_ = 0;
  CacheStats stats_;
};

}  // namespace flashlm::cache

#endif  // FLASHLM_CACHE_LRU_CACHE_H_
