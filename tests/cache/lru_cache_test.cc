#include "cache/lru_cache.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <list>
#include <map>
#include <random>
#include <vector>

namespace flashlm::cache {
namespace {

TEST(LruCacheTest, EvictsLeastRecentlyUsedFirst) {
  std::vector<uint64_t> evicted;
  LruCache c(300, 8, [&](uint64_t k, uint64_t) { evicted.push_back(k); });
  for (uint64_t k : {1, 2, 3}) c.Release(*c.Insert(k, k * 10, 100));
  c.Release(c.Lookup(1));  // 1 is now most recent; 2 is least
  c.Release(*c.Insert(4, 40, 100));
  EXPECT_EQ(evicted, std::vector<uint64_t>{2});
  EXPECT_TRUE(c.Contains(1));
  EXPECT_FALSE(c.Contains(2));
  EXPECT_EQ(c.usage_bytes(), 300u);
}

TEST(LruCacheTest, PinnedEntriesAreNeverEvicted) {
  LruCache c(200, 8);
  LruCache::Handle* pinned = *c.Insert(1, 11, 150);
  auto r = c.Insert(2, 22, 100);
  EXPECT_EQ(r.status().code(), StatusCode::kResourceExhausted);
  EXPECT_TRUE(c.Contains(1));
  EXPECT_EQ(c.Value(pinned), 11u);
  EXPECT_EQ(c.pinned_bytes(), 150u);
  EXPECT_FALSE(c.Erase(1));  // pinned: stays
  c.Release(pinned);
  EXPECT_EQ(c.pinned_bytes(), 0u);
  c.Release(*c.Insert(2, 22, 100));  // now 1 is evicted to make room
  EXPECT_FALSE(c.Contains(1));
}

TEST(LruCacheTest, EntryTableBoundIsHonoured) {
  LruCache c(1 << 20, 2);
  auto* a = *c.Insert(1, 0, 1);
  auto* b = *c.Insert(2, 0, 1);
  EXPECT_EQ(c.Insert(3, 0, 1).status().code(), StatusCode::kResourceExhausted);
  c.Release(a);
  auto* d = *c.Insert(3, 0, 1);  // evicts 1, the only unpinned entry
  EXPECT_FALSE(c.Contains(1));
  c.Release(b);
  c.Release(d);
}

TEST(LruCacheTest, RejectsDuplicatesAndOversizedEntries) {
  LruCache c(100, 4);
  c.Release(*c.Insert(7, 0, 10));
  EXPECT_EQ(c.Insert(7, 0, 10).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(c.Insert(8, 0, 101).status().code(), StatusCode::kInvalidArgument);
}

// The reference: a list in recency order and a map of pins, the obvious way.
class ReferenceLru {
 public:
  explicit ReferenceLru(uint64_t cap, uint32_t max) : cap_(cap), max_(max) {}
  bool Lookup(uint64_t k) {
    auto it = charge_.find(k);
    if (it == charge_.end()) return false;
    Touch(k);
    ++pins_[k];
    return true;
  }
  // Returns false when it cannot fit (mirrors ResourceExhausted).
  bool Insert(uint64_t k, uint64_t charge, std::vector<uint64_t>* evicted) {
    auto over = [&] { return usage_ + charge > cap_ || charge_.size() >= max_; };
    while (over()) {
      auto victim =
          std::find_if(order_.rbegin(), order_.rend(), [&](uint64_t x) { return pins_[x] == 0; });
      if (victim == order_.rend()) return false;
      uint64_t v = *victim;
      evicted->push_back(v);
      Drop(v);
    }
    charge_[k] = charge;
    usage_ += charge;
    order_.push_front(k);
    pins_[k] = 1;
    return true;
  }
  void Release(uint64_t k) {
    if (--pins_[k] == 0) Touch(k);  // released entries become most recent
  }
  bool Erase(uint64_t k) {
    if (!charge_.count(k) || pins_[k] > 0) return false;
    Drop(k);
    return true;
  }
  uint64_t usage() const { return usage_; }
  bool Contains(uint64_t k) const { return charge_.count(k) > 0; }

 private:
  void Touch(uint64_t k) {
    order_.remove(k);
    order_.push_front(k);
  }
  void Drop(uint64_t k) {
    usage_ -= charge_[k];
    charge_.erase(k);
    pins_.erase(k);
    order_.remove(k);
  }
  uint64_t cap_;
  uint32_t max_;
  uint64_t usage_ = 0;
  std::list<uint64_t> order_;
  std::map<uint64_t, uint64_t> charge_;
  std::map<uint64_t, int> pins_;
};

// A seeded random workload drives the cache and the reference side by side; after each step
// they must agree on membership, usage and the exact sequence of evictions.
TEST(LruCacheTest, MatchesReferenceModelOnRandomWorkload) {
  for (uint32_t seed : {1u, 2u, 3u, 4u}) {
    std::mt19937_64 rng(seed);
    const uint64_t cap = 4000;
    const uint32_t max_entries = 24;
    std::vector<uint64_t> got_evicted, want_evicted;
    LruCache c(cap, max_entries, [&](uint64_t k, uint64_t v) {
      EXPECT_EQ(v, k * 3);
      got_evicted.push_back(k);
    });
    ReferenceLru ref(cap, max_entries);
    std::map<uint64_t, std::vector<LruCache::Handle*>> held;
    for (int step = 0; step < 20000; ++step) {
      const uint64_t key = (rng() % 64) << 32 | (rng() % 4);  // layer/neuron-like keys
      const int op = static_cast<int>(rng() % 10);
      if (op < 4) {
        LruCache::Handle* h = c.Lookup(key);
        ASSERT_EQ(h != nullptr, ref.Lookup(key)) << "step " << step;
        if (h) held[key].push_back(h);
      } else if (op < 7) {
        if (ref.Contains(key)) continue;
        const uint64_t charge = 1 + rng() % 600;
        auto r = c.Insert(key, key * 3, charge);
        const bool ref_ok = ref.Insert(key, charge, &want_evicted);
        ASSERT_EQ(r.ok(), ref_ok) << "step " << step << " " << r.status().ToString();
        if (r.ok()) held[key].push_back(*r);
      } else if (op < 9) {
        if (held.empty()) continue;
        auto it = held.begin();
        std::advance(it, rng() % held.size());
        c.Release(it->second.back());
        ref.Release(it->first);
        it->second.pop_back();
        if (it->second.empty()) held.erase(it);
      } else {
        const bool erased = c.Erase(key);
        ASSERT_EQ(erased, ref.Erase(key));
        if (erased) want_evicted.push_back(key);
      }
      ASSERT_EQ(c.usage_bytes(), ref.usage()) << "step " << step;
      ASSERT_LE(c.usage_bytes(), cap);
      ASSERT_EQ(got_evicted, want_evicted) << "step " << step;
    }
    for (auto& [k, hs] : held) {
      for (auto* h : hs) c.Release(h);
    }
    EXPECT_GT(c.stats().evictions, 100u);
    EXPECT_GT(c.stats().hits, 100u);
  }
}

}  // namespace
}  // namespace flashlm::cache
