#include "engine/sampler.h"

#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <vector>

namespace flashlm::engine {
namespace {

std::unique_ptr<Sampler> Make(uint32_t n, SamplerOptions o) {
  auto s = Sampler::Create(n, o);
  EXPECT_TRUE(s.ok()) << s.status().ToString();
  return std::move(s).value();
}

TEST(SamplerTest, RejectsInvalidValues) {
  SamplerOptions o;
  o.temperature = -1;
  EXPECT_FALSE(Sampler::Create(10, o).ok());
  o = {};
  o.top_p = 0;
  EXPECT_FALSE(Sampler::Create(10, o).ok());
  o = {};
  o.top_p = 1.5f;
  EXPECT_FALSE(Sampler::Create(10, o).ok());
  o = {};
  o.min_p = 1.0f;
  EXPECT_FALSE(Sampler::Create(10, o).ok());
  o = {};
  o.repeat_penalty = 0;
  EXPECT_FALSE(Sampler::Create(10, o).ok());
  EXPECT_FALSE(Sampler::Create(0, SamplerOptions{}).ok());
}

TEST(SamplerTest, GreedyPicksArgmaxLowestIdOnTies) {
  SamplerOptions o;
  o.temperature = 0;
  auto s = Make(5, o);
  std::vector<float> l = {0.1f, 3.0f, -1.0f, 3.0f, 2.0f};
  EXPECT_EQ(s->Sample(l, {}), 1);
}

TEST(SamplerTest, SameSeedSameSequenceDifferentSeedDiffers) {
  std::vector<float> l(50);
  for (int i = 0; i < 50; ++i) l[i] = std::sin(i * 0.7f);
  SamplerOptions o;
  o.temperature = 1.0f;
  o.top_k = 0;
  o.top_p = 1.0f;
  o.seed = 42;
  auto a = Make(50, o), b = Make(50, o);
  o.seed = 43;
  auto c = Make(50, o);
  int differ = 0;
  for (int i = 0; i < 200; ++i) {
    const int32_t x = a->Sample(l, {}), y = b->Sample(l, {}), z = c->Sample(l, {});
    EXPECT_EQ(x, y);
    differ += x != z;
  }
  EXPECT_GT(differ, 50);
}

TEST(SamplerTest, TopKRestrictsSupport) {
  std::vector<float> l = {5, 4, 3, 2, 1, 0};
  SamplerOptions o;
  o.temperature = 5.0f;  // flat, so without top-k every token would show up
  o.top_k = 2;
  o.top_p = 1.0f;
  auto s = Make(6, o);
  std::map<int32_t, int> seen;
  for (int i = 0; i < 500; ++i) ++seen[s->Sample(l, {})];
  EXPECT_EQ(seen.size(), 2u);
  EXPECT_GT(seen[0], 0);
  EXPECT_GT(seen[1], 0);
}

TEST(SamplerTest, TopPKeepsSmallestPrefixReachingP) {
  // probabilities at T=1: log-odds chosen as 0.5, 0.3, 0.2
  std::vector<float> l = {std::log(0.5f), std::log(0.3f), std::log(0.2f)};
  SamplerOptions o;
  o.temperature = 1.0f;
  o.top_k = 0;
  o.top_p = 0.75f;  // 0.5 < 0.75 <= 0.8: tokens 0 and 1
  auto s = Make(3, o);
  std::map<int32_t, int> seen;
  for (int i = 0; i < 2000; ++i) ++seen[s->Sample(l, {})];
  EXPECT_EQ(seen.count(2), 0u);
  // token 0 has 0.5/0.8 = 62.5% of the kept mass
  EXPECT_NEAR(seen[0] / 2000.0, 0.625, 0.05);
}

TEST(SamplerTest, MinPDropsUnlikelyTokens) {
  std::vector<float> l = {std::log(0.6f), std::log(0.35f), std::log(0.05f)};
  SamplerOptions o;
  o.temperature = 1.0f;
  o.top_k = 0;
  o.top_p = 1.0f;
  o.min_p = 0.1f;  // floor 0.06: token 2 goes
  auto s = Make(3, o);
  for (int i = 0; i < 1000; ++i) EXPECT_NE(s->Sample(l, {}), 2);
}

TEST(SamplerTest, RepetitionPenaltyChangesGreedyChoice) {
  std::vector<float> l = {2.0f, 1.5f, -1.0f};
  SamplerOptions o;
  o.temperature = 0;
  o.repeat_penalty = 1.5f;  // 2.0 / 1.5 = 1.33 < 1.5
  auto s = Make(3, o);
  std::vector<int32_t> history = {0, 0, 0};
  EXPECT_EQ(s->Sample(l, history), 1);
  EXPECT_EQ(s->Sample(l, {}), 0);
  o.repeat_last_n = 1;
  auto s2 = Make(3, o);
  std::vector<int32_t> old = {0, 2};  // token 0 is outside the window
  EXPECT_EQ(s2->Sample(l, old), 0);
}

TEST(SamplerTest, UniformIsInRangeAndSpread) {
  SamplerOptions o;
  o.seed = 7;
  auto s = Make(3, o);
  double sum = 0;
  for (int i = 0; i < 10000; ++i) {
    const float u = s->NextUniform();
    ASSERT_GE(u, 0.0f);
    ASSERT_LT(u, 1.0f);
    sum += u;
  }
  EXPECT_NEAR(sum / 10000, 0.5, 0.02);
}

}  // namespace
}  // namespace flashlm::engine
