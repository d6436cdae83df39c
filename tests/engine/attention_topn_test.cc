#include "engine/attention_topn.h"

#include <gtest/gtest.h>

#include <vector>

namespace flashlm::engine {
namespace {

TEST(TopNSpecTest, ParsesCountsSharesAndAll) {
  EXPECT_TRUE(TopNSpec::Parse("all")->all());
  EXPECT_EQ(TopNSpec::Parse("64")->count, 64u);
  EXPECT_DOUBLE_EQ(TopNSpec::Parse("5%")->percent, 5.0);
  EXPECT_DOUBLE_EQ(TopNSpec::Parse("0.5%")->percent, 0.5);
  EXPECT_EQ(TopNSpec::Parse("5%")->ToString(), "5%");
  for (const char* bad : {"", "0", "-3", "0%", "101%", "5x", "%", "abc", "99999999999999", "1e3"}) {
    EXPECT_EQ(TopNSpec::Parse(bad).status().code(), StatusCode::kInvalidArgument) << bad;
  }
}

// The N highest probabilities, increasing positions, ties to the lower position; N from a count
// or a share of the context, clamped to [1, len].
TEST(TopNAttentionTest, KeepsTheHighestProbabilities) {
  const std::vector<float> probs = {0.1f, 0.3f, 0.05f, 0.3f, 0.2f, 0.05f};
  std::vector<uint32_t> sel(probs.size());
  TopNAttention top3(*TopNSpec::Parse("3"));
  ASSERT_EQ(top3.Select(0, 0, probs, sel), 3u);
  EXPECT_EQ(std::vector<uint32_t>(sel.begin(), sel.begin() + 3), (std::vector<uint32_t>{1, 3, 4}));
  TopNAttention top1(*TopNSpec::Parse("1"));
  ASSERT_EQ(top1.Select(0, 0, probs, sel), 1u);
  EXPECT_EQ(sel[0], 1u);  // tie between 1 and 3: the lower position
  TopNAttention many(*TopNSpec::Parse("100"));
  EXPECT_EQ(many.Select(0, 0, probs, sel), 6u);
  TopNAttention half(*TopNSpec::Parse("50%"));
  EXPECT_EQ(half.Keep(6), 3u);
  EXPECT_EQ(half.Keep(7), 4u);  // rounded up
  TopNAttention tiny(*TopNSpec::Parse("1%"));
  EXPECT_EQ(tiny.Keep(10), 1u);  // at least one
  TopNAttention all(TopNSpec{});
  EXPECT_EQ(all.Keep(10), 10u);
}

}  // namespace
}  // namespace flashlm::engine
