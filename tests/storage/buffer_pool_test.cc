#include "storage/buffer_pool.h"

#include <gtest/gtest.h>

#include <set>

namespace flashlm::storage {
namespace {

TEST(BufferPoolTest, AcquireReleaseAndIndexOf) {
  auto pool = BufferPool::Create(3, 5000, 4096);
  ASSERT_TRUE(pool.ok());
  EXPECT_EQ(pool->buffer_bytes(), 8192u);
  EXPECT_EQ(pool->buffer_count(), 3u);
  std::set<uint32_t> got;
  for (int i = 0; i < 3; ++i) {
    auto b = pool->Acquire();
    ASSERT_TRUE(b.has_value());
    got.insert(*b);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(pool->buffer(*b).data()) % 4096, 0u);
  }
  EXPECT_EQ(got.size(), 3u);
  EXPECT_FALSE(pool->Acquire().has_value());
  EXPECT_EQ(pool->free_count(), 0u);
  pool->Release(1);
  EXPECT_EQ(pool->Acquire(), std::optional<uint32_t>(1));

  ByteSpan b1 = pool->buffer(1);
  EXPECT_EQ(pool->IndexOf(b1), 1);
  EXPECT_EQ(pool->IndexOf(b1.subspan(4096, 4096)), 1);
  // Straddling two buffers, or outside the pool: not a registered buffer.
  EXPECT_EQ(pool->IndexOf(pool->memory().subspan(4096, 8192)), -1);
  std::byte outside[16];
  EXPECT_EQ(pool->IndexOf(outside), -1);
}

TEST(BufferPoolTest, MultiPagePoolsStartOnAHugePageBoundary) {
  auto pool = BufferPool::Create(2, 64 * 1024, 4096);
  ASSERT_TRUE(pool.ok());
  EXPECT_EQ(reinterpret_cast<uintptr_t>(pool->memory().data()) % (2 << 20), 0u);
  EXPECT_EQ(pool->memory().size() % (2 << 20), 0u);
  EXPECT_EQ(pool->buffer_bytes(), 64u * 1024);  // the buffers themselves keep their size
  auto big = AlignedBuffer::Allocate(4 << 20, 4096);
  ASSERT_TRUE(big.ok());
  EXPECT_EQ(reinterpret_cast<uintptr_t>(big->data()) % (2 << 20), 0u);
}

TEST(BufferPoolTest, BadShapesAreRejected) {
  EXPECT_EQ(BufferPool::Create(0, 4096).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(BufferPool::Create(2, 0).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(BufferPool::Create(2, 4096, 1000).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(BufferPool::Create(1u << 30, 1u << 30).status().code(), StatusCode::kInvalidArgument);
}

TEST(BufferPoolDeathTest, DoubleReleaseIsABug) {
  auto pool = BufferPool::Create(2, 4096);
  ASSERT_TRUE(pool.ok());
  EXPECT_DEATH(pool->Release(0), "CHECK");
}

}  // namespace
}  // namespace flashlm::storage
