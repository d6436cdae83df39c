#include "engine/residency_plan.h"

#include <gtest/gtest.h>

namespace flashlm::engine {
namespace {

// Hot sets (from activation statistics) are pinned first, evenly while they do not all fit;
// the rest of the bundle share is spread evenly on top.
TEST(ResidencyPlanTest, HotSetsArePinnedFirst) {
  ResidencyInputs in;
  in.fixed_bytes = 1000;
  in.dense_layer_bytes = {100, 100, 100};
  in.layer_bundles = {10, 10, 10};
  in.layer_hot = {6, 0, 2};
  in.bundle_spacing_bytes = 10;
  in.chunk_bundles = 4;
  const uint64_t base = 1000 + 40 + 300;  // fixed, one chunk, every attention layer
  in.budget_bytes = base + 80;            // 8 bundles
  auto p = PlanResidency(in);
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  EXPECT_EQ(p->pinned_bundles, (std::vector<uint32_t>{6, 0, 2}));
  EXPECT_EQ(p->pinned_hot, 8u);
  EXPECT_EQ(p->hot_total, 8u);
  in.budget_bytes = base + 40;  // 4 bundles: the hot sets share them evenly
  p = PlanResidency(in);
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->pinned_bundles, (std::vector<uint32_t>{2, 0, 2}));
  EXPECT_EQ(p->pinned_hot, 4u);
  in.budget_bytes = base + 170;  // 17 bundles: hot sets (8), then evenly up to 5 per layer
  p = PlanResidency(in);
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->pinned_bundles, (std::vector<uint32_t>{6, 5, 5}));
  EXPECT_LE(p->total_bytes(), in.budget_bytes);
  in.layer_hot.clear();  // no statistics: evenly
  p = PlanResidency(in);
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->pinned_bundles, (std::vector<uint32_t>{5, 5, 5}));
  EXPECT_EQ(p->hot_total, 0u);
}

// The LRU's share (a sparse FFN): a fraction of what the hot sets leave, the rest pinned evenly;
// never more slots than bundles left unpinned; nothing when every bundle is pinned anyway.
TEST(ResidencyPlanTest, CacheShareComesAfterTheHotSets) {
  ResidencyInputs in;
  in.fixed_bytes = 1000;
  in.dense_layer_bytes = {100, 100, 100};
  in.layer_bundles = {10, 10, 10};
  in.layer_hot = {6, 0, 2};
  in.bundle_spacing_bytes = 10;
  in.chunk_bundles = 4;
  const uint64_t base = 1000 + 40 + 300;
  in.budget_bytes = base + 180;  // 18 bundles: 8 hot, 10 left
  in.cache_fraction = 0.5;
  auto p = PlanResidency(in);
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  EXPECT_EQ(p->pinned_hot, 8u);
  EXPECT_EQ(p->cache_bundles, 5u);
  EXPECT_EQ(p->cache_bytes, 50u);
  EXPECT_EQ(p->pinned_bundles, (std::vector<uint32_t>{6, 3, 3}));  // 13 units: evenly on top
  EXPECT_LE(p->total_bytes(), in.budget_bytes);
  in.cache_fraction = 1.0;  // all of it: only the hot sets pinned
  p = PlanResidency(in);
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->cache_bundles, 10u);
  EXPECT_EQ(p->pinned_bundles, (std::vector<uint32_t>{6, 0, 2}));
  EXPECT_LE(p->total_bytes(), in.budget_bytes);
  in.budget_bytes = base + 1000;  // the whole model fits: no cache
  p = PlanResidency(in);
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->cache_bundles, 0u);
  in.cache_fraction = 1.5;
  EXPECT_EQ(PlanResidency(in).status().code(), StatusCode::kInvalidArgument);
}

