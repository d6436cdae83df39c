// Helpers for the storage tests: files with known contents, where every byte is a function of
// its offset, so that any read can be checked without keeping a copy.
#ifndef FLASHLM_TESTS_STORAGE_STORAGE_TEST_UTIL_H_
#define FLASHLM_TESTS_STORAGE_STORAGE_TEST_UTIL_H_

#include <gtest/gtest.h>

#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "storage/bytes.h"

namespace flashlm::storage::testing {

inline std::byte PatternByte(uint64_t offset) {
  uint64_t x = (offset + 1) * 0x9E3779B97F4A7C15ull;
  return std::byte{static_cast<unsigned char>(x >> 56)};
}

// Writes `size_bytes` pattern bytes to `path` (buffered).
inline void WritePatternFile(const std::string& path, uint64_t size_bytes) {
  std::vector<std::byte> data(size_bytes);
  for (uint64_t i = 0; i < size_bytes; ++i) data[i] = PatternByte(i);
  FILE* f = std::fopen(path.c_str(), "wb");
  ASSERT_NE(f, nullptr) << path;
  ASSERT_EQ(std::fwrite(data.data(), 1, data.size(), f), data.size());
  ASSERT_EQ(std::fclose(f), 0);
}

// Number of bytes of `data` that differ from the pattern at file offset `offset`.
inline uint64_t CountMismatches(ConstByteSpan data, uint64_t offset) {
  uint64_t bad = 0;
  for (uint64_t i = 0; i < data.size(); ++i) bad += data[i] != PatternByte(offset + i);
  return bad;
}

// Number of differing bits.
inline uint64_t CountBitFlips(ConstByteSpan data, uint64_t offset) {
  uint64_t bits = 0;
  for (uint64_t i = 0; i < data.size(); ++i) {
    bits += __builtin_popcount(static_cast<unsigned>(data[i] ^ PatternByte(offset + i)));
  }
  return bits;
}

}  // namespace flashlm::storage::testing

#endif  // FLASHLM_TESTS_STORAGE_STORAGE_TEST_UTIL_H_
