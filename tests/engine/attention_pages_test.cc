#include "engine/attention_pages.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <random>
#include <vector>

#include "engine/kv_cache.h"

namespace flashlm::engine {
namespace {

// The budget in pages: ceil(N / P), at least one, at most every page; a share of the context is
// taken of len.
TEST(PageAttentionTest, KeepIsTheBudgetInPages) {
  const PageAttention count(*TopNSpec::Parse("20"), 8);
  EXPECT_EQ(count.Keep(1), 1u);
  EXPECT_EQ(count.Keep(8), 1u);
  EXPECT_EQ(count.Keep(17), 3u);   // 3 pages exist; ceil(17 / 8) = 3 (Keep(len) <= len)
  EXPECT_EQ(count.Keep(100), 3u);  // ceil(20 / 8)
  const PageAttention share(*TopNSpec::Parse("5%"), 16);
  EXPECT_EQ(share.Keep(16384), 52u);  // ceil(ceil(819.2) / 16) = ceil(820 / 16)
  const PageAttention all(TopNSpec{}, 16);
  EXPECT_EQ(all.Keep(1000), 63u);
}

// The chosen pages are the query's own page plus the highest-bound earlier ones (ties: the
// lower page), increasing; checked against a sort of every page.
TEST(PageAttentionTest, SelectsTheOwnPageAndTheHighestBounds) {
  std::mt19937 rng(5);
  std::uniform_int_distribution<int> level(0, 6);  // few distinct values: ties happen
  for (uint32_t trial = 0; trial < 200; ++trial) {
    const uint32_t P = 1 + rng() % 8, len = 1 + rng() % 300;
    const uint32_t n_pages = (len + P - 1) / P;
    const PageAttention sel(TopNSpec{1 + static_cast<uint32_t>(rng() % 64), 0}, P);
    std::vector<float> bounds(n_pages - 1);
    for (float& b : bounds) b = static_cast<float>(level(rng));
    std::vector<uint32_t> pages(n_pages, 12345);
    const uint32_t got = sel.SelectPages(len, n_pages, bounds, pages);
    ASSERT_EQ(got, sel.Keep(len));
    std::vector<uint32_t> order(n_pages - 1);
    std::iota(order.begin(), order.end(), 0u);
    std::stable_sort(order.begin(), order.end(),
                     [&](uint32_t a, uint32_t b) { return bounds[a] > bounds[b]; });
    std::vector<uint32_t> want(order.begin(), order.begin() + (got - 1));
    want.push_back(n_pages - 1);
    std::sort(want.begin(), want.end());
    EXPECT_EQ(std::vector<uint32_t>(pages.begin(), pages.begin() + got), want) << "trial " << trial;
  }
}

// KeyPageBound is an upper bound of the f32 dot product KvDot computes for every key in the box,
// on random data at several scales, including keys at the box's corners (where it is reached
// in exact arithmetic, so only the rounding slack keeps it above).
TEST(PageAttentionTest, KeyPageBoundIsAnUpperBound) {
  std::mt19937 rng(11);
  for (uint32_t trial = 0; trial < 2000; ++trial) {
    const uint32_t n = 1 + rng() % 128;
    const float scale = std::ldexp(1.0f, static_cast<int>(rng() % 40) - 20);
    std::normal_distribution<float> nd(0.0f, scale);
    std::vector<float> q(n), lo(n), hi(n), k(n);
    for (uint32_t j = 0; j < n; ++j) {
      q[j] = nd(rng);
      const float a = nd(rng), b = nd(rng);
      lo[j] = std::min(a, b);
      hi[j] = std::max(a, b);
    }
    const float bound = KeyPageBound(q.data(), lo.data(), hi.data(), n);
    for (int key = 0; key < 8; ++key) {
      for (uint32_t j = 0; j < n; ++j) {
        if (key == 0) {
          k[j] = q[j] >= 0 ? hi[j] : lo[j];  // the maximising corner
        } else {
          std::uniform_real_distribution<float> u(lo[j], hi[j]);
          k[j] = lo[j] == hi[j] ? lo[j] : u(rng);
        }
      }
      const KvRows row{reinterpret_cast<const std::byte*>(k.data()), n * sizeof(float), 1,
                       layout::DType::kF32};
      ASSERT_GE(bound, KvDot(q.data(), row, 0, 0, n)) << "trial " << trial << " key " << key;
    }
  }
}

}  // namespace
}  // namespace flashlm::engine
