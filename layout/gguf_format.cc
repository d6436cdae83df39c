#include "layout/gguf_format.h"

namespace flashlm::layout {

uint32_t GgufScalarBytes(GgufType t) {
  switch (t) {
    case GgufType::kU8:
    case GgufType::kI8:
    case GgufType::kBool:
      return 1;
    case GgufType::kU16:
    case GgufType::kI16:
      return 2;
    case GgufType::kU32:
    case GgufType::kI32:
    case GgufType::kF32:
      return 4;
    case GgufType::kU64:
    case GgufType::kI64:
    case GgufType::kF64:
      return 8;
    case GgufType::kString:
    case GgufType::kArray:
      return 0;
  }
  return 0;
}

std::string_view GgufTypeName(GgufType t) {
  static constexpr std::string_view kNames[] = {"u8",  "i8",  "u16",  "i16",    "u32",
                                                "i32", "f32", "bool", "string", "array",
                                                "u64", "i64", "f64"};
  const uint32_t v = static_cast<uint32_t>(t);
  return v < kGgufTypeCount ? kNames[v] : "unknown";
}

std::string GgmlTypeName(uint32_t id) {
  static constexpr std::string_view kNames[] = {"f32",
                                                "f16",
                                                "q4_0",
                                                "q4_1",
                                                "q4_2 (removed)",
                                                "q4_3 (removed)",
                                                "q5_0",
                                                "q5_1",
                                                "q8_0",
                                                "q8_1",
                                                "q2_K",
                                                "q3_K",
                                                "q4_K",
                                                "q5_K",
                                                "q6_K",
                                                "q8_K",
                                                "iq2_xxs",
                                                "iq2_xs",
                                                "iq3_xxs",
                                                "iq1_s",
                                                "iq4_nl",
                                                "iq3_s",
                                                "iq2_s",
                                                "iq4_xs",
                                                "i8",
                                                "i16",
                                                "i32",
                                                "i64",
                                                "f64",
                                                "iq1_m",
                                                "bf16",
                                                "q4_0_4_4",
                                                "q4_0_4_8",
                                                "q4_0_8_8",
                                                "tq1_0",
                                                "tq2_0",
                                                "iq4_nl_4_4",
                                                "iq4_nl_4_8",
                                                "iq4_nl_8_8",
                                                "mxfp4"};
  if (id < std::size(kNames)) return std::string(kNames[id]);
  return "unknown type " + std::to_string(id);
}

std::optional<DType> DTypeFromGgml(uint32_t id) {
  switch (static_cast<GgmlType>(id)) {
    case GgmlType::kF32:
      return DType::kF32;
    case GgmlType::kF16:
      return DType::kF16;
    case GgmlType::kBF16:
      return DType::kBF16;
    case GgmlType::kQ8_0:
      return DType::kQ8_0;
    case GgmlType::kQ4_0:
      return DType::kQ4_0;
    case GgmlType::kQ4_K:
      return DType::kQ4_K;
    case GgmlType::kQ6_K:
      return DType::kQ6_K;
  }
  return std::nullopt;
}

GgmlType GgmlFromDType(DType t) {
  switch (t) {
    case DType::kF32:
      return GgmlType::kF32;
    case DType::kF16:
      return GgmlType::kF16;
    case DType::kBF16:
      return GgmlType::kBF16;
    case DType::kQ8_0:
      return GgmlType::kQ8_0;
    case DType::kQ4_0:
      return GgmlType::kQ4_0;
    case DType::kQ4_K:
      return GgmlType::kQ4_K;
    case DType::kQ6_K:
      return GgmlType::kQ6_K;
  }
  return GgmlType::kF32;
}

uint64_t DTypeBlockValues(DType t) {
  switch (t) {
    case DType::kQ8_0:
    case DType::kQ4_0:
      return kQBlockValues;
    case DType::kQ4_K:
    case DType::kQ6_K:
      return 256;
    default:
      return 1;
  }
}

std::optional<uint64_t> GgufValue::AsUint() const {
  switch (type) {
    case GgufType::kU8:
    case GgufType::kU16:
    case GgufType::kU32:
    case GgufType::kU64:
    case GgufType::kBool:
      return u;
    case GgufType::kI8:
    case GgufType::kI16:
    case GgufType::kI32:
    case GgufType::kI64:
      if (i < 0) return std::nullopt;
      return static_cast<uint64_t>(i);
    default:
      return std::nullopt;
  }
}

std::optional<double> GgufValue::AsDouble() const {
  switch (type) {
    case GgufType::kF32:
    case GgufType::kF64:
      return f;
    case GgufType::kI8:
    case GgufType::kI16:
    case GgufType::kI32:
    case GgufType::kI64:
      return static_cast<double>(i);
    case GgufType::kU8:
    case GgufType::kU16:
    case GgufType::kU32:
    case GgufType::kU64:
    case GgufType::kBool:
      return static_cast<double>(u);
    default:
      return std::nullopt;
  }
}

namespace {
template <typename T>
T LoadAt(const std::vector<std::byte>& raw, uint64_t k) {
  T v;
  std::memcpy(&v, raw.data() + k * sizeof(T), sizeof(T));
  return v;
}
}  // namespace

int64_t GgufValue::ArrayInt(uint64_t k) const {
  switch (elem_type) {
    case GgufType::kU8:
    case GgufType::kBool:
      return LoadAt<uint8_t>(raw, k);
    case GgufType::kI8:
      return LoadAt<int8_t>(raw, k);
    case GgufType::kU16:
      return LoadAt<uint16_t>(raw, k);
    case GgufType::kI16:
      return LoadAt<int16_t>(raw, k);
    case GgufType::kU32:
      return LoadAt<uint32_t>(raw, k);
    case GgufType::kI32:
      return LoadAt<int32_t>(raw, k);
    case GgufType::kU64:
      return static_cast<int64_t>(LoadAt<uint64_t>(raw, k));
    case GgufType::kI64:
      return LoadAt<int64_t>(raw, k);
    case GgufType::kF32:
      return static_cast<int64_t>(LoadAt<float>(raw, k));
    case GgufType::kF64:
      return static_cast<int64_t>(LoadAt<double>(raw, k));
    default:
      return 0;
  }
}

double GgufValue::ArrayDouble(uint64_t k) const {
  switch (elem_type) {
    case GgufType::kF32:
      return LoadAt<float>(raw, k);
    case GgufType::kF64:
      return LoadAt<double>(raw, k);
    default:
      return static_cast<double>(ArrayInt(k));
  }
}

}  // namespace flashlm::layout
