#include "cache/neuron_cache.h"

#include <string>

#include "storage/check.h"

namespace flashlm::cache {

Result<std::unique_ptr<NeuronCache>> NeuronCache::Create(uint64_t capacity_bytes,
                                                         uint64_t bundle_bytes,
                                                         uint64_t alignment_bytes) {
  if (bundle_bytes == 0 || !IsPowerOfTwo(alignment_bytes)) {
    return InvalidArgumentError("neuron cache: bundle size must be > 0 and alignment a power of 2");
  }
  const uint64_t slot_bytes = AlignUp(bundle_bytes, alignment_bytes);
  const uint64_t slots = capacity_bytes / slot_bytes;
  if (slots == 0) {
    return InvalidArgumentError("neuron cache: " + std::to_string(capacity_bytes) +
                                " bytes hold no bundle of " + std::to_string(slot_bytes) +
                                " bytes");
  }
  if (slots > UINT32_MAX / 2) return InvalidArgumentError("neuron cache: too many slots");
  ASSIGN_OR_RETURN(
      storage::BufferPool pool,
      storage::BufferPool::Create(static_cast<uint32_t>(slots), slot_bytes, alignment_bytes));
  return std::unique_ptr<NeuronCache>(new NeuronCache(std::move(pool), bundle_bytes));
}

uint64_t NeuronCache::ResidentBytes(uint32_t slots, uint64_t bundle_bytes,
                                    uint64_t alignment_bytes) {
  return storage::BufferPool::ResidentBytes(slots, bundle_bytes, alignment_bytes) +
         LruCache::ResidentBytes(slots) +
         uint64_t{slots} * (sizeof(uint8_t) + sizeof(uint32_t) + sizeof(Handle*));
}

uint64_t NeuronCache::SlotBytesMax(uint64_t bundle_bytes, uint64_t alignment_bytes) {
  // The slot; the pool's free stack and in-use flag; the LRU entry and up to four index words
  // (the index is the next power of two above twice the entries); filled_ and hot_.
  return AlignUp(bundle_bytes, alignment_bytes) + sizeof(uint32_t) + sizeof(uint8_t) +
         LruCache::ResidentBytes(1) + 2 * sizeof(uint32_t) + sizeof(uint8_t) + sizeof(uint32_t) +
         sizeof(Handle*);
}

NeuronCache::NeuronCache(storage::BufferPool pool, uint64_t bundle_bytes)
    : pool_(std::move(pool)),
      bundle_bytes_(bundle_bytes),
      filled_(pool_.buffer_count(), 0),
      used_pass_(pool_.buffer_count(), 0),
      lru_(static_cast<uint64_t>(pool_.buffer_count()) * pool_.buffer_bytes(), pool_.buffer_count(),
           [this](uint64_t, uint64_t slot) {
             filled_[slot] = 0;
             pool_.Release(static_cast<uint32_t>(slot));
           }) {
  hot_.reserve(pool_.buffer_count());
}

NeuronCache::~NeuronCache() {
  for (Handle* h : hot_) lru_.Release(h);
}

NeuronCache::Handle* NeuronCache::Lookup(uint32_t layer, uint32_t neuron) {
  Handle* h = lru_.Lookup(Key(layer, neuron));
  if (h != nullptr && !filled_[lru_.Value(h)]) {
    // Reserved by its reader but not yet filled: to everyone else it is still a miss. (With one
    // owner thread this happens only if the caller looks up a neuron it is reading itself.)
    lru_.Release(h);
    return nullptr;
  }
  if (h != nullptr) used_pass_[lru_.Value(h)] = pass_;
  return h;
}

NeuronCache::Handle* NeuronCache::TryReserve(uint32_t layer, uint32_t neuron) {
  if (pool_.free_count() == 0) {
    uint64_t oldest = 0;
    if (!lru_.Oldest(&oldest) || (window_ != 0 && pass_ - used_pass_[oldest] < window_)) {
      ++refusals_;
      return nullptr;
    }
  }
  Result<Handle*> h = Reserve(layer, neuron);
  if (!h.ok()) {  // cannot happen after the check above; refused all the same
    ++refusals_;
    return nullptr;
  }
  return *h;
}

Result<NeuronCache::Handle*> NeuronCache::Reserve(uint32_t layer, uint32_t neuron) {
  const uint64_t key = Key(layer, neuron);
  if (lru_.Contains(key)) return InvalidArgumentError("neuron bundle already cached");
  // Make room first, so that a slot is free in the pool before the LRU entry is created.
  if (pool_.free_count() == 0) {
    if (lru_.ShrinkTo(lru_.usage_bytes() - pool_.buffer_bytes()) == 0) {
      return ResourceExhaustedError("neuron cache: every slot is pinned (" +
                                    std::to_string(slot_count()) + " slots)");
    }
  }
  std::optional<uint32_t> slot = pool_.Acquire();
  CHECK(slot.has_value());
  auto h = lru_.Insert(key, *slot, pool_.buffer_bytes());
  if (!h.ok()) {
    pool_.Release(*slot);
    return h.status();
  }
  filled_[*slot] = 0;
  used_pass_[*slot] = pass_;
  return *h;
}

void NeuronCache::MarkFilled(Handle* h) { filled_[lru_.Value(h)] = 1; }

void NeuronCache::Abandon(Handle* h) {
  const uint64_t key = lru_.Key(h);
  lru_.Release(h);
  CHECK(lru_.Erase(key));
}

ByteSpan NeuronCache::Bytes(const Handle* h) const {
  return pool_.buffer(static_cast<uint32_t>(lru_.Value(h))).first(bundle_bytes_);
}

}  // namespace flashlm::cache
