// Byte views. APIs take std::span<const std::byte> / std::span<std::byte>, never a raw pointer
// plus a length. A function returning a view states how long it stays valid.
#ifndef FLASHLM_STORAGE_BYTES_H_
#define FLASHLM_STORAGE_BYTES_H_

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

namespace flashlm {

using ByteSpan = std::span<std::byte>;
using ConstByteSpan = std::span<const std::byte>;

inline ConstByteSpan AsBytes(std::string_view s) {
  return {reinterpret_cast<const std::byte*>(s.data()), s.size()};
}

template <typename T>
ConstByteSpan AsBytes(std::span<const T> s) {
  return std::as_bytes(s);
}

inline constexpr uint64_t AlignUp(uint64_t value, uint64_t alignment) {
  return (value + alignment - 1) / alignment * alignment;
}
inline constexpr uint64_t AlignDown(uint64_t value, uint64_t alignment) {
  return value / alignment * alignment;
}
inline constexpr bool IsPowerOfTwo(uint64_t v) { return v != 0 && (v & (v - 1)) == 0; }
// Number of `divisor`-sized pieces that cover `value` (divisor > 0).
inline constexpr uint64_t CeilDiv(uint64_t value, uint64_t divisor) {
  return (value + divisor - 1) / divisor;
}

// Human-readable size in binary units: "512 B", "8 KiB", "6.5 KiB", "12.3 MiB", "1.25 GiB"
// (whole numbers without decimals; one decimal below GiB, two from GiB up).
std::string FormatBytes(uint64_t bytes);

}  // namespace flashlm

#endif  // FLASHLM_STORAGE_BYTES_H_
