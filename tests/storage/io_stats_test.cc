#include "storage/io_stats.h"

#include <gtest/gtest.h>

namespace flashlm::storage {
namespace {

TEST(IoStatsTest, BucketsAreMonotoneAndBoundsRoundTrip) {
  int prev = -1;
  for (uint64_t v : {0ull, 1ull, 15ull, 16ull, 17ull, 100ull, 1000ull, 123456ull, 1ull << 40}) {
    int b = IoStats::BucketFor(v);
    EXPECT_GT(b, prev);
    prev = b;
    EXPECT_LE(IoStats::BucketLowerBound(b), v);
    EXPECT_GT(IoStats::BucketLowerBound(b + 1), v);
  }
  EXPECT_LT(IoStats::BucketFor(UINT64_MAX), IoStats::kBucketCount);
}

TEST(IoStatsTest, QuantilesWithinBucketPrecision) {
  IoStats s;
  s.RecordSubmit(1'000'000'000);
  // 1..1000 us, one read each.
  for (uint64_t us = 1; us <= 1000; ++us) s.RecordRead(4096, us * 1000, 1'000'000'000 + us * 1000);
  EXPECT_EQ(s.reads(), 1000u);
  EXPECT_EQ(s.bytes(), 4096u * 1000);
  double p50 = static_cast<double>(s.LatencyQuantileNs(0.5));
  double p99 = static_cast<double>(s.LatencyQuantileNs(0.99));
  EXPECT_NEAR(p50, 500'000, 500'000 * 0.07);
  EXPECT_NEAR(p99, 990'000, 990'000 * 0.07);
  EXPECT_EQ(s.LatencyQuantileNs(1.0), s.latency_max_ns());
  EXPECT_EQ(s.latency_min_ns(), 1000u);
  // 1000 reads of 4 KiB in 1 ms: 3906.25 MiB/s, 1e6 reads/s.
  EXPECT_NEAR(s.elapsed_seconds(), 1e-3, 1e-12);
  EXPECT_NEAR(s.mib_per_s(), 4096.0 * 1000 / (1 << 20) / 1e-3, 1e-6);
  EXPECT_NEAR(s.reads_per_s(), 1e6, 1e-3);
}

TEST(IoStatsTest, EmptyAndMergeAndReset) {
  IoStats a;
  EXPECT_EQ(a.LatencyQuantileNs(0.5), 0u);
  EXPECT_EQ(a.mib_per_s(), 0.0);
  a.RecordSubmit(100);
  a.RecordRead(10, 50, 150);
  a.RecordRetry();
  IoStats b;
  b.RecordSubmit(50);
  b.RecordRead(20, 70, 300);
  b.RecordError(310);
  a.Merge(b);
  EXPECT_EQ(a.reads(), 2u);
  EXPECT_EQ(a.bytes(), 30u);
  EXPECT_EQ(a.errors(), 1u);
  EXPECT_EQ(a.retries(), 1u);
  EXPECT_NEAR(a.elapsed_seconds(), 260e-9, 1e-15);
  EXPECT_EQ(a.latency_max_ns(), 70u);
  a.Reset();
  EXPECT_EQ(a.reads(), 0u);
  EXPECT_EQ(a.elapsed_seconds(), 0.0);
}

}  // namespace
}  // namespace flashlm::storage