// The pinned attention layers are one buffer on huge pages: the plan charges it rounded up to
// whole huge pages, as it does the chunk ring, and pins fewer layers when the rounding would not
// fit.
TEST(ResidencyPlanTest, PinnedAttentionIsChargedInWholeHugePages) {
  ResidencyInputs in;
  in.fixed_bytes = 1000;
  in.dense_layer_bytes = {600, 600, 600};
  in.layer_bundles = {10, 10, 10};
  in.bundle_spacing_bytes = 10;
  in.chunk_bundles = 4;
  in.huge_page_bytes = 1000;
  in.budget_bytes = 0;  // everything resident: 1800 bytes of attention in 2 huge pages
  auto p = PlanResidency(in);
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  EXPECT_EQ(p->dense_pinned, (std::vector<uint8_t>{1, 1, 1}));
  EXPECT_EQ(p->pinned_dense_bytes, 2000u);
  // 1999 bytes beside the fixed part and one FFN chunk: not all three layers (2000 rounded), so
  // one streams (600) and 1399 are left to pin: one layer, as two round up to 2000 bytes.
  in.budget_bytes = 1000 + 40 + 1999;
  p = PlanResidency(in);
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  EXPECT_EQ(p->pinned_dense_bytes, 600u);  // below one huge page: not rounded
  uint32_t pinned = 0;
  for (uint8_t d : p->dense_pinned) pinned += d;
  EXPECT_EQ(pinned, 1u);
  EXPECT_LE(p->total_bytes(), in.budget_bytes);
  in.huge_page_bytes = 0;  // no rounding: all three fit
  p = PlanResidency(in);
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  EXPECT_EQ(p->dense_pinned, (std::vector<uint8_t>{1, 1, 1}));
  EXPECT_EQ(p->pinned_dense_bytes, 1800u);
}

// The attention layers that do not fit stream spread evenly over the pass (22 layers, 8 streamed:
// layers floor((2i + 1) 22 / 16)), each with resident layers before it to overlap its read; when
// that set would not fit (layers of unequal sizes), the layers that fit in order are pinned.
TEST(ResidencyPlanTest, StreamedAttentionLayersAreSpread) {
  ResidencyInputs in;
  in.fixed_bytes = 1000;
  in.dense_layer_bytes.assign(22, 100);
  in.layer_bundles.assign(22, 10);
  in.bundle_spacing_bytes = 10;
  in.chunk_bundles = 4;
  in.budget_bytes = 1000 + 40 + 100 + 14 * 100;  // fixed, one chunk, one streamed layer, 14 pinned
  auto p = PlanResidency(in);
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  std::vector<uint8_t> want(22, 1);
  for (uint32_t l : {1, 4, 6, 9, 12, 15, 17, 20}) want[l] = 0;
  EXPECT_EQ(p->dense_pinned, want);
  EXPECT_EQ(p->pinned_dense_bytes, 1400u);
  EXPECT_LE(p->total_bytes(), in.budget_bytes);
  // Unequal layers: 200 bytes for pinning; in order layer 0 fits, the spread set (layer 1, of
  // 300 bytes: layers 0, 2, 3 streamed) does not.
  in.dense_layer_bytes = {100, 300, 100, 100};
  in.layer_bundles.assign(4, 10);
  in.budget_bytes = 1000 + 40 + 300 + 200;  // the streaming buffer holds the largest layer
  p = PlanResidency(in);
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  EXPECT_EQ(p->dense_pinned, (std::vector<uint8_t>{1, 0, 0, 0}));
  EXPECT_LE(p->total_bytes(), in.budget_bytes);
}

