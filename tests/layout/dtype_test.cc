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

// Packs q4_K super-blocks from their fields the way GGML lays them out (block_q4_K), so the
// test states the format independently of the decoder.
struct Q4KFields {
  float d, dmin;
  uint8_t sc[8], m[8];  // 6-bit
  uint8_t q[256];       // 4-bit
};
std::vector<std::byte> PackQ4K(const Q4KFields& f) {
  std::vector<std::byte> b(144, std::byte{0});
  auto put16 = [&](size_t at, uint16_t v) { std::memcpy(b.data() + at, &v, 2); };
  put16(0, F32ToF16(f.d));
  put16(2, F32ToF16(f.dmin));
  uint8_t s[12] = {};
  for (int j = 0; j < 8; ++j) {
    if (j < 4) {
      s[j] |= f.sc[j] & 63;
      s[j + 4] |= f.m[j] & 63;
    } else {
      s[j + 4] |= (f.sc[j] & 0x0F) | ((f.m[j] & 0x0F) << 4);
      s[j - 4] |= (f.sc[j] >> 4) << 6;
      s[j] |= (f.m[j] >> 4) << 6;
    }
  }
  for (int j = 0; j < 12; ++j) b[4 + j] = std::byte{s[j]};
  for (int v = 0; v < 256; ++v) {
    const int sub = v / 32, pair = sub / 2, l = v % 32;
    uint8_t& byte = reinterpret_cast<uint8_t&>(b[16 + pair * 32 + l]);
    byte |= sub % 2 == 0 ? f.q[v] : f.q[v] << 4;
  }
  return b;
}

TEST(DTypeTest, Q4KDequantisesGgmlLayout) {
  std::mt19937 rng(7);
  for (int trial = 0; trial < 20; ++trial) {
    Q4KFields f;
    f.d = F16ToF32(F32ToF16(std::uniform_real_distribution<float>(0.001f, 0.1f)(rng)));
    f.dmin = F16ToF32(F32ToF16(std::uniform_real_distribution<float>(0.0f, 0.1f)(rng)));
    for (int j = 0; j < 8; ++j) {
      f.sc[j] = rng() % 64;
      f.m[j] = rng() % 64;
    }
    for (int v = 0; v < 256; ++v) f.q[v] = rng() % 16;
    const auto bytes = PackQ4K(f);
    ASSERT_EQ(bytes.size(), RowBytes(DType::kQ4_K, 256));
    std::vector<float> out(256);
    ASSERT_TRUE(DequantizeRow(DType::kQ4_K, bytes, out).ok());
    for (int v = 0; v < 256; ++v) {
      const int sub = v / 32;
      const float want = f.d * f.sc[sub] * f.q[v] - f.dmin * f.m[sub];
      ASSERT_FLOAT_EQ(out[v], want) << "trial " << trial << " value " << v;
    }
  }
}

TEST(DTypeTest, Q6KDequantisesGgmlLayout) {
  std::mt19937 rng(9);
  for (int trial = 0; trial < 20; ++trial) {
    const float d = F16ToF32(F32ToF16(std::uniform_real_distribution<float>(0.001f, 0.1f)(rng)));
    int8_t sc[16];
    uint8_t q[256];  // 6-bit
    for (int8_t& s : sc) s = static_cast<int8_t>(static_cast<int>(rng() % 256) - 128);
    for (uint8_t& x : q) x = rng() % 64;
    // block_q6_K: ql[128], qh[64], scales[16], d. Value v: half n = v / 128, quarter k of it,
    // lane l: low 4 bits in ql[n*64 + l + (k%2)*32] (low nibble for k < 2), high 2 bits in
    // qh[n*32 + l] at bit 2k, scale scales[n*8 + l/16 + 2k].
    std::vector<std::byte> b(210, std::byte{0});
    auto* ql = reinterpret_cast<uint8_t*>(b.data());
    auto* qh = ql + 128;
    for (int v = 0; v < 256; ++v) {
      const int n = v / 128, k = (v % 128) / 32, l = v % 32;
      ql[n * 64 + l + (k % 2) * 32] |= k < 2 ? (q[v] & 0xF) : (q[v] & 0xF) << 4;
      qh[n * 32 + l] |= (q[v] >> 4) << (2 * k);
    }
    std::memcpy(b.data() + 192, sc, 16);
    const uint16_t dh = F32ToF16(d);
    std::memcpy(b.data() + 208, &dh, 2);
    ASSERT_EQ(b.size(), RowBytes(DType::kQ6_K, 256));
    std::vector<float> out(256);
    ASSERT_TRUE(DequantizeRow(DType::kQ6_K, b, out).ok());
    for (int v = 0; v < 256; ++v) {
      const int n = v / 128, k = (v % 128) / 32, l = v % 32;
      const float want = d * sc[n * 8 + l / 16 + 2 * k] * (static_cast<int>(q[v]) - 32);
      ASSERT_FLOAT_EQ(out[v], want) << "trial " << trial << " value " << v;
    }
  }
}

