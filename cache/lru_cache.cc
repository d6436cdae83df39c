#include "cache/lru_cache.h"

#include <string>

#include "storage/check.h"

namespace flashlm::cache {

// Handles are the addresses of entries in the fixed entry table.
struct LruCache::Handle {};

namespace {
uint64_t NextPowerOfTwo(uint64_t v) {
  uint64_t p = 1;
  while (p < v) p <<= 1;
  return p;
}
}  // namespace

uint64_t LruCache::ResidentBytes(uint32_t max_entries) {
  return uint64_t{max_entries} * sizeof(Entry) +
         NextPowerOfTwo(2ull * max_entries) * sizeof(uint32_t);
}

LruCache::LruCache(uint64_t capacity_bytes, uint32_t max_entries, EvictFn on_evict)
    : capacity_bytes_(capacity_bytes), on_evict_(std::move(on_evict)), entries_(max_entries) {
  CHECK_GT(capacity_bytes, 0u);
  CHECK_GT(max_entries, 0u);
  // Load factor at most 1/2 keeps linear probes short.
  index_.assign(NextPowerOfTwo(2ull * max_entries), kNil);
  index_mask_ = index_.size() - 1;
  for (uint32_t i = 0; i < max_entries; ++i) entries_[i].next = i + 1 < max_entries ? i + 1 : kNil;
  free_head_ = 0;
}

LruCache::~LruCache() {
  CHECK_EQ(pinned_bytes_, 0u);  // a handle outlived its cache
  while (lru_tail_ != kNil) Remove(lru_tail_);
}

uint64_t LruCache::Hash(uint64_t key) {
  // splitmix64 finaliser: keys are often (layer << 32 | neuron), so mix the high bits down.
  key ^= key >> 30;
  key *= 0xbf58476d1ce4e5b9ull;
  key ^= key >> 27;
  key *= 0x94d049bb133111ebull;
  key ^= key >> 31;
  return key;
}

uint32_t LruCache::FindSlot(uint64_t key) const {
  uint64_t slot = Hash(key) & index_mask_;
  while (index_[slot] != kNil && entries_[index_[slot]].key != key) slot = (slot + 1) & index_mask_;
  return static_cast<uint32_t>(slot);
}

void LruCache::IndexErase(uint64_t key) {
  // Backward-shift deletion: no tombstones, so probe lengths never degrade.
  uint64_t hole = FindSlot(key);
  CHECK_NE(index_[hole], kNil);
  index_[hole] = kNil;
  uint64_t slot = (hole + 1) & index_mask_;
  while (index_[slot] != kNil) {
    const uint64_t home = Hash(entries_[index_[slot]].key) & index_mask_;
    // Move the entry into the hole if its home is not in the cyclic range (hole, slot].
    const bool home_in_range =
        hole < slot ? (home > hole && home <= slot) : (home > hole || home <= slot);
    if (!home_in_range) {
      index_[hole] = index_[slot];
      index_[slot] = kNil;
      hole = slot;
    }
    slot = (slot + 1) & index_mask_;
  }
}

void LruCache::LruUnlink(uint32_t e) {
  Entry& x = entries_[e];
  if (x.prev != kNil)
    entries_[x.prev].next = x.next;
  else
    lru_head_ = x.next;
  if (x.next != kNil)
    entries_[x.next].prev = x.prev;
  else
    lru_tail_ = x.prev;
  x.prev = x.next = kNil;
}

void LruCache::LruPushFront(uint32_t e) {
  Entry& x = entries_[e];
  x.prev = kNil;
  x.next = lru_head_;
  if (lru_head_ != kNil)
    entries_[lru_head_].prev = e;
  else
    lru_tail_ = e;
  lru_head_ = e;
}

void LruCache::Remove(uint32_t e) {
  Entry& x = entries_[e];
  CHECK(x.in_use);
  CHECK_EQ(x.pins, 0u);
  LruUnlink(e);
  IndexErase(x.key);
  usage_bytes_ -= x.charge;
  --size_;
  x.in_use = false;
  const uint64_t key = x.key, value = x.value;
  x.next = free_head_;
  free_head_ = e;
  if (on_evict_) on_evict_(key, value);
}

LruCache::Handle* LruCache::Lookup(uint64_t key) {
  ++stats_.lookups;
  const uint32_t idx = index_[FindSlot(key)];
  if (idx == kNil) return nullptr;
  ++stats_.hits;
  Entry& x = entries_[idx];
  if (x.pins++ == 0) {
    LruUnlink(idx);
    pinned_bytes_ += x.charge;
  }
  return reinterpret_cast<Handle*>(&x);
}

Result<LruCache::Handle*> LruCache::Insert(uint64_t key, uint64_t value, uint64_t charge_bytes) {
  if (charge_bytes > capacity_bytes_) {
    return InvalidArgumentError("cache entry of " + std::to_string(charge_bytes) +
                                " bytes exceeds the cache capacity of " +
                                std::to_string(capacity_bytes_));
  }
  const uint32_t slot = FindSlot(key);
  if (index_[slot] != kNil) return InvalidArgumentError("cache key already present");
  // Evict least-recently-used unpinned entries until the charge and one table entry fit.
  while ((usage_bytes_ + charge_bytes > capacity_bytes_ || free_head_ == kNil) &&
         lru_tail_ != kNil) {
    stats_.evicted_bytes += entries_[lru_tail_].charge;
    ++stats_.evictions;
    Remove(lru_tail_);
  }
  if (usage_bytes_ + charge_bytes > capacity_bytes_ || free_head_ == kNil) {
    return ResourceExhaustedError("cache full of pinned entries (" + std::to_string(pinned_bytes_) +
                                  " of " + std::to_string(capacity_bytes_) + " bytes pinned)");
  }
  const uint32_t e = free_head_;
  Entry& x = entries_[e];
  free_head_ = x.next;
  x = Entry{key, value, charge_bytes, 1, kNil, kNil, true};
  index_[FindSlot(key)] = e;  // evictions may have moved slots: probe again
  usage_bytes_ += charge_bytes;
  pinned_bytes_ += charge_bytes;
  ++size_;
  ++stats_.inserts;
  return reinterpret_cast<Handle*>(&x);
}

void LruCache::Release(Handle* h) {
  Entry* x = reinterpret_cast<Entry*>(h);
  CHECK(x >= entries_.data() && x < entries_.data() + entries_.size());
  CHECK(x->in_use && x->pins > 0);
  if (--x->pins == 0) {
    pinned_bytes_ -= x->charge;
    LruPushFront(static_cast<uint32_t>(x - entries_.data()));
  }
}

bool LruCache::Erase(uint64_t key) {
  const uint32_t idx = index_[FindSlot(key)];
  if (idx == kNil || entries_[idx].pins > 0) return false;
  Remove(idx);
  return true;
}

uint64_t LruCache::ShrinkTo(uint64_t target_bytes) {
  uint64_t evicted = 0;
  while (usage_bytes_ > target_bytes && lru_tail_ != kNil) {
    const uint64_t c = entries_[lru_tail_].charge;
    evicted += c;
    stats_.evicted_bytes += c;
    ++stats_.evictions;
    Remove(lru_tail_);
  }
  return evicted;
}

bool LruCache::Oldest(uint64_t* value) const {
  if (lru_tail_ == kNil) return false;
  *value = entries_[lru_tail_].value;
  return true;
}

uint64_t LruCache::Value(const Handle* h) const { return reinterpret_cast<const Entry*>(h)->value; }
uint64_t LruCache::Key(const Handle* h) const { return reinterpret_cast<const Entry*>(h)->key; }
bool LruCache::Contains(uint64_t key) const { return index_[FindSlot(key)] != kNil; }

}  // namespace flashlm::cache
