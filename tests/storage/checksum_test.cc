#include "storage/checksum.h"

#include <gtest/gtest.h>

#include <fstream>
#include <string>
#include <vector>

#include "tests/test_util.h"

namespace flashlm::storage {
namespace {

TEST(ChecksumTest, KnownValueAndSensitivity) {
  // XXH3-64 of the empty input with seed 0 (a published test vector).
  EXPECT_EQ(Checksum64({}), 0x2D06800538D394C2ull);
  std::vector<std::byte> data(4096);
  for (size_t i = 0; i < data.size(); ++i) data[i] = std::byte(i * 7);
  const uint64_t base = Checksum64(data);
  for (size_t i : {size_t{0}, size_t{1000}, size_t{4095}}) {
    data[i] ^= std::byte{1};
    EXPECT_NE(Checksum64(data), base) << "flip at " << i;
    data[i] ^= std::byte{1};
  }
  EXPECT_EQ(Checksum64(data), base);
}

TEST(ChecksumTest, StreamEqualsOneShotAndFile) {
  std::string text(100000, 'x');
  for (size_t i = 0; i < text.size(); ++i) text[i] = static_cast<char>('a' + i % 26);
  Checksum64Stream s;
  s.Update(AsBytes(std::string_view(text).substr(0, 12345)));
  s.Update(AsBytes(std::string_view(text).substr(12345)));
  EXPECT_EQ(s.Digest(), Checksum64(AsBytes(text)));

  testing::ScratchDir dir;
  const std::string path = (dir / "f.bin").string();
  std::ofstream(path, std::ios::binary) << text;
  Result<uint64_t> h = ChecksumFile64(path);
  ASSERT_TRUE(h.ok()) << h.status().ToString();
  EXPECT_EQ(*h, Checksum64(AsBytes(text)));
  EXPECT_EQ(ChecksumFile64((dir / "absent").string()).status().code(), StatusCode::kNotFound);
}

}  // namespace
}  // namespace flashlm::storage
