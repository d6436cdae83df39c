#include "cache/lazy_aux_cache.h"

#include <gtest/gtest.h>

#include <vector>

namespace flashlm::cache {
namespace {

TEST(LazyAuxCacheTest, SizesAndBadArguments) {
  EXPECT_EQ(LazyAuxCache::BytesNeeded(8, 10), 10u * (8 * 4 + 4) + 4);
  EXPECT_FALSE(LazyAuxCache::Create(0, 8, 10).ok());
  EXPECT_FALSE(LazyAuxCache::Create(4, 0, 10).ok());
  EXPECT_FALSE(LazyAuxCache::Create(4, 8, 0).ok());
  auto c = LazyAuxCache::Create(4, 8, 10);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ((*c)->resident_bytes(), LazyAuxCache::BytesNeeded(8, 10));
}

TEST(LazyAuxCacheTest, PruneReviveResetKeepStateAndCounts) {
  auto made = LazyAuxCache::Create(5, 3, 6);
  ASSERT_TRUE(made.ok());
  LazyAuxCache& c = **made;
  for (uint32_t p = 0; p < 6; ++p) EXPECT_EQ(c.computed_layers(p), 5u);
  const std::vector<float> h2 = {1, 2, 3}, h4 = {4, 5, 6};
  c.Prune(2, 3, h2);  // layers 0..2 computed: layer 3's input kept
  c.Prune(4, 1, h4);
  EXPECT_EQ(c.held(), 2u);
  EXPECT_EQ(c.held_bytes(), 2u * 3 * 4);
  EXPECT_TRUE(c.present(2, 2));
  EXPECT_FALSE(c.present(3, 2));
  EXPECT_TRUE(c.present(0, 4));
  EXPECT_FALSE(c.present(1, 4));
  EXPECT_EQ(std::vector<float>(c.hidden(2).begin(), c.hidden(2).end()), h2);
  EXPECT_EQ(std::vector<float>(c.hidden(4).begin(), c.hidden(4).end()), h4);
  c.Revive(2);
  EXPECT_EQ(c.computed_layers(2), 5u);
  EXPECT_EQ(c.held(), 1u);
  // Pruned again later, at a deeper layer: the slot is overwritten.
  const std::vector<float> h2b = {7, 8, 9};
  c.Prune(2, 4, h2b);
  EXPECT_EQ(std::vector<float>(c.hidden(2).begin(), c.hidden(2).end()), h2b);
  c.Reset(4);  // rewound: recomputed from layer 0, not a revival
  EXPECT_EQ(c.held(), 1u);
  EXPECT_EQ(c.prunes(), 3u);
  EXPECT_EQ(c.revivals(), 1u);
  EXPECT_EQ(c.peak_held_bytes(), 2u * 3 * 4);
  c.ResetStats();
  EXPECT_EQ(c.prunes(), 0u);
  EXPECT_EQ(c.peak_held_bytes(), 1u * 3 * 4);
}

// Sequences are independent: the same position of two sequences has its own state and count;
// the size is per sequence.
TEST(LazyAuxCacheTest, SequencesKeepTheirOwnSlots) {
  EXPECT_EQ(LazyAuxCache::BytesNeeded(8, 10, 3), 3u * (10 * (8 * 4 + 4) + 4));
  EXPECT_FALSE(LazyAuxCache::Create(4, 8, 10, 0).ok());
  auto made = LazyAuxCache::Create(5, 2, 4, 3);
  ASSERT_TRUE(made.ok());
  LazyAuxCache& c = **made;
  EXPECT_EQ(c.resident_bytes(), LazyAuxCache::BytesNeeded(2, 4, 3));
  EXPECT_EQ(c.max_positions(), 4u);
  EXPECT_EQ(c.max_sequences(), 3u);
  const std::vector<float> a = {1, 2}, b = {3, 4};
  c.Prune(0, 3, 2, a);
  c.Prune(2, 3, 1, b);
  EXPECT_EQ(c.held(), 2u);
  EXPECT_EQ(c.computed_layers(0, 3), 2u);
  EXPECT_EQ(c.computed_layers(1, 3), 5u);  // untouched
  EXPECT_EQ(c.computed_layers(2, 3), 1u);
  EXPECT_TRUE(c.present(1, 0, 3));
  EXPECT_FALSE(c.present(1, 2, 3));
  EXPECT_EQ(std::vector<float>(c.hidden(0, 3).begin(), c.hidden(0, 3).end()), a);
  EXPECT_EQ(std::vector<float>(c.hidden(2, 3).begin(), c.hidden(2, 3).end()), b);
  c.Reset(2, 3);  // sequence 2 rewound: sequence 0's state stays
  EXPECT_EQ(c.held(), 1u);
  EXPECT_EQ(c.computed_layers(0, 3), 2u);
  EXPECT_EQ(c.computed_layers(3), 2u);  // the one-argument form is sequence 0
  c.Revive(0, 3);
  EXPECT_EQ(c.held(), 0u);
  EXPECT_EQ(c.revivals(), 1u);
}

// ResetFrom drops every held state of one sequence from a position on, however far beyond the
// sequence's current length it lies (a server slot handed to a shorter request), and nothing
// before it or of another sequence.
TEST(LazyAuxCacheTest, ResetFromDropsTheRestOfOneSequence) {
  auto made = LazyAuxCache::Create(4, 2, 16, 2);
  ASSERT_TRUE(made.ok());
  LazyAuxCache& c = **made;
  const std::vector<float> h = {1, 2};
  for (uint32_t p : {1u, 5u, 14u}) c.Prune(0, p, 2, h);
  c.Prune(1, 14, 1, h);
  EXPECT_EQ(c.held(), 4u);
  c.ResetFrom(0, 5);
  EXPECT_EQ(c.held(), 2u);
  EXPECT_EQ(c.computed_layers(0, 1), 2u);  // before 5: kept
  EXPECT_EQ(c.computed_layers(0, 5), 4u);
  EXPECT_EQ(c.computed_layers(0, 14), 4u);
  EXPECT_EQ(c.computed_layers(1, 14), 1u);  // the other sequence: kept
  EXPECT_EQ(c.revivals(), 0u);              // not counted as revivals
  c.ResetFrom(0, 0);
  c.ResetFrom(1, 0);
  EXPECT_EQ(c.held(), 0u);
  c.Prune(1, 3, 1, h);  // held again after a reset: counted once
  EXPECT_EQ(c.held(), 1u);
  c.ResetFrom(1, 3);
  EXPECT_EQ(c.held(), 0u);
}

}  // namespace
}  // namespace flashlm::cache
