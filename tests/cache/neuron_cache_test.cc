#include "cache/neuron_cache.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <vector>

namespace flashlm::cache {
namespace {

void Fill(NeuronCache& c, NeuronCache::Handle* h, uint8_t v) {
  ByteSpan b = c.Bytes(h);
  std::memset(b.data(), v, b.size());
  c.MarkFilled(h);
}

TEST(NeuronCacheTest, SlotsAreAlignedAndSizedByTheBudget) {
  auto c = NeuronCache::Create(10 * 4096 + 100, 3000, 4096);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ((*c)->slot_count(), 10u);
  EXPECT_EQ((*c)->slot_bytes(), 4096u);
  auto h = (*c)->Reserve(0, 5);
  ASSERT_TRUE(h.ok());
  EXPECT_EQ(reinterpret_cast<uintptr_t>((*c)->Bytes(*h).data()) % 4096, 0u);
  EXPECT_EQ((*c)->Bytes(*h).size(), 3000u);
  (*c)->Release(*h);
  EXPECT_EQ(NeuronCache::Create(1000, 3000).status().code(), StatusCode::kInvalidArgument);
}

TEST(NeuronCacheTest, MissReserveFillHitAndEviction) {
  auto cr = NeuronCache::Create(2 * 4096, 4096);
  ASSERT_TRUE(cr.ok());
  NeuronCache& c = **cr;
  EXPECT_EQ(c.Lookup(1, 1), nullptr);
  auto a = c.Reserve(1, 1);
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(c.Lookup(1, 1), nullptr) << "an unfilled slot must miss";
  Fill(c, *a, 0xAA);
  c.Release(*a);
  NeuronCache::Handle* hit = c.Lookup(1, 1);
  ASSERT_NE(hit, nullptr);
  EXPECT_EQ(static_cast<uint8_t>(c.Bytes(hit)[17]), 0xAA);
  c.Release(hit);

  auto b = c.Reserve(1, 2);
  Fill(c, *b, 0xBB);
  c.Release(*b);
  auto d = c.Reserve(2, 0);  // full: evicts (1,1), the least recently used
  ASSERT_TRUE(d.ok());
  Fill(c, *d, 0xDD);
  EXPECT_EQ(c.Lookup(1, 1), nullptr);
  NeuronCache::Handle* still = c.Lookup(1, 2);
  ASSERT_NE(still, nullptr);
  EXPECT_EQ(static_cast<uint8_t>(c.Bytes(still)[0]), 0xBB);
  // Both slots pinned now: nothing can be reserved.
  EXPECT_EQ(c.Reserve(3, 3).status().code(), StatusCode::kResourceExhausted);
  c.Release(still);
  c.Release(*d);
}

TEST(NeuronCacheTest, HotSetSurvivesAnyWorkload) {
  auto cr = NeuronCache::Create(4 * 4096, 100);
  ASSERT_TRUE(cr.ok());
  NeuronCache& c = **cr;
  auto hot = c.Reserve(0, 0);
  Fill(c, *hot, 0x11);
  c.PinForever(*hot);
  for (uint32_t n = 1; n < 50; ++n) {
    auto h = c.Reserve(0, n);
    ASSERT_TRUE(h.ok());
    Fill(c, *h, static_cast<uint8_t>(n));
    c.Release(*h);
  }
  NeuronCache::Handle* h = c.Lookup(0, 0);
  ASSERT_NE(h, nullptr);
  EXPECT_EQ(static_cast<uint8_t>(c.Bytes(h)[99]), 0x11);
  c.Release(h);
  EXPECT_EQ(c.hot_count(), 1u);
}

TEST(NeuronCacheTest, AbandonedReadLeavesNoEntry) {
  auto cr = NeuronCache::Create(4096, 100);
  NeuronCache& c = **cr;
  auto h = c.Reserve(4, 4);
  ASSERT_TRUE(h.ok());
  c.Abandon(*h);
  EXPECT_EQ(c.Lookup(4, 4), nullptr);
  auto again = c.Reserve(4, 4);  // the slot is free again, and the key absent
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  c.Release(*again);
}

// The sliding window against a reference model under a seeded random workload: a miss is admitted
// when a slot is free or the least recently used bundle was last used at least `window` passes
// ago (then it is evicted); otherwise TryReserve refuses and nothing changes.
TEST(NeuronCacheTest, WindowAdmitsOnlyBeyondTheLastKPasses) {
  for (uint32_t window : {0u, 1u, 3u}) {
    constexpr uint32_t kSlots = 8;
    auto cr = NeuronCache::Create(kSlots * 4096, 4096);
    ASSERT_TRUE(cr.ok());
    NeuronCache& c = **cr;
    c.SetWindow(window);
    struct Ref {
      uint32_t neuron, last_pass;
    };
    std::vector<Ref> lru;  // most recent first
    uint32_t pass = 0, seed = 12345 + window, admitted = 0, refused = 0;
    for (uint32_t step = 0; step < 4000; ++step) {
      if (step % 5 == 0) {
        c.NextPass();
        ++pass;
      }
      seed = seed * 1103515245u + 12345u;
      const uint32_t neuron = (seed >> 16) % 20;
      auto it =
          std::find_if(lru.begin(), lru.end(), [&](const Ref& r) { return r.neuron == neuron; });
      NeuronCache::Handle* h = c.Lookup(0, neuron);
      ASSERT_EQ(h != nullptr, it != lru.end()) << "step " << step;
      if (h != nullptr) {
        lru.erase(it);
        lru.insert(lru.begin(), Ref{neuron, pass});
        EXPECT_EQ(static_cast<uint8_t>(c.Bytes(h)[0]), neuron);
        c.Release(h);
        continue;
      }
      const bool expect =
          lru.size() < kSlots || window == 0 || pass - lru.back().last_pass >= window;
      h = c.TryReserve(0, neuron);
      ASSERT_EQ(h != nullptr, expect) << "step " << step << " window " << window;
      if (h == nullptr) {
        ++refused;
        continue;
      }
      ++admitted;
      if (lru.size() == kSlots) lru.pop_back();
      lru.insert(lru.begin(), Ref{neuron, pass});
      Fill(c, h, static_cast<uint8_t>(neuron));
      c.Release(h);
    }
    EXPECT_EQ(c.refusals(), refused);
    EXPECT_GT(admitted, 0u);
    if (window >= 3) EXPECT_GT(refused, 0u);  // 20 neurons, 8 slots, 5 lookups a pass
    if (window == 0) EXPECT_EQ(refused, 0u);
  }
}

}  // namespace
}  // namespace flashlm::cache
