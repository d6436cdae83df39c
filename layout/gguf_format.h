// GGUF on-disk vocabulary shared by the reader and the writer: metadata value types, GGML tensor
// type ids, and an in-memory metadata value. Plain values; thread-compatible.
//
// File layout (little-endian, versions 2 and 3):
//   u32 magic "GGUF" | u32 version | u64 tensor_count | u64 kv_count
//   kv_count x { string key | u32 value_type | value }
//   tensor_count x { string name | u32 n_dims | u64 ne[n_dims] (innermost first) | u32 ggml_type
//                    | u64 offset (relative to the data section, a multiple of the alignment) }
//   zero padding to general.alignment (default 32) | data section
// A string is u64 length + bytes (no terminator). An array is u32 element type + u64 count +
// elements.
#ifndef FLASHLM_LAYOUT_GGUF_FORMAT_H_
#define FLASHLM_LAYOUT_GGUF_FORMAT_H_

#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "layout/dtype.h"

namespace flashlm::layout {

inline constexpr uint32_t kGgufMagic = 0x46554747;  // "GGUF" read as a little-endian u32
inline constexpr uint32_t kGgufDefaultAlignment = 32;

enum class GgufType : uint32_t {
  kU8 = 0,
  kI8 = 1,
  kU16 = 2,
  kI16 = 3,
  kU32 = 4,
  kI32 = 5,
  kF32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kU64 = 10,
  kI64 = 11,
  kF64 = 12,
};
inline constexpr uint32_t kGgufTypeCount = 13;

// Byte width of a fixed-size scalar type; 0 for string and array.
uint32_t GgufScalarBytes(GgufType t);
std::string_view GgufTypeName(GgufType t);

// GGML tensor type ids flashlm reads; every other id is refused with its GGML name.
enum class GgmlType : uint32_t {
  kF32 = 0,
  kF16 = 1,
  kQ4_0 = 2,
  kQ8_0 = 8,
  kQ4_K = 12,
  kQ6_K = 14,
  kBF16 = 30,
};
// The GGML name of any type id ("q5_1", "iq2_xxs", ...), or "unknown type N".
std::string GgmlTypeName(uint32_t id);
std::optional<DType> DTypeFromGgml(uint32_t id);
GgmlType GgmlFromDType(DType t);
// Values per block of the type (1 for float types).
uint64_t DTypeBlockValues(DType t);

// One metadata value. Scalars live in `u` (unsigned and bool), `i` (signed), `f` (floats) or
// `s` (string). Arrays keep numeric elements as their raw little-endian bytes in `raw`, string
// elements in `strings`, nested arrays in `arrays`.
struct GgufValue {
  GgufType type = GgufType::kU32;
  uint64_t u = 0;
  int64_t i = 0;
  double f = 0;
  std::string s;
  GgufType elem_type = GgufType::kU8;  // arrays only
  uint64_t count = 0;                  // arrays only: number of elements
  std::vector<std::byte> raw;
  std::vector<std::string> strings;
  std::vector<GgufValue> arrays;

  static GgufValue U32(uint32_t v) { return Scalar(GgufType::kU32, v, 0, 0); }
  static GgufValue I32(int32_t v) { return Scalar(GgufType::kI32, 0, v, 0); }
  static GgufValue U64(uint64_t v) { return Scalar(GgufType::kU64, v, 0, 0); }
  static GgufValue F32(float v) { return Scalar(GgufType::kF32, 0, 0, v); }
  static GgufValue Bool(bool v) { return Scalar(GgufType::kBool, v ? 1 : 0, 0, 0); }
  static GgufValue Str(std::string v) {
    GgufValue x;
    x.type = GgufType::kString;
    x.s = std::move(v);
    return x;
  }
  static GgufValue StrArray(std::vector<std::string> v) {
    GgufValue x;
    x.type = GgufType::kArray;
    x.elem_type = GgufType::kString;
    x.count = v.size();
    x.strings = std::move(v);
    return x;
  }
  template <typename T>
  static GgufValue NumArray(GgufType elem, const std::vector<T>& v) {
    GgufValue x;
    x.type = GgufType::kArray;
    x.elem_type = elem;
    x.count = v.size();
    x.raw.resize(v.size() * sizeof(T));
    if (!v.empty()) std::memcpy(x.raw.data(), v.data(), x.raw.size());
    return x;
  }
  static GgufValue Scalar(GgufType t, uint64_t u, int64_t i, double f) {
    GgufValue x;
    x.type = t;
    x.u = u;
    x.i = i;
    x.f = f;
    return x;
  }

  // Integer value of any integer or bool scalar; nullopt for other types or a negative value.
  std::optional<uint64_t> AsUint() const;
  // Float value of a float or integer scalar.
  std::optional<double> AsDouble() const;
  // Element k of a numeric array, as a double / as int64. Preconditions: k < count.
  double ArrayDouble(uint64_t k) const;
  int64_t ArrayInt(uint64_t k) const;
  bool IsNumericArray() const {
    return type == GgufType::kArray && elem_type != GgufType::kString &&
           elem_type != GgufType::kArray;
  }
};

struct GgufKV {
  std::string key;
  GgufValue value;
};

}  // namespace flashlm::layout

#endif  // FLASHLM_LAYOUT_GGUF_FORMAT_H_