TEST(ResidencyPlanTest, PrioritiesAndMinimum) {
  ResidencyInputs in;
  in.fixed_bytes = 1000;
  in.dense_layer_bytes = {100, 100, 100};
  in.layer_bundles = {10, 10, 10};
  in.bundle_spacing_bytes = 10;
  in.chunk_bundles = 4;
  // Unlimited and "fits": everything resident.
  for (uint64_t budget : {uint64_t{0}, uint64_t{1000 + 300 + 300}}) {
    in.budget_bytes = budget;
    auto p = PlanResidency(in);
    ASSERT_TRUE(p.ok());
    EXPECT_FALSE(p->streams());
    EXPECT_EQ(p->pinned_bundles, (std::vector<uint32_t>{10, 10, 10}));
    EXPECT_EQ(p->total_bytes(), 1600u);
  }
  // One byte short: attention stays resident, bundles stream in chunks of 4.
  in.budget_bytes = 1599;
  auto p = PlanResidency(in);
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->dense_pinned, (std::vector<uint8_t>{1, 1, 1}));
  EXPECT_EQ(p->chunk_stream_bytes, 40u);
  EXPECT_EQ(p->dense_stream_bytes, 0u);
  EXPECT_EQ(p->pinned_bundles, (std::vector<uint32_t>{8, 8, 8}));  // (1599-1000-40-300)/30
  EXPECT_LE(p->total_bytes(), 1599u);
  // The minimum: fixed + one dense layer + one chunk; nothing pinned.
  in.budget_bytes = 1000 + 100 + 40;
  p = PlanResidency(in);
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->minimum_bytes, 1140u);
  EXPECT_EQ(p->dense_pinned, (std::vector<uint8_t>{0, 0, 0}));
  EXPECT_EQ(p->pinned_bundles, (std::vector<uint32_t>{0, 0, 0}));
  EXPECT_EQ(p->total_bytes(), 1140u);
  // Attention pinned layer by layer as the budget grows, the streamed layers spread over the
  // pass: of 3 layers with 2 streamed, layers floor(3/4) = 0 and floor(9/4) = 2.
  in.budget_bytes = 1140 + 150;
  p = PlanResidency(in);
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->dense_pinned, (std::vector<uint8_t>{0, 1, 0}));
  EXPECT_EQ(p->pinned_bundles, (std::vector<uint32_t>{1, 1, 1}));
  // Below the minimum.
  in.budget_bytes = 1139;
  p = PlanResidency(in);
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(p.status().message().find("1140"), std::string::npos);
  // Read-ahead: the minimum holds chunk_buffers_min chunks; more are added, up to
  // chunk_buffers, from what is left after attention, before any bundle is pinned.
  in.chunk_buffers_min = 2;
  in.chunk_buffers = 4;
  in.budget_bytes = 1000 + 100 + 80;
  p = PlanResidency(in);
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  EXPECT_EQ(p->minimum_bytes, 1180u);
  EXPECT_EQ(p->chunk_buffers, 2u);
  EXPECT_EQ(p->chunk_stream_bytes, 80u);
  in.budget_bytes = 1180 + 79;
  p = PlanResidency(in);
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->chunk_buffers, 3u);  // 40 more; 39 left is less than a chunk or a dense layer
  EXPECT_EQ(p->pinned_bundles, (std::vector<uint32_t>{1, 1, 1}));
  in.budget_bytes = 1599;
  p = PlanResidency(in);
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->chunk_buffers, 4u);
  EXPECT_EQ(p->chunk_stream_bytes, 160u);
  EXPECT_EQ(p->pinned_bundles, (std::vector<uint32_t>{4, 4, 4}));  // (1599-1000-160-300)/30
  EXPECT_LE(p->total_bytes(), 1599u);
  // The embedding: resident when everything fits, else read on demand through a small buffer
  // (the minimum counts the buffer); an embedding that may not go on demand counts in full.
  ResidencyInputs e = in;
  e.embedding_bytes = 500;
  e.embedding_demand_bytes = 20;
  e.budget_bytes = 1000 + 500 + 300 + 300;
  p = PlanResidency(e);
  ASSERT_TRUE(p.ok());
  EXPECT_TRUE(p->embedding_resident);
  EXPECT_FALSE(p->streams());
  e.budget_bytes -= 1;
  p = PlanResidency(e);
  ASSERT_TRUE(p.ok());
  EXPECT_FALSE(p->embedding_resident);
  EXPECT_EQ(p->fixed_bytes, 1020u);
  EXPECT_EQ(p->minimum_bytes, 1020u + 100 + 80);
  EXPECT_LE(p->total_bytes(), e.budget_bytes);
  e.embedding_demand_bytes = 0;  // tied to the classifier: stays resident
  p = PlanResidency(e);
  ASSERT_TRUE(p.ok());
  EXPECT_TRUE(p->embedding_resident);
  EXPECT_EQ(p->minimum_bytes, 1500u + 100 + 80);
  // The classifier streams only when a resident one leaves less than the least buffers, and
  // only when streaming needs less DRAM than it.
  ResidencyInputs k = in;
  k.classifier_bytes = 400;
  k.classifier_demand_bytes = 50;
  k.budget_bytes = 1000 + 400 + 100 + 80;  // resident classifier + one dense layer + 2 chunks
  p = PlanResidency(k);
  ASSERT_TRUE(p.ok());
  EXPECT_TRUE(p->classifier_resident);
  EXPECT_EQ(p->minimum_bytes, 1000u + 50 + 100 + 80);
  k.budget_bytes -= 1;
  p = PlanResidency(k);
  ASSERT_TRUE(p.ok());
  EXPECT_FALSE(p->classifier_resident);
  EXPECT_EQ(p->fixed_bytes, 1050u);
  EXPECT_LE(p->total_bytes(), k.budget_bytes);
  k.classifier_demand_bytes = 500;  // streaming would need more than the classifier itself
  p = PlanResidency(k);
  EXPECT_FALSE(p.ok());
  // Bad inputs.
  in.bundle_spacing_bytes = 0;
  EXPECT_EQ(PlanResidency(in).status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace flashlm::engine
