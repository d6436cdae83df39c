#include "layout/dtype.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

namespace flashlm::layout {
namespace {

TEST(DTypeTest, F16RoundTripsEveryValue) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = F16ToF32(static_cast<uint16_t>(h));
    if (std::isnan(f)) continue;
    EXPECT_EQ(F32ToF16(f), h) << "f16 bits " << h;
  }
}

TEST(DTypeTest, F16RoundsToNearestEven) {
  EXPECT_EQ(F32ToF16(1.0f), 0x3C00);
  EXPECT_EQ(F32ToF16(65504.0f), 0x7BFF);
  EXPECT_EQ(F32ToF16(1e6f), 0x7C00);
  // 1 + 2^-11 is halfway between 1 and 1 + 2^-10: ties to even (1.0).
  EXPECT_EQ(F32ToF16(1.0f + std::ldexp(1.0f, -11)), 0x3C00);
  EXPECT_EQ(F32ToF16(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3C02);
  EXPECT_EQ(F32ToF16(std::ldexp(1.0f, -24)), 0x0001);
  EXPECT_EQ(F32ToF16(std::ldexp(1.0f, -26)), 0x0000);
}

TEST(DTypeTest, RowBytesRoundsBlocksUp) {
  EXPECT_EQ(RowBytes(DType::kF32, 172), 688u);
  EXPECT_EQ(RowBytes(DType::kQ8_0, 172), 6u * 34u);
  EXPECT_EQ(RowBytes(DType::kQ4_0, 64), 2u * 18u);
}

class QuantTest : public ::testing::TestWithParam<DType> {};

// Quantised rows reconstruct within half a quantisation step (q8_0) of the block's scale, also for
// a row (172 values, stories260K's ffn_down) that does not divide into 32-value blocks. q4_0 maps
// the signed extreme to -8, so the opposite extreme clips at +7: its bound is one whole step.
TEST_P(QuantTest, RoundTripWithinHalfStep) {
  const DType t = GetParam();
  std::mt19937 rng(7);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  for (uint64_t n : {32u, 172u, 4096u}) {
    std::vector<float> src(n), back(n);
    for (float& v : src) v = dist(rng);
    std::vector<std::byte> q(RowBytes(t, n));
    ASSERT_TRUE(QuantizeRow(t, src, q).ok());
    ASSERT_TRUE(DequantizeRow(t, q, back).ok());
    for (uint64_t b = 0; b * kQBlockValues < n; ++b) {
      float amax = 0;
      for (uint64_t j = b * 32; j < std::min<uint64_t>(n, b * 32 + 32); ++j)
        amax = std::max(amax, std::fabs(src[j]));
      const float bound = t == DType::kQ8_0 ? amax / 127.0f * 0.5f : amax / 8.0f;
      for (uint64_t j = b * 32; j < std::min<uint64_t>(n, b * 32 + 32); ++j) {
        EXPECT_NEAR(back[j], src[j], bound + amax * 1e-3f) << "n=" << n << " j=" << j;
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Blocks, QuantTest, ::testing::Values(DType::kQ8_0, DType::kQ4_0));

TEST(DTypeTest, ShortBuffersAreRejected) {
  std::vector<float> out(64);
  std::vector<std::byte> src(10);
  EXPECT_EQ(DequantizeRow(DType::kF32, src, out).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseDType("q3_x").status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(*ParseDType("q8_0"), DType::kQ8_0);
}

}  // namespace
}  // namespace flashlm::layout
