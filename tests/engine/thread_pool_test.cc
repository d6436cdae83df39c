#include "engine/thread_pool.h"

#include <gtest/gtest.h>

#include <atomic>
#include <vector>

namespace flashlm::engine {
namespace {

TEST(ThreadPoolTest, CoversRangeOnceWithGrain) {
  for (uint32_t threads : {1u, 2u, 3u, 5u}) {
    ThreadPool pool(threads);
    for (uint64_t grain : {1ull, 4ull, 16ull}) {
      for (uint64_t n : {0ull, 1ull, 7ull, 16ull, 100ull, 1001ull, 2053ull}) {
        std::vector<int> hits(n, 0);
        pool.ParallelFor(n, grain, [&](uint64_t b, uint64_t e, uint32_t t) {
          EXPECT_LT(t, threads);
          EXPECT_EQ(b % grain, 0u);
          EXPECT_LT(b, e);
          for (uint64_t i = b; i < e; ++i) ++hits[i];
        });
        for (uint64_t i = 0; i < n; ++i) {
          ASSERT_EQ(hits[i], 1) << threads << " " << grain << " " << n << " " << i;
        }
      }
    }
  }
}

TEST(ThreadPoolTest, ManyCallsInARowAndConcurrentChunksUseDistinctThreadIndices) {
  ThreadPool pool(3);
  std::vector<uint64_t> sums(3, 0);
  for (int call = 0; call < 2000; ++call) {
    std::vector<std::atomic<int>> in_use(3);
    pool.ParallelFor(97, 1, [&](uint64_t b, uint64_t e, uint32_t t) {
      EXPECT_EQ(in_use[t].fetch_add(1), 0);  // no two running chunks share an index
      for (uint64_t i = b; i < e; ++i) sums[t] += i;
      in_use[t].fetch_sub(1);
    });
  }
  EXPECT_EQ(sums[0] + sums[1] + sums[2], 2000ull * (96 * 97 / 2));
}

}  // namespace
}  // namespace flashlm::engine