TEST(DTypeTest, KQuantsHandleShortRowsAndRefuseShortSources) {
  Q4KFields f{};
  f.d = 1.0f;
  for (int j = 0; j < 8; ++j) f.sc[j] = 1;
  for (int v = 0; v < 256; ++v) f.q[v] = v % 16;
  const auto bytes = PackQ4K(f);
  std::vector<float> out(100);  // a row shorter than one super-block reads its head
  ASSERT_TRUE(DequantizeRow(DType::kQ4_K, bytes, out).ok());
  for (int v = 0; v < 100; ++v) EXPECT_EQ(out[v], static_cast<float>(v % 16));
  std::vector<float> two(512);
  EXPECT_EQ(DequantizeRow(DType::kQ4_K, bytes, two).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(DequantizeRow(DType::kQ6_K, ConstByteSpan(bytes).first(100), out).code(),
            StatusCode::kInvalidArgument);
  std::vector<std::byte> dst(100);  // shorter than one super-block's 144 bytes
  EXPECT_EQ(QuantizeRow(DType::kQ4_K, out, dst).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(QuantizeRow(DType::kQ6_K, out, dst).code(), StatusCode::kInvalidArgument);
}

// QuantizeRow's q4_K / q6_K round trip: every value within the error bound the format allows for
// its sub-block (q4_K: one step of the sub-block's range / 15 plus the 6-bit rounding of the
// scale and min; q6_K: one step of the sub-block's amax / 32 plus the int8 rounding of the
// scale), for whole super-blocks, a row with a short tail (the padding must not leak), zero rows
// and rows of one sign.
TEST(DTypeTest, KQuantsRoundTripWithinTheirSteps) {
  std::mt19937 rng(11);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  for (DType t : {DType::kQ4_K, DType::kQ6_K}) {
    const uint32_t sub = t == DType::kQ4_K ? 32 : 16;
    for (uint64_t n : {256u, 300u, 768u, 64u}) {
      for (int kind = 0; kind < 3; ++kind) {  // normal, all zero, all positive
        std::vector<float> src(n), back(n);
        for (float& v : src) v = kind == 1 ? 0.0f : kind == 2 ? std::fabs(dist(rng)) : dist(rng);
        std::vector<std::byte> q(RowBytes(t, n));
        ASSERT_TRUE(QuantizeRow(t, src, q).ok());
        ASSERT_TRUE(DequantizeRow(t, q, back).ok());
        float row_amax = 0;
        for (float v : src) row_amax = std::max(row_amax, std::fabs(v));
        for (uint64_t b = 0; b < n; b += sub) {
          float lo = 0, hi = 0;
          for (uint64_t j = b; j < std::min<uint64_t>(n, b + sub); ++j) {
            lo = std::min(lo, src[j]);
            hi = std::max(hi, src[j]);
          }
          // The super-block's scale quantisation adds up to ~1/63 (q4_K) or 1/127 (q6_K) of the
          // largest sub-block range per step, relative to the whole row's magnitude.
          const float bound = t == DType::kQ4_K ? (hi - lo) / 15.0f + row_amax * 0.05f
                                                : std::max(hi, -lo) / 32.0f + row_amax * 0.02f;
          for (uint64_t j = b; j < std::min<uint64_t>(n, b + sub); ++j) {
            ASSERT_NEAR(back[j], src[j], bound + 1e-6f)
                << DTypeName(t) << " n=" << n << " kind=" << kind << " j=" << j;
          }
        }
      }
    }
  }
}

}  // namespace
}  // namespace flashlm::layout
