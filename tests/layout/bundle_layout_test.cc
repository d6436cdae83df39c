#include "layout/bundle_layout.h"

#include <gtest/gtest.h>

#include "layout/vcache_layout.h"

namespace flashlm::layout {
namespace {

TEST(BundleGeometryTest, SizesAndPadding) {
  BundleGeometry g = BundleGeometry::Make(BundleKind::kGateUpDown, DType::kQ8_0, 4096, 4096);
  EXPECT_EQ(g.part_bytes, 128u * 34);
  EXPECT_EQ(g.bundle_bytes, 3u * 128 * 34);
  EXPECT_EQ(g.stride_bytes, 16384u);
  EXPECT_EQ(g.up_offset(), g.part_bytes);
  EXPECT_EQ(g.down_offset(), 2 * g.part_bytes);
  EXPECT_NEAR(g.padding_ratio(), (16384.0 - 13056.0) / 16384.0, 1e-12);
  BundleGeometry s = BundleGeometry::Make(BundleKind::kGateSeparate, DType::kF16, 172, 512);
  EXPECT_FALSE(s.has_gate());
  EXPECT_EQ(s.up_offset(), 0u);
  EXPECT_EQ(s.down_offset(), 344u);
  EXPECT_EQ(s.stride_bytes, 1024u);
}

TEST(BundleGeometryTest, HotFirstIsStableDescending) {
  std::vector<float> f = {0.1f, 0.9f, 0.5f, 0.9f, 0.0f};
  EXPECT_EQ(HotFirstPermutation(f), (std::vector<uint32_t>{1, 3, 2, 0, 4}));
}

TEST(VCacheLayoutTest, PagesAreTokenMajorAndAligned) {
  VCacheLayout v;
  v.n_layers = 2;
  v.n_kv_heads = 4;
  v.head_dim = 16;
  v.tokens_per_page = 16;
  v.max_tokens = 100;
  v.max_sequences = 3;
  v.dtype = DType::kF16;
  v.alignment_bytes = 4096;
  ASSERT_TRUE(v.valid());
  EXPECT_EQ(v.row_bytes(), 128u);  // 4 heads x 16 values x 2 bytes
  EXPECT_EQ(v.page_bytes(), 2048u);
  EXPECT_EQ(v.page_stride_bytes(), 4096u);
  EXPECT_EQ(v.pages_per_seq(), 7u);
  EXPECT_EQ(v.pages_per_kind(), 3u * 2 * 7);
  EXPECT_EQ(v.FileBytes(1), 3u * 2 * 7 * 4096);
  EXPECT_EQ(v.FileBytes(2), 2u * 3 * 2 * 7 * 4096);
  EXPECT_EQ(v.PageOffset(KvKind::kValue, 2, 1, 3), ((2u * 2 + 1) * 7 + 3) * 4096u);
  EXPECT_EQ(v.PageOffset(KvKind::kKey, 0, 0, 0), v.FileBytes(1));
  EXPECT_EQ(v.RowOffset(KvKind::kValue, 1, 1, 16 * 3 + 5),
            v.PageOffset(KvKind::kValue, 1, 1, 3) + 5 * 128u);
  v.dtype = DType::kQ8_0;  // blocks of 32 values (34 bytes) across the row's heads
  EXPECT_EQ(v.row_bytes(), 2u * 34);
  VCacheLayout bad = v;
  bad.alignment_bytes = 3000;
  EXPECT_FALSE(bad.valid());
  bad = v;
  bad.max_sequences = 0;
  EXPECT_FALSE(bad.valid());
}

}  // namespace
}  // namespace flashlm::layout
