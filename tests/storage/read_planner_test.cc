#include "storage/read_planner.h"

#include <gtest/gtest.h>

#include <random>

#include "storage/bytes.h"

namespace flashlm::storage {
namespace {

TEST(ReadPlannerTest, AlignsAndMergesNeighboursWithinTheGap) {
  // Three ranges: two 4 KiB apart (merged with gap 4 KiB), one far away.
  ByteRange ranges[] = {{100, 200}, {8192 + 10, 100}, {1 << 20, 4096}};
  PlannerOptions o{.alignment_bytes = 4096, .gap_max_bytes = 4096, .read_max_bytes = 1 << 20};
  ReadPlan plan;
  ASSERT_TRUE(PlanReads(ranges, o, &plan).ok());
  ASSERT_EQ(plan.spans.size(), 2u);
  EXPECT_EQ(plan.spans[0].offset_bytes, 0u);
  EXPECT_EQ(plan.spans[0].length_bytes, 12288u);
  EXPECT_EQ(plan.spans[1].offset_bytes, 1u << 20);
  EXPECT_EQ(plan.spans[1].length_bytes, 4096u);
  EXPECT_EQ(plan.locations[0].span_index, 0u);
  EXPECT_EQ(plan.locations[0].offset_in_span_bytes, 100u);
  EXPECT_EQ(plan.locations[1].offset_in_span_bytes, 8202u);
  EXPECT_EQ(plan.locations[2].span_index, 1u);
  EXPECT_EQ(plan.requested_bytes, 4396u);
  EXPECT_EQ(plan.read_bytes, 16384u);
  EXPECT_NEAR(plan.amplification(), 16384.0 / 4396.0, 1e-12);

  // With no gap allowed the first two stay apart.
  o.gap_max_bytes = 0;
  ASSERT_TRUE(PlanReads(ranges, o, &plan).ok());
  EXPECT_EQ(plan.spans.size(), 3u);
  EXPECT_EQ(plan.read_bytes, 3 * 4096u);
}

TEST(ReadPlannerTest, SplitsLongSpansAndHandlesOverlapAndOrder) {
  ByteRange ranges[] = {{3 << 20, 10}, {0, 2'500'000}, {1000, 5000}};
  PlannerOptions o{.alignment_bytes = 4096, .gap_max_bytes = 0, .read_max_bytes = 1 << 20};
  ReadPlan plan;
  ASSERT_TRUE(PlanReads(ranges, o, &plan).ok());
  ASSERT_EQ(plan.spans.size(), 2u);
  EXPECT_EQ(plan.spans[0].length_bytes, AlignUp(2'500'000, 4096));
  ASSERT_EQ(plan.reads.size(), 4u);  // 1 MiB + 1 MiB + rest, then the far range
  EXPECT_EQ(plan.reads[0].length_bytes, 1u << 20);
  EXPECT_EQ(plan.reads[1].offset_in_span_bytes, 1u << 20);
  EXPECT_EQ(plan.reads[2].length_bytes, AlignUp(2'500'000, 4096) - (2u << 20));
  EXPECT_EQ(plan.reads[3].span_index, 1u);
  EXPECT_EQ(plan.locations[0].span_index, 1u);
  EXPECT_EQ(plan.locations[2].span_index, 0u);
  EXPECT_EQ(plan.locations[2].offset_in_span_bytes, 1000u);
}

TEST(ReadPlannerTest, RandomRangesAreAlwaysCovered) {
  std::mt19937_64 rng(11);
  ReadPlan plan;
  for (int round = 0; round < 200; ++round) {
    std::vector<ByteRange> ranges(1 + rng() % 20);
    for (auto& r : ranges) r = {rng() % (8 << 20), rng() % 300000};
    PlannerOptions o{.alignment_bytes = uint64_t{512} << (rng() % 4),
                     .gap_max_bytes = rng() % 65536,
                     .read_max_bytes = 4096u << (rng() % 8)};
    ASSERT_TRUE(PlanReads(ranges, o, &plan).ok());
    uint64_t sum = 0;
    for (size_t i = 0; i < plan.reads.size(); ++i) {
      const PlannedRead& rd = plan.reads[i];
      EXPECT_EQ(rd.offset_bytes % o.alignment_bytes, 0u);
      EXPECT_EQ(rd.length_bytes % o.alignment_bytes, 0u);
      EXPECT_LE(rd.length_bytes, o.read_max_bytes);
      EXPECT_EQ(rd.offset_bytes, plan.spans[rd.span_index].offset_bytes + rd.offset_in_span_bytes);
      sum += rd.length_bytes;
    }
    EXPECT_EQ(sum, plan.read_bytes);
    for (size_t i = 0; i < ranges.size(); ++i) {
      const PlannedSpan& s = plan.spans[plan.locations[i].span_index];
      EXPECT_EQ(s.offset_bytes + plan.locations[i].offset_in_span_bytes, ranges[i].offset_bytes);
      EXPECT_LE(plan.locations[i].offset_in_span_bytes + ranges[i].length_bytes, s.length_bytes);
    }
    for (size_t s = 1; s < plan.spans.size(); ++s) {  // sorted, disjoint, gaps above the limit
      uint64_t prev_end = plan.spans[s - 1].offset_bytes + plan.spans[s - 1].length_bytes;
      EXPECT_GT(plan.spans[s].offset_bytes, prev_end + o.gap_max_bytes);
    }
  }
}

TEST(ReadPlannerTest, BadOptionsAndOverflowAreRejected) {
  ReadPlan plan;
  ByteRange ok[] = {{0, 10}};
  EXPECT_EQ(PlanReads(ok, {.alignment_bytes = 1000}, &plan).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(PlanReads(ok, {.alignment_bytes = 4096, .read_max_bytes = 5000}, &plan).code(),
            StatusCode::kInvalidArgument);
  ByteRange bad[] = {{UINT64_MAX - 5, 10}};
  EXPECT_EQ(PlanReads(bad, {}, &plan).code(), StatusCode::kInvalidArgument);
  ASSERT_TRUE(PlanReads({}, {}, &plan).ok());
  EXPECT_EQ(plan.amplification(), 1.0);
}

}  // namespace
}  // namespace flashlm::storage
