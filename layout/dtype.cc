#include "layout/dtype.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

namespace flashlm::layout {
namespace {

constexpr uint64_t kQ8Bytes = 2 + kQBlockValues;      // f16 d + 32 x int8
constexpr uint64_t kQ4Bytes = 2 + kQBlockValues / 2;  // f16 d + 16 bytes of nibbles
constexpr uint64_t kKValues = kKBlockValues;              // q4_K / q6_K super-block
constexpr uint64_t kQ4KBytes = 2 + 2 + 12 + kKValues / 2;
constexpr uint64_t kQ6KBytes = kKValues / 2 + kKValues / 4 + kKValues / 16 + 2;

uint16_t LoadU16(const std::byte* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}
void StoreU16(std::byte* p, uint16_t v) { std::memcpy(p, &v, 2); }

uint64_t Blocks(uint64_t n, uint64_t per_block) { return CeilDiv(n, per_block); }

// q4_K super-block (GGML block_q4_K, 144 bytes): f16 d, f16 dmin, 12 bytes of packed 6-bit
// scales and mins for 8 sub-blocks of 32, then 128 bytes of nibbles. Sub-block pair (2i, 2i+1)
// shares 32 bytes: low nibbles are sub-block 2i, high nibbles 2i+1. x = d*sc*q - dmin*m
// (ScaleMinK4, dtype.h, unpacks sc and m).

void DequantQ4KBlock(const std::byte* blk, float* y) {  // y: [256] f32
  const float d = F16ToF32(LoadU16(blk));
  const float dmin = F16ToF32(LoadU16(blk + 2));
  const auto* scales = reinterpret_cast<const uint8_t*>(blk + 4);
  const auto* q = reinterpret_cast<const uint8_t*>(blk + 16);
  for (int j = 0, is = 0; j < 256; j += 64, is += 2, q += 32) {
    uint8_t sc, m;
    ScaleMinK4(is, scales, sc, m);
    const float d1 = d * sc, m1 = dmin * m;
    ScaleMinK4(is + 1, scales, sc, m);
    const float d2 = d * sc, m2 = dmin * m;
    for (int l = 0; l < 32; ++l) y[j + l] = d1 * static_cast<float>(q[l] & 0x0F) - m1;
    for (int l = 0; l < 32; ++l) y[j + 32 + l] = d2 * static_cast<float>(q[l] >> 4) - m2;
  }
}

// q6_K super-block (GGML block_q6_K, 210 bytes): 128 bytes ql (low 4 bits), 64 bytes qh (high
// 2 bits), 16 int8 scales (one per 16 values), f16 d. x = d * scale * (q - 32).
void DequantQ6KBlock(const std::byte* blk, float* y) {  // y: [256] f32
  const auto* ql = reinterpret_cast<const uint8_t*>(blk);
  const auto* qh = reinterpret_cast<const uint8_t*>(blk + 128);
  const auto* sc = reinterpret_cast<const int8_t*>(blk + 192);
  const float d = F16ToF32(LoadU16(blk + 208));
  for (int n = 0; n < 256; n += 128, ql += 64, qh += 32, sc += 8) {
    for (int l = 0; l < 32; ++l) {
      const int is = l / 16;
      const int q1 = static_cast<int>((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
      const int q2 = static_cast<int>((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
      const int q3 = static_cast<int>((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
      const int q4 = static_cast<int>((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
      y[n + l] = d * sc[is + 0] * q1;
      y[n + l + 32] = d * sc[is + 2] * q2;
      y[n + l + 64] = d * sc[is + 4] * q3;
      y[n + l + 96] = d * sc[is + 6] * q4;
    }
  }
}


// Packs sub-block scale sc and min m (6 bits each) of sub-block j: the inverse of ScaleMinK4.
void PackScaleMinK4(int j, uint8_t sc, uint8_t m, uint8_t* q) {
  if (j < 4) {
    q[j] = (q[j] & 0xC0) | sc;
    q[j + 4] = (q[j + 4] & 0xC0) | m;
  } else {
    q[j + 4] = static_cast<uint8_t>((sc & 0x0F) | ((m & 0x0F) << 4));
    q[j - 4] = static_cast<uint8_t>((q[j - 4] & 0x3F) | ((sc >> 4) << 6));
    q[j] = static_cast<uint8_t>((q[j] & 0x3F) | ((m >> 4) << 6));
  }
}

// One q4_K super-block from 256 values (x: [256] f32). Each sub-block of 32 gets the affine map
// [min(0, lo), hi] -> [0, 15]; the 8 scales and 8 mins are then quantised to 6 bits against the
// super-block's d and dmin (both f16), and the values are rounded against the scales actually
// stored, so dequantisation is within half a step (plus the 6-bit rounding of the scale) of x.
void QuantQ4KBlock(const float* x, std::byte* blk) {
  float scale[8], min[8];
  float max_scale = 0, max_min = 0;
  for (int j = 0; j < 8; ++j) {
    float lo = 0, hi = x[32 * j];
    for (int l = 0; l < 32; ++l) {
      lo = std::min(lo, x[32 * j + l]);
      hi = std::max(hi, x[32 * j + l]);
    }
    hi = std::max(hi, lo);
    scale[j] = (hi - lo) / 15.0f;
    min[j] = -lo;
    max_scale = std::max(max_scale, scale[j]);
    max_min = std::max(max_min, min[j]);
  }
  const uint16_t d16 = F32ToF16(max_scale / 63.0f), dmin16 = F32ToF16(max_min / 63.0f);
  const float d = F16ToF32(d16), dmin = F16ToF32(dmin16);
  StoreU16(blk, d16);
  StoreU16(blk + 2, dmin16);
  auto* scales = reinterpret_cast<uint8_t*>(blk + 4);
  std::memset(scales, 0, 12);
  auto* q = reinterpret_cast<uint8_t*>(blk + 16);
  std::memset(q, 0, 128);
  for (int j = 0; j < 8; ++j) {
    // Round the scale up so that the sub-block's range still fits in 15 steps.
    const int sc = d > 0 ? std::min(63, static_cast<int>(std::ceil(scale[j] / d - 1e-4f))) : 0;
    const int m = dmin > 0 ? std::min(63, static_cast<int>(std::lround(min[j] / dmin))) : 0;
    PackScaleMinK4(j, static_cast<uint8_t>(sc), static_cast<uint8_t>(m), scales);
    const float ds = d * sc, dm = dmin * m;
    const float inv = ds > 0 ? 1.0f / ds : 0.0f;
    for (int l = 0; l < 32; ++l) {
      const int v = std::clamp(static_cast<int>(std::lround((x[32 * j + l] + dm) * inv)), 0, 15);
      q[32 * (j / 2) + l] |= static_cast<uint8_t>(j % 2 == 0 ? v : v << 4);
    }
  }
}

// One q6_K super-block from 256 values (x: [256] f32). Each sub-block of 16 gets the scale that
// maps its value of largest magnitude to -32 (as GGML does); the 16 scales are int8 against the
// super-block's f16 d, and the values are rounded against the scales actually stored.
void QuantQ6KBlock(const float* x, std::byte* blk) {
  float scale[16];
  float max_abs_scale = 0;
  for (int i = 0; i < 16; ++i) {
    float amax = 0, max = 0;
    for (int l = 0; l < 16; ++l) {
      if (std::fabs(x[16 * i + l]) > amax) {
        amax = std::fabs(x[16 * i + l]);
        max = x[16 * i + l];
      }
    }
    scale[i] = max / -32.0f;
    max_abs_scale = std::max(max_abs_scale, std::fabs(scale[i]));
  }
  const uint16_t d16 = F32ToF16(max_abs_scale / 127.0f);
  const float d = F16ToF32(d16);
  auto* ql = reinterpret_cast<uint8_t*>(blk);
  auto* qh = reinterpret_cast<uint8_t*>(blk + 128);
  auto* sc = reinterpret_cast<int8_t*>(blk + 192);
  std::memset(blk, 0, 192);
  StoreU16(blk + 208, d16);
  for (int i = 0; i < 16; ++i) {
    const int s = d > 0 ? std::clamp(static_cast<int>(std::lround(scale[i] / d)), -127, 127) : 0;
    sc[i] = static_cast<int8_t>(s);
    const float ds = d * s;
    const float inv = ds != 0 ? 1.0f / ds : 0.0f;
    for (int l = 0; l < 16; ++l) {
      const int v = 16 * i + l;  // value index in the super-block
      const int q = std::clamp(static_cast<int>(std::lround(x[v] * inv)), -32, 31) + 32;
      // Inverse of DequantQ6KBlock: half h = v / 128; within it, value u = 32 * k + l2 takes
      // the low (k < 2) or high (k >= 2) nibble of ql[l2] (k even) or ql[l2 + 32] (k odd), and
      // bits 2k, 2k+1 of qh[l2].
      const int h = v / 128, u = v % 128, k = u / 32, l2 = u % 32;
      uint8_t* qlh = ql + 64 * h;
      uint8_t* qhh = qh + 32 * h;
      const int ql_index = l2 + (k % 2 == 1 ? 32 : 0);  // k = 1, 3 use ql[l + 32]
      const int shift = k >= 2 ? 4 : 0;                 // k = 2, 3 use the high nibble
      qlh[ql_index] |= static_cast<uint8_t>((q & 0x0F) << shift);
      qhh[l2] |= static_cast<uint8_t>(((q >> 4) & 3) << (2 * k));
    }
  }
}

}  // namespace

std::string_view DTypeName(DType t) {
  switch (t) {
    case DType::kF32: return "f32";
    case DType::kF16: return "f16";
    case DType::kBF16: return "bf16";
    case DType::kQ8_0: return "q8_0";
    case DType::kQ4_0: return "q4_0";
    case DType::kQ4_K: return "q4_K";
    case DType::kQ6_K: return "q6_K";
  }
  return "unknown";
}

Result<DType> ParseDType(std::string_view name) {
  for (DType t : {DType::kF32, DType::kF16, DType::kBF16, DType::kQ8_0, DType::kQ4_0,
                  DType::kQ4_K, DType::kQ6_K}) {
    if (DTypeName(t) == name) return t;
  }
  return InvalidArgumentError("unknown dtype '" + std::string(name) +
                              "' (expected f32, f16, bf16, q8_0, q4_0, q4_K or q6_K)");
}

uint32_t BlockValues(DType t) {
  switch (t) {
    case DType::kQ8_0:
    case DType::kQ4_0: return kQBlockValues;
    case DType::kQ4_K:
    case DType::kQ6_K: return kKValues;
    default: return 1;
  }
}

uint64_t RowBytes(DType t, uint64_t n) {
  switch (t) {
    case DType::kF32: return n * 4;
    case DType::kF16:
    case DType::kBF16: return n * 2;
    case DType::kQ8_0: return Blocks(n, kQBlockValues) * kQ8Bytes;
    case DType::kQ4_0: return Blocks(n, kQBlockValues) * kQ4Bytes;
    case DType::kQ4_K: return Blocks(n, kKValues) * kQ4KBytes;
    case DType::kQ6_K: return Blocks(n, kKValues) * kQ6KBytes;
  }
  return 0;
}

float F16ToF32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1Fu;
  uint32_t mant = h & 0x3FFu;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: normalise
      exp = 127 - 15 + 1;
      while ((mant & 0x400u) == 0) {
        mant <<= 1;
        --exp;
      }
      mant &= 0x3FFu;
      bits = sign | (exp << 23) | (mant << 13);
    }
  } else if (exp == 0x1F) {
    bits = sign | 0x7F800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

uint16_t F32ToF16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  const uint32_t abs = x & 0x7FFFFFFFu;
  if (abs >= 0x7F800000u) {  // inf or nan
    return sign | 0x7C00u | (abs > 0x7F800000u ? 0x200u : 0u);
  }
  if (abs >= 0x477FF000u) return sign | 0x7C00u;  // rounds to >= 65520: inf
  if (abs < 0x38800000u) {  // below the smallest normal f16: subnormal (or zero)
    // Scaling by 2^24 is exact in f32; nearbyint rounds half to even. 0x400 is the smallest
    // normal, which is the right encoding when rounding carries into the exponent.
    const float scaled = std::fabs(f) * 16777216.0f;
    return sign | static_cast<uint16_t>(std::nearbyint(scaled));
  }
  uint32_t result = ((abs >> 13) - (112u << 10));
  const uint32_t rem = abs & 0x1FFFu;
  if (rem > 0x1000u || (rem == 0x1000u && (result & 1u))) ++result;
  return sign | static_cast<uint16_t>(result);
}

float BF16ToF32(uint16_t h) {
  uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

uint16_t F32ToBF16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  if ((x & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((x >> 16) | 0x40u);  // nan
  x += 0x7FFFu + ((x >> 16) & 1u);
  return static_cast<uint16_t>(x >> 16);
}

Status DequantizeRow(DType t, ConstByteSpan src, std::span<float> out) {
  const uint64_t n = out.size();
  if (src.size() < RowBytes(t, n)) {
    return InvalidArgumentError("DequantizeRow: source shorter than a " +
                                std::string(DTypeName(t)) + " row");
  }
  const std::byte* p = src.data();
  switch (t) {
    case DType::kF32:
      std::memcpy(out.data(), p, n * 4);
      return Status::Ok();
    case DType::kF16:
      for (uint64_t i = 0; i < n; ++i) out[i] = F16ToF32(LoadU16(p + 2 * i));
      return Status::Ok();
    case DType::kBF16:
      for (uint64_t i = 0; i < n; ++i) out[i] = BF16ToF32(LoadU16(p + 2 * i));
      return Status::Ok();
    case DType::kQ8_0:
      for (uint64_t b = 0; b * kQBlockValues < n; ++b) {
        const std::byte* blk = p + b * kQ8Bytes;
        const float d = F16ToF32(LoadU16(blk));
        for (uint64_t j = 0; j < kQBlockValues && b * kQBlockValues + j < n; ++j) {
          out[b * kQBlockValues + j] = d * static_cast<float>(static_cast<int8_t>(blk[2 + j]));
        }
      }
      return Status::Ok();
    case DType::kQ4_0:
      for (uint64_t b = 0; b * kQBlockValues < n; ++b) {
        const std::byte* blk = p + b * kQ4Bytes;
        const float d = F16ToF32(LoadU16(blk));
        for (uint64_t j = 0; j < kQBlockValues && b * kQBlockValues + j < n; ++j) {
          const uint8_t byte = static_cast<uint8_t>(blk[2 + (j % 16)]);
          const int nib = j < 16 ? (byte & 0x0F) : (byte >> 4);
          out[b * kQBlockValues + j] = d * static_cast<float>(nib - 8);
        }
      }
      return Status::Ok();
    case DType::kQ4_K:
    case DType::kQ6_K: {
      const uint64_t block_bytes = t == DType::kQ4_K ? kQ4KBytes : kQ6KBytes;
      float tmp[kKValues];  // one super-block, for a row tail shorter than a block
      for (uint64_t b = 0; b * kKValues < n; ++b) {
        const uint64_t base = b * kKValues;
        const bool whole = n - base >= kKValues;
        float* y = whole ? out.data() + base : tmp;
        if (t == DType::kQ4_K) {
          DequantQ4KBlock(p + b * block_bytes, y);
        } else {
          DequantQ6KBlock(p + b * block_bytes, y);
        }
        if (!whole) std::memcpy(out.data() + base, tmp, (n - base) * sizeof(float));
      }
      return Status::Ok();
    }
  }
  return InvalidArgumentError("unknown dtype");
}

Status QuantizeRow(DType t, std::span<const float> src, ByteSpan dst) {
  const uint64_t n = src.size();
  if (dst.size() < RowBytes(t, n)) {
    return InvalidArgumentError("QuantizeRow: destination shorter than a " +
                                std::string(DTypeName(t)) + " row");
  }
  std::byte* p = dst.data();
  switch (t) {
    case DType::kF32:
      std::memcpy(p, src.data(), n * 4);
      return Status::Ok();
    case DType::kF16:
      for (uint64_t i = 0; i < n; ++i) StoreU16(p + 2 * i, F32ToF16(src[i]));
      return Status::Ok();
    case DType::kBF16:
      for (uint64_t i = 0; i < n; ++i) StoreU16(p + 2 * i, F32ToBF16(src[i]));
      return Status::Ok();
    case DType::kQ8_0:
      for (uint64_t b = 0; b * kQBlockValues < n; ++b) {
        std::byte* blk = p + b * kQ8Bytes;
        const uint64_t base = b * kQBlockValues;
        float amax = 0;
        for (uint64_t j = 0; j < kQBlockValues && base + j < n; ++j) {
          amax = std::max(amax, std::fabs(src[base + j]));
        }
        const float d = amax / 127.0f;
        const float id = d != 0 ? 1.0f / d : 0.0f;
        StoreU16(blk, F32ToF16(d));
        for (uint64_t j = 0; j < kQBlockValues; ++j) {
          const float v = base + j < n ? src[base + j] * id : 0.0f;
          blk[2 + j] = static_cast<std::byte>(static_cast<int8_t>(std::lround(v)));
        }
      }
      return Status::Ok();
    case DType::kQ4_0:
      for (uint64_t b = 0; b * kQBlockValues < n; ++b) {
        std::byte* blk = p + b * kQ4Bytes;
        const uint64_t base = b * kQBlockValues;
        float amax = 0, max = 0;  // signed value of largest magnitude, as GGML does
        for (uint64_t j = 0; j < kQBlockValues && base + j < n; ++j) {
          if (std::fabs(src[base + j]) > amax) {
            amax = std::fabs(src[base + j]);
            max = src[base + j];
          }
        }
        const float d = max / -8.0f;
        const float id = d != 0 ? 1.0f / d : 0.0f;
        StoreU16(blk, F32ToF16(d));
        for (uint64_t j = 0; j < 16; ++j) {
          const float v0 = base + j < n ? src[base + j] * id : 0.0f;
          const float v1 = base + j + 16 < n ? src[base + j + 16] * id : 0.0f;
          const int q0 = std::min(15, static_cast<int>(v0 + 8.5f));
          const int q1 = std::min(15, static_cast<int>(v1 + 8.5f));
          blk[2 + j] = static_cast<std::byte>(q0 | (q1 << 4));
        }
      }
      return Status::Ok();
    case DType::kQ4_K:
    case DType::kQ6_K: {
      const uint64_t block_bytes = t == DType::kQ4_K ? kQ4KBytes : kQ6KBytes;
      float tmp[kKValues];  // one super-block, the row's tail zero-padded
      for (uint64_t b = 0; b * kKValues < n; ++b) {
        const uint64_t base = b * kKValues, m = std::min(kKValues, n - base);
        std::memcpy(tmp, src.data() + base, m * sizeof(float));
        std::fill(tmp + m, tmp + kKValues, 0.0f);
        if (t == DType::kQ4_K) {
          QuantQ4KBlock(tmp, p + b * block_bytes);
        } else {
          QuantQ6KBlock(tmp, p + b * block_bytes);
        }
      }
      return Status::Ok();
    }
  }
  return InvalidArgumentError("unknown dtype");
}

}  // namespace flashlm::layout
