#include "storage/aligned_buffer.h"

#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <utility>
#include <vector>

namespace flashlm::storage {
namespace {

TEST(AlignedBufferTest, AlignedZeroedAndRoundedUp) {
  auto b = AlignedBuffer::Allocate(5000, 4096);
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->size_bytes(), 8192u);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(b->data()) % 4096, 0u);
  for (std::byte x : b->span()) ASSERT_EQ(x, std::byte{0});
  AlignedBuffer moved = std::move(b).value();
  EXPECT_FALSE(moved.empty());
  EXPECT_EQ(AlignedBuffer::Allocate(10, 3000).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(AlignedBuffer::Allocate(0, 4096).status().code(), StatusCode::kInvalidArgument);
}

// Whether the page at p is mapped in this process (mincore fails with ENOMEM where it is not).
bool Mapped(const std::byte* p) {
  const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  unsigned char v = 0;
  void* start = reinterpret_cast<void*>(reinterpret_cast<uintptr_t>(p) & ~(page - 1));
  if (mincore(start, page, &v) == 0) return true;
  EXPECT_EQ(errno, ENOMEM);
  return false;
}

// From 2 MiB up a buffer is a mapping of its own: zero though nothing wrote it, aligned as asked
// (to 2 MiB with huge pages), writable to its last byte, and unmapped when it is destroyed or
// assigned over (a move hands the mapping over without unmapping it).
TEST(AlignedBufferTest, LargeBuffersAreZeroedMappingsReleasedOnDestruction) {
  constexpr uint64_t kMiB = uint64_t{1} << 20;
  struct Case {
    uint64_t size, alignment;
    bool huge;
    uint64_t expect_alignment;
  };
  for (const Case& c :
       {Case{2 * kMiB, 64, true, 2 * kMiB}, Case{3 * kMiB + 5, 4096, true, 2 * kMiB},
        Case{5 * kMiB + 1, 64, false, 64}, Case{4 * kMiB, 1 * kMiB, false, kMiB},
        Case{4 * kMiB, 8 * kMiB, true, 8 * kMiB}}) {
    SCOPED_TRACE(testing::Message() << c.size << " bytes, alignment " << c.alignment
                                    << (c.huge ? ", huge pages" : ""));
    auto b = AlignedBuffer::Allocate(c.size, c.alignment, c.huge);
    ASSERT_TRUE(b.ok()) << b.status().ToString();
    EXPECT_EQ(b->size_bytes(), AlignUp(c.size, c.alignment));
    EXPECT_EQ(reinterpret_cast<uintptr_t>(b->data()) % c.expect_alignment, 0u);
    for (std::byte x : b->span()) ASSERT_EQ(x, std::byte{0});
    b->data()[b->size_bytes() - 1] = std::byte{7};
    std::byte* const first = b->data();
    std::byte* const last = b->data() + b->size_bytes() - 1;
    AlignedBuffer moved = std::move(b).value();
    EXPECT_EQ(moved.data(), first);
    EXPECT_EQ(last[0], std::byte{7});
    ASSERT_TRUE(Mapped(first));
    ASSERT_TRUE(Mapped(last));
    { AlignedBuffer gone = std::move(moved); }
    EXPECT_FALSE(Mapped(first));
    EXPECT_FALSE(Mapped(last));
  }
  // Assigning over a mapped buffer unmaps the old mapping.
  auto a = AlignedBuffer::Allocate(2 * kMiB, 4096, false);
  auto b = AlignedBuffer::Allocate(4096, 4096, false);
  ASSERT_TRUE(a.ok() && b.ok());
  std::byte* const old_data = a->data();
  *a = std::move(b).value();
  EXPECT_FALSE(Mapped(old_data));
  EXPECT_EQ(a->size_bytes(), 4096u);
}

// Pages of [p, p + n) resident in memory (mincore's bit 0; n a multiple of the page size).
uint64_t ResidentPages(const std::byte* p, uint64_t n) {
  const uint64_t page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  std::vector<unsigned char> v(n / page);
  EXPECT_EQ(mincore(const_cast<std::byte*>(p), n, v.data()), 0);
  uint64_t resident = 0;
  for (unsigned char x : v) resident += x & 1;
  return resident;
}

// Populate makes a fresh mapping's every page resident at once (a KV cache is populated so that
// its first prefill does not fault the pages in), leaving the bytes zero; heap buffers are left
// as they are.
TEST(AlignedBufferTest, PopulateMakesEveryPageResidentAndZero) {
  constexpr uint64_t kMiB = uint64_t{1} << 20;
  const uint64_t page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  for (bool huge : {false, true}) {
    SCOPED_TRACE(huge ? "huge pages" : "small pages");
    auto b = AlignedBuffer::Allocate(6 * kMiB, 4096, huge);
    ASSERT_TRUE(b.ok()) << b.status().ToString();
    const uint64_t pages = b->size_bytes() / page;
    EXPECT_EQ(ResidentPages(b->data(), b->size_bytes()), 0u) << "touched before Populate";
    ASSERT_TRUE(b->Populate().ok());
    EXPECT_EQ(ResidentPages(b->data(), b->size_bytes()), pages);
    for (std::byte x : b->span()) ASSERT_EQ(x, std::byte{0});
  }
  auto small = AlignedBuffer::Allocate(5000, 64);
  ASSERT_TRUE(small.ok());
  small->data()[1] = std::byte{3};
  EXPECT_TRUE(small->Populate().ok());
  EXPECT_EQ(small->data()[1], std::byte{3});
}

}  // namespace
}  // namespace flashlm::storage
