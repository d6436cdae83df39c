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

}  // namespace
}  // namespace flashlm::engine
