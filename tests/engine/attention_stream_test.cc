#include "engine/attention_stream.h"

#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "layout/llama_tensors.h"
#include "layout/repack.h"
#include "tests/layout/memory_checkpoint.h"
#include "tests/test_util.h"

namespace flashlm::engine {
namespace {

using layout::LayerTensor;
using layout::testing::MemoryCheckpoint;

struct Case {
  layout::DType dtype;
  uint64_t alignment_bytes;
  uint64_t extent_bytes_max;
  bool tensors_abut;  // every tensor's extents back to back in the store
  uint64_t extents_per_wq;
};

// Streamed layers (none pinned) come back as the stored matrices, whether their extents are used
// where they land or closed up; in order with read-ahead, and out of order.
TEST(AttentionStreamTest, StreamedLayersAreTheStoredMatrices) {
  const Case cases[] = {
      // f32 rows of 256 bytes: 15 rows fit 4000 bytes, 14 fill seven 512-byte units.
      {layout::DType::kF32, 512, 4000, true, 5},
      // q8_0 rows of 68 bytes: 128 rows make whole 512-byte units, only 14 fit: padded.
      {layout::DType::kQ8_0, 512, 1000, false, 5},
      // One extent per tensor.
      {layout::DType::kQ8_0, 4096, 4u << 20, true, 1},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(std::string(layout::DTypeName(c.dtype)) + " extents of at most " +
                 std::to_string(c.extent_bytes_max));
    ::flashlm::testing::ScratchDir dir;
    MemoryCheckpoint src = MemoryCheckpoint::Llama(64, 172, 3, 50, c.dtype);
    layout::RepackOptions o;
    o.alignment_bytes = c.alignment_bytes;
    o.dense_extent_bytes_max = c.extent_bytes_max;
    o.bundle_kind = layout::BundleKind::kGateSeparate;  // the gate is a dense matrix
    ASSERT_TRUE(layout::Repack(src, (dir / "store").string(), o).ok());
    for (bool pipeline : {true, false}) {
      auto r = layout::StoreReader::Open((dir / "store").string());
      ASSERT_TRUE(r.ok()) << r.status().ToString();
      layout::ExtentReaderLimits limits;
      limits.queue_depth = 256;
      limits.groups = 2;
      ASSERT_TRUE((*r)->extent_reader().SetLimits(limits).ok());
      auto measured = AttentionStream::Measure(**r, /*dense_gate=*/true);
      ASSERT_TRUE(measured.ok()) << measured.status().ToString();
      EXPECT_TRUE(measured->in_place);
      const std::vector<uint8_t> pinned(3, 0);
      auto s = AttentionStream::Open(**r, *measured, pinned, pipeline);
      ASSERT_TRUE(s.ok()) << s.status().ToString();
      auto wq = (*r)->DenseExtents(layout::LayerTensorName(0, LayerTensor::kAttnQ), 0, 64);
      ASSERT_TRUE(wq.ok());
      EXPECT_EQ(wq->size(), c.extents_per_wq);
      const LayerTensor roles[] = {LayerTensor::kAttnQ, LayerTensor::kAttnK, LayerTensor::kAttnV,
                                   LayerTensor::kAttnOutput, LayerTensor::kFfnGate};
      for (uint32_t l : {0u, 1u, 2u, 0u, 2u, 1u}) {
        EXPECT_EQ((*s)->closes_up(l), !c.tensors_abut) << "layer " << l;
        auto m = (*s)->Acquire(l);
        ASSERT_TRUE(m.ok()) << m.status().ToString();
        const MatrixView views[] = {m->wq, m->wk, m->wv, m->wo, m->gate};
        for (int t = 0; t < 5; ++t) {
          const layout::TensorInfo* info = (*r)->FindTensor(layout::LayerTensorName(l, roles[t]));
          ASSERT_NE(info, nullptr);
          std::vector<std::byte> want(info->size_bytes());
          ASSERT_TRUE((*r)->ReadTensor(*info, want).ok());
          ASSERT_EQ(views[t].bytes.size(), want.size());
          EXPECT_EQ(std::memcmp(views[t].bytes.data(), want.data(), want.size()), 0)
              << info->name;
        }
        ASSERT_TRUE((*s)->Release(l).ok());
      }
    }
  }
}

// The layer read ahead is verified in slices while the reader would otherwise wait (the idle
// work, driven here by hand): whatever part was hashed ahead, Acquire hands out the stored
// matrices of a clean store, and a flipped byte is Corruption naming the layer whether the idle
// work found it, or Acquire did in the rest of a part-hashed extent or in a later one.
TEST(AttentionStreamTest, LandedLayerIsVerifiedAheadInSlices) {
  // f32, dim 512: wq is one extent of 1 MiB, four slices.
  constexpr uint64_t kSlice = AttentionStream::kVerifySliceBytes;
  struct Flip {
    const char* what;
    LayerTensor tensor;  // whose first extent gets a flipped byte (kAttnQ with offset 0: none)
    uint64_t offset;
    uint32_t slices;  // VerifyAhead calls that hash before Acquire
  };
  const Flip flips[] = {
      {"clean, part of wq hashed ahead", LayerTensor::kAttnQ, 0, 3},
      {"clean, all hashed ahead", LayerTensor::kAttnQ, 0, 1000},
      {"wq, found ahead", LayerTensor::kAttnQ, kSlice / 2, 4},
      {"wq, in the part left to Acquire", LayerTensor::kAttnQ, 3 * kSlice + 100, 3},
      {"wk, after what was hashed ahead", LayerTensor::kAttnK, 100, 4},
  };
  for (const Flip& f : flips) {
    SCOPED_TRACE(f.what);
    ::flashlm::testing::ScratchDir dir;
    MemoryCheckpoint src = MemoryCheckpoint::Llama(512, 172, 2, 50, layout::DType::kF32);
    layout::RepackOptions o;
    o.alignment_bytes = 4096;
    o.bundle_kind = layout::BundleKind::kGateSeparate;
    const std::string store = (dir / "store").string();
    ASSERT_TRUE(layout::Repack(src, store, o).ok());
    const bool corrupt = f.offset != 0;
    if (corrupt) {
      auto r = layout::StoreReader::Open(store);
      ASSERT_TRUE(r.ok());
      const layout::TensorInfo* t = (*r)->FindTensor(layout::LayerTensorName(1, f.tensor));
      ASSERT_NE(t, nullptr);
      auto ex = (*r)->DenseExtents(t->name, 0, t->rows());
      ASSERT_TRUE(ex.ok());
      ASSERT_GT((*ex)[0].stored_bytes, f.offset);
      ::flashlm::testing::FlipByte((dir / "store" / "data-00000.bin").string(),
                                   (*ex)[0].offset_bytes + f.offset);
    }
    auto r = layout::StoreReader::Open(store);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    layout::ExtentReader& reader = (*r)->extent_reader();
    layout::ExtentReaderLimits limits;
    limits.queue_depth = 64;
    limits.groups = 1;
    ASSERT_TRUE(reader.SetLimits(limits).ok());
    auto measured = AttentionStream::Measure(**r, /*dense_gate=*/true);
    ASSERT_TRUE(measured.ok()) << measured.status().ToString();
    auto s = AttentionStream::Open(**r, *measured, std::vector<uint8_t>(2, 0), /*pipeline=*/true);
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    ASSERT_TRUE((*s)->Acquire(0).ok());
    EXPECT_FALSE((*s)->VerifyAhead());   // nothing read ahead yet
    ASSERT_TRUE((*s)->Release(0).ok());  // reads layer 1 ahead
    // Poll until layer 1 has landed: the first slice is hashed then.
    int polls = 0;
    while (!(*s)->VerifyAhead()) {
      ASSERT_TRUE(reader.Poll().ok());
      ASSERT_LT(++polls, 10000000) << "layer 1's reads never landed";
    }
    for (uint32_t k = 1; k < f.slices && (*s)->VerifyAhead(); ++k) {
    }
    auto m = (*s)->Acquire(1);
    if (!corrupt) {
      ASSERT_TRUE(m.ok()) << m.status().ToString();
      const layout::TensorInfo* info =
          (*r)->FindTensor(layout::LayerTensorName(1, LayerTensor::kAttnQ));
      std::vector<std::byte> want(info->size_bytes());
      ASSERT_TRUE((*r)->ReadTensor(*info, want).ok());
      ASSERT_EQ(m->wq.bytes.size(), want.size());
      EXPECT_EQ(std::memcmp(m->wq.bytes.data(), want.data(), want.size()), 0);
      EXPECT_FALSE((*s)->VerifyAhead());  // nothing left to hash
      continue;
    }
    ASSERT_FALSE(m.ok());
    EXPECT_EQ(m.status().code(), StatusCode::kCorruption) << m.status().ToString();
    EXPECT_NE(m.status().message().find("attention of layer 1"), std::string::npos)
        << m.status().ToString();
    EXPECT_NE(m.status().message().find("checksum mismatch"), std::string::npos)
        << m.status().ToString();
  }
}

}  // namespace
}  // namespace flashlm::engine
