#include "storage/zstd_codec.h"

#include <gtest/gtest.h>

#include <vector>

namespace flashlm::storage {
namespace {

TEST(ZstdCodecTest, RoundTrip) {
  std::vector<std::byte> raw(50000);
  for (size_t i = 0; i < raw.size(); ++i) raw[i] = std::byte(i % 13);
  std::vector<std::byte> packed(ZstdCompressBound(raw.size()));
  Result<size_t> n = ZstdCompress(raw, packed, 3);
  ASSERT_TRUE(n.ok()) << n.status().ToString();
  EXPECT_LT(*n, raw.size() / 10);
  std::vector<std::byte> back(raw.size());
  ASSERT_TRUE(ZstdDecompress(ConstByteSpan(packed).first(*n), back).ok());
  EXPECT_EQ(back, raw);
}

TEST(ZstdCodecTest, WrongSizeAndGarbageAreCorruption) {
  std::vector<std::byte> raw(1000, std::byte{5});
  std::vector<std::byte> packed(ZstdCompressBound(raw.size()));
  Result<size_t> n = ZstdCompress(raw, packed, 1);
  ASSERT_TRUE(n.ok());
  std::vector<std::byte> small(999);
  EXPECT_EQ(ZstdDecompress(ConstByteSpan(packed).first(*n), small).code(), StatusCode::kCorruption);
  std::vector<std::byte> garbage(64, std::byte{0x42});
  std::vector<std::byte> out(1000);
  EXPECT_EQ(ZstdDecompress(garbage, out).code(), StatusCode::kCorruption);
}

TEST(ZstdCodecTest, DestinationTooSmall) {
  std::vector<std::byte> raw(4096);
  for (size_t i = 0; i < raw.size(); ++i) raw[i] = std::byte((i * 2654435761u) >> 13);
  std::vector<std::byte> tiny(8);
  EXPECT_EQ(ZstdCompress(raw, tiny, 3).status().code(), StatusCode::kResourceExhausted);
}

}  // namespace
}  // namespace flashlm::storage
