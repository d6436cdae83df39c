#include "engine/kv_cache.h"

#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <vector>

#include "engine/kernels.h"

namespace flashlm::engine {
namespace {

layout::ModelConfig Config() {
  layout::ModelConfig c;
  c.n_layers = 3;
  c.n_kv_heads = 2;
  c.head_dim = 4;
  return c;
}

// Rows come back where they were written, per (layer, sequence, position); sequences and layers
// do not overlap; runs of keys and values are strided views.
TEST(FlatKvCacheTest, RowsByLayerSequenceAndPosition) {
  auto kv = FlatKvCache::Create(Config(), 10, 2);
  ASSERT_TRUE(kv.ok());
  FlatKvCache& c = **kv;
  EXPECT_EQ(c.kv_dim(), 8u);
  EXPECT_EQ(c.resident_bytes(), 2u * 2 * 3 * 10 * 8 * sizeof(float));
  EXPECT_LE(c.resident_bytes(), FlatKvCache::BytesNeeded(Config(), 10, 2));
  auto row = [](uint32_t layer, uint32_t seq, uint32_t pos, float kind) {
    std::vector<float> v(8);
    for (uint32_t i = 0; i < 8; ++i) v[i] = kind * 1000 + layer * 100 + seq * 10 + pos + i * 0.01f;
    return v;
  };
  for (uint32_t l = 0; l < 3; ++l) {
    for (uint32_t s = 0; s < 2; ++s) {
      for (uint32_t p = 0; p < 10; ++p) {
        ASSERT_TRUE(c.Write(l, s, p, row(l, s, p, 1), row(l, s, p, 2)).ok());
      }
    }
  }
  for (uint32_t l = 0; l < 3; ++l) {
    for (uint32_t s = 0; s < 2; ++s) {
      const KvRows k = c.Keys(l, s, 3, 7), v = c.Values(l, s, 3, 7);
      ASSERT_GE(k.count, 1u);
      ASSERT_LE(k.count, 7u);
      for (uint32_t i = 0; i < k.count; ++i) {
        const std::vector<float> wk = row(l, s, 3 + i, 1), wv = row(l, s, 3 + i, 2);
        const float* kr = reinterpret_cast<const float*>(k.data + i * k.stride_bytes);
        const float* vr = reinterpret_cast<const float*>(v.data + i * v.stride_bytes);
        EXPECT_EQ(std::vector<float>(kr, kr + 8), wk);
        EXPECT_EQ(std::vector<float>(vr, vr + 8), wv);
      }
    }
  }
  EXPECT_EQ(c.length(1), 0u);
  c.SetLength(1, 6);
  EXPECT_EQ(c.length(1), 6u);
  EXPECT_EQ(c.length(0), 0u);
  // Out of range: refused, nothing written.
  std::vector<float> r8(8), r7(7);
  EXPECT_EQ(c.Write(3, 0, 0, r8, r8).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(c.Write(0, 2, 0, r8, r8).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(c.Write(0, 0, 10, r8, r8).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(c.Write(0, 0, 0, r7, r8).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(FlatKvCache::Create(Config(), 0, 1).status().code(), StatusCode::kInvalidArgument);
}

// KvDotRun / KvAxpyRun over a run of rows equal KvDot / KvAxpy row by row, bit for bit, for every
// dtype a cache stores (f32 and f16 take the SIMD run kernels, q8_0 the row path), with a head
// offset into the rows; and f16 rows read as the f32 values they hold (KvDot = DotF32 on them).
TEST(KvRowsTest, RunsEqualRowByRow) {
  std::mt19937 rng(5);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  const uint32_t kv_dim = 192, hd = 64, offset = 64, count = 37;
  for (layout::DType dt : {layout::DType::kF32, layout::DType::kF16, layout::DType::kQ8_0}) {
    const uint64_t rb = layout::RowBytes(dt, kv_dim);
    std::vector<std::byte> bytes(count * rb);
    for (uint32_t i = 0; i < count; ++i) {
      std::vector<float> row(kv_dim);
      for (float& v : row) v = nd(rng);
      ASSERT_TRUE(layout::QuantizeRow(dt, row, ByteSpan(bytes.data() + i * rb, rb)).ok());
    }
    const KvRows rows{bytes.data(), rb, count, dt};
    std::vector<float> q(hd), a(count);
    for (float& v : q) v = nd(rng);
    for (float& v : a) v = nd(rng);
    std::vector<float> scores(count), y(hd, 0.5f), want_y(hd, 0.5f);
    KvDotRun(q.data(), rows, offset, hd, 0.125f, scores.data());
    KvAxpyRun(a.data(), rows, offset, y.data(), hd);
    for (uint32_t i = 0; i < count; ++i) {
      const float want = KvDot(q.data(), rows, i, offset, hd) * 0.125f;
      ASSERT_EQ(std::memcmp(&scores[i], &want, sizeof(float)), 0) << DTypeName(dt) << " row " << i;
      KvAxpy(a[i], rows, i, offset, want_y.data(), hd);
      if (dt == layout::DType::kF16) {
        std::vector<float> row(kv_dim);
        ASSERT_TRUE(
            layout::DequantizeRow(dt, ConstByteSpan(bytes.data() + i * rb, rb), row).ok());
        EXPECT_EQ(KvDot(q.data(), rows, i, offset, hd), DotF32(q.data(), row.data() + offset, hd));
      }
    }
    for (uint32_t j = 0; j < hd; ++j) {
      ASSERT_EQ(std::memcmp(&y[j], &want_y[j], sizeof(float)), 0) << DTypeName(dt) << " " << j;
    }
  }
}

}  // namespace
}  // namespace flashlm::engine
