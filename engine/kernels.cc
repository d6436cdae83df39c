#include "engine/kernels.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#define FLASHLM_AVX2 1
#if defined(__AVXVNNI__) || (defined(__AVX512VNNI__) && defined(__AVX512VL__))
#define FLASHLM_VNNI 1
#endif
#endif

#include "storage/check.h"

namespace flashlm::engine {
namespace {

using layout::DType;
constexpr uint32_t kBlock = layout::kQBlockValues;  // 32
constexpr uint32_t kQ8Bytes = 34;                   // f16 d + 32 int8
constexpr uint32_t kQ4Bytes = 18;                   // f16 d + 16 nibble bytes
constexpr uint32_t kMaxTile = 4;                    // tokens per micro-kernel call

uint32_t Blocks(uint32_t cols) { return static_cast<uint32_t>(CeilDiv(cols, kBlock)); }
// Scratch bytes per token: int8 values, then one f32 scale per block, then per block the scale
// times the sum of the block's int8 values (q4_K's min term), then per block the same for its
// two halves of 16 (q6_K's offset of 32, whose scales change every 16 values).
uint64_t QTokenBytes(uint32_t cols) { return uint64_t{Blocks(cols)} * (kBlock + 16); }

inline float HalfToFloat(const std::byte* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
#ifdef FLASHLM_AVX2
  return _cvtsh_ss(h);
#else
  return layout::F16ToF32(h);
#endif
}

#ifdef FLASHLM_AVX2
inline float HorizontalSum(__m256 v) {
  __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
  lo = _mm_add_ps(lo, hi);
  lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
  lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
  return _mm_cvtss_f32(lo);
}
// Sum over 32 lanes of int8 products, as 8 int32 lanes.
inline __m256i DotI8(__m256i a, __m256i b) {
  const __m256i abs_a = _mm256_sign_epi8(a, a);
  const __m256i b_signed = _mm256_sign_epi8(b, a);
#ifdef FLASHLM_VNNI
  return _mm256_dpbusd_epi32(_mm256_setzero_si256(), abs_a, b_signed);
#else
  const __m256i pairs = _mm256_maddubs_epi16(abs_a, b_signed);
  return _mm256_madd_epi16(pairs, _mm256_set1_epi16(1));
#endif
}
// 32 nibbles of a q4_0 block as int8 values in [-8, 7], in value order.
inline __m256i UnpackQ4(const std::byte* q) {
  const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q));
  const __m128i lo = _mm_and_si128(bytes, _mm_set1_epi8(0x0F));
  const __m128i hi = _mm_and_si128(_mm_srli_epi16(bytes, 4), _mm_set1_epi8(0x0F));
  const __m256i v = _mm256_set_m128i(hi, lo);
  return _mm256_sub_epi8(v, _mm256_set1_epi8(8));
}
#endif

// ---- f32 / f16 rows against NT f32 token vectors -------------------------------------------

template <int NT>
void RowF32(const float* w, const float* const* x, uint32_t n, float* out) {
  uint32_t c = 0;
  float sums[NT] = {};
#ifdef FLASHLM_AVX2
  __m256 acc[NT][2];
  for (int t = 0; t < NT; ++t) acc[t][0] = acc[t][1] = _mm256_setzero_ps();
  for (; c + 16 <= n; c += 16) {
    const __m256 w0 = _mm256_loadu_ps(w + c), w1 = _mm256_loadu_ps(w + c + 8);
    for (int t = 0; t < NT; ++t) {
      acc[t][0] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x[t] + c), acc[t][0]);
      acc[t][1] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x[t] + c + 8), acc[t][1]);
    }
  }
  for (int t = 0; t < NT; ++t) sums[t] = HorizontalSum(_mm256_add_ps(acc[t][0], acc[t][1]));
#endif
  for (; c < n; ++c) {
    for (int t = 0; t < NT; ++t) sums[t] += w[c] * x[t][c];
  }
  for (int t = 0; t < NT; ++t) out[t] = sums[t];
}

#if defined(FLASHLM_AVX2) && defined(__AVX512F__)
#define FLASHLM_AVX512 1
// R rows x NT tokens of f32 at once: R weight streams in flight (decode is bound by how many
// cache misses are outstanding) and R x NT accumulators (prefill reuses each loaded row NT times).
template <int R, int NT>
void TileF32(const float* const* w, const float* const* x, uint32_t n, float* out /*[R][NT]*/) {
  __m512 acc[R][NT];
  for (int r = 0; r < R; ++r) {
    for (int t = 0; t < NT; ++t) acc[r][t] = _mm512_setzero_ps();
  }
  uint32_t c = 0;
  for (; c + 16 <= n; c += 16) {
    __m512 xv[NT];
    for (int t = 0; t < NT; ++t) xv[t] = _mm512_loadu_ps(x[t] + c);
    for (int r = 0; r < R; ++r) {
      const __m512 wv = _mm512_loadu_ps(w[r] + c);
      for (int t = 0; t < NT; ++t) acc[r][t] = _mm512_fmadd_ps(wv, xv[t], acc[r][t]);
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int t = 0; t < NT; ++t) {
      float s = _mm512_reduce_add_ps(acc[r][t]);
      for (uint32_t k = c; k < n; ++k) s += w[r][k] * x[t][k];
      out[r * NT + t] = s;
    }
  }
}
#endif

template <int NT>
void RowF16(const std::byte* w, const float* const* x, uint32_t n, float* out) {
  uint32_t c = 0;
  float sums[NT] = {};
#ifdef FLASHLM_AVX2
  __m256 acc[NT];
  for (int t = 0; t < NT; ++t) acc[t] = _mm256_setzero_ps();
  for (; c + 8 <= n; c += 8) {
    const __m256 wv = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + 2 * c)));
    for (int t = 0; t < NT; ++t) acc[t] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x[t] + c), acc[t]);
  }
  for (int t = 0; t < NT; ++t) sums[t] = HorizontalSum(acc[t]);
#endif
  for (; c < n; ++c) {
    const float wv = HalfToFloat(w + 2 * c);
    for (int t = 0; t < NT; ++t) sums[t] += wv * x[t][c];
  }
  for (int t = 0; t < NT; ++t) out[t] = sums[t];
}

// ---- q8_0 / q4_0 rows against NT q8-quantised token vectors ---------------------------------
// xq[t] points at a token's int8 values, xd[t] at its per-block scales.

template <int NT, bool kQ4>
void RowQ(const std::byte* w, const int8_t* const* xq, const float* const* xd, uint32_t nb,
          float* out) {
  constexpr uint32_t kBytes = kQ4 ? kQ4Bytes : kQ8Bytes;
#ifdef FLASHLM_AVX2
  // U independent accumulators per token keep the FMA latency chain from bounding a row.
  constexpr int U = NT == 1 ? 4 : NT == 2 ? 2 : 1;
  __m256 acc[NT][U];
  for (int t = 0; t < NT; ++t) {
    for (int u = 0; u < U; ++u) acc[t][u] = _mm256_setzero_ps();
  }
  uint32_t b = 0;
  auto step = [&](uint32_t blk_index, int u) {
    const std::byte* blk = w + blk_index * kBytes;
    const float dw = HalfToFloat(blk);
    const __m256i wq =
        kQ4 ? UnpackQ4(blk + 2) : _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 2));
    for (int t = 0; t < NT; ++t) {
      const __m256i xv =
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq[t] + blk_index * kBlock));
      const __m256 p = _mm256_cvtepi32_ps(DotI8(wq, xv));
      acc[t][u] = _mm256_fmadd_ps(_mm256_set1_ps(dw * xd[t][blk_index]), p, acc[t][u]);
    }
  };
  for (; b + U <= nb; b += U) {
    for (int u = 0; u < U; ++u) step(b + u, u);
  }
  for (; b < nb; ++b) step(b, 0);
  for (int t = 0; t < NT; ++t) {
    __m256 sum = acc[t][0];
    for (int u = 1; u < U; ++u) sum = _mm256_add_ps(sum, acc[t][u]);
    out[t] = HorizontalSum(sum);
  }
#else
  float sums[NT] = {};
  for (uint32_t b = 0; b < nb; ++b) {
    const std::byte* blk = w + b * kBytes;
    const float dw = HalfToFloat(blk);
    int8_t wq[kBlock];
    for (uint32_t j = 0; j < kBlock; ++j) {
      if constexpr (kQ4) {
        const uint8_t byte = static_cast<uint8_t>(blk[2 + (j % 16)]);
        wq[j] = static_cast<int8_t>((j < 16 ? (byte & 0x0F) : (byte >> 4)) - 8);
      } else {
        wq[j] = static_cast<int8_t>(blk[2 + j]);
      }
    }
    for (int t = 0; t < NT; ++t) {
      int32_t s = 0;
      for (uint32_t j = 0; j < kBlock; ++j) s += wq[j] * xq[t][b * kBlock + j];
      sums[t] += dw * xd[t][b] * static_cast<float>(s);
    }
  }
  for (int t = 0; t < NT; ++t) out[t] = sums[t];
#endif
}

// ---- q4_K / q6_K rows against NT q8-quantised token vectors ---------------------------------
// A super-block of 256 weights meets 8 activation blocks of 32: sub-block j of super-block b is
// activation block 8b + j. xs[t][blk] = xd[t][blk] * (sum of the block's int8 values).
// `nb` counts activation blocks (ceil(cols / 32)); the row's padding past them is never read.

constexpr uint32_t kQ4KBytes = 144, kQ6KBytes = 210;

// The 8 six-bit scales and 8 mins of a q4_K super-block (12 packed bytes at p), as bytes.
__attribute__((always_inline)) inline void UnpackQ4KScales(const std::byte* p, uint8_t sc[8],
                                                           uint8_t m[8]) {
  uint32_t u[3];
  std::memcpy(u, p, 12);
  const uint32_t sc_lo = u[0] & 0x3F3F3F3Fu, m_lo = u[1] & 0x3F3F3F3Fu;
  // Sub-blocks 4..7: low 4 bits in bytes 8..11, high 2 bits in the top bits of bytes 0..3 / 4..7.
  const uint32_t sc_hi = (u[2] & 0x0F0F0F0Fu) | ((u[0] >> 2) & 0x30303030u);
  const uint32_t m_hi = ((u[2] >> 4) & 0x0F0F0F0Fu) | ((u[1] >> 2) & 0x30303030u);
  std::memcpy(sc, &sc_lo, 4);
  std::memcpy(sc + 4, &sc_hi, 4);
  std::memcpy(m, &m_lo, 4);
  std::memcpy(m + 4, &m_hi, 4);
}

#ifdef FLASHLM_AVX2
// Sum over 32 lanes of unsigned a (< 128) times signed b, as 8 int32 lanes.
inline __m256i DotU8I8(__m256i a, __m256i b) {
#ifdef FLASHLM_VNNI
  return _mm256_dpbusd_epi32(_mm256_setzero_si256(), a, b);
#else
  return _mm256_madd_epi16(_mm256_maddubs_epi16(a, b), _mm256_set1_epi16(1));
#endif
}
#endif

template <int NT>
void RowQ4K(const std::byte* w, const int8_t* const* xq, const float* const* xd,
            const float* const* xs, uint32_t nb, float* out) {
  const uint32_t nsb = static_cast<uint32_t>(CeilDiv(nb, 8));
#ifdef FLASHLM_AVX2
  // Two accumulators per token (low- and high-nibble sub-blocks) halve the FMA latency chain.
  __m256 acc[NT][2], macc[NT];
  for (int t = 0; t < NT; ++t) acc[t][0] = acc[t][1] = macc[t] = _mm256_setzero_ps();
  float mtail[NT] = {};
  const __m256i low4 = _mm256_set1_epi8(0x0F);
  const uint32_t full = nb / 8;  // super-blocks whose 8 activation blocks all exist
  for (uint32_t b = 0; b < full; ++b) {
    const std::byte* blk = w + uint64_t{b} * kQ4KBytes;
    const __m256 d = _mm256_set1_ps(HalfToFloat(blk)), dmin = _mm256_set1_ps(HalfToFloat(blk + 2));
    uint64_t sc8, m8;
    UnpackQ4KScales(blk + 4, reinterpret_cast<uint8_t*>(&sc8), reinterpret_cast<uint8_t*>(&m8));
    const __m256 dsc = _mm256_mul_ps(
        d, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128(static_cast<int64_t>(sc8)))));
    const __m256 dm = _mm256_mul_ps(
        dmin,
        _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128(static_cast<int64_t>(m8)))));
    const uint32_t a0 = 8 * b;
    alignas(32) float coef[NT][8];  // d * sc[j] * xd[t][a0 + j]
    for (int t = 0; t < NT; ++t) {
      _mm256_store_ps(coef[t], _mm256_mul_ps(dsc, _mm256_loadu_ps(xd[t] + a0)));
      macc[t] = _mm256_fmadd_ps(dm, _mm256_loadu_ps(xs[t] + a0), macc[t]);
    }
    for (int i = 0; i < 4; ++i) {
      const __m256i bytes = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 16 + 32 * i));
      const __m256i lo = _mm256_and_si256(bytes, low4);
      const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(bytes, 4), low4);
      for (int t = 0; t < NT; ++t) {
        const int8_t* x = xq[t] + uint64_t{a0 + 2 * i} * kBlock;
        const __m256i p_lo = DotU8I8(lo, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x)));
        const __m256i p_hi =
            DotU8I8(hi, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + kBlock)));
        acc[t][0] = _mm256_fmadd_ps(_mm256_broadcast_ss(&coef[t][2 * i]), _mm256_cvtepi32_ps(p_lo),
                                    acc[t][0]);
        acc[t][1] = _mm256_fmadd_ps(_mm256_broadcast_ss(&coef[t][2 * i + 1]),
                                    _mm256_cvtepi32_ps(p_hi), acc[t][1]);
      }
    }
  }
  if (full < nsb) {  // the last super-block meets fewer than 8 activation blocks
    const uint32_t b = full;
    const std::byte* blk = w + uint64_t{b} * kQ4KBytes;
    const float d = HalfToFloat(blk), dmin = HalfToFloat(blk + 2);
    uint8_t sc[8], m[8];
    UnpackQ4KScales(blk + 4, sc, m);
    const uint32_t a0 = 8 * b, count = nb - a0;
    for (uint32_t j = 0; j < count; ++j) {
      const __m256i bytes =
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 16 + 32 * (j / 2)));
      const __m256i q = j % 2 == 0 ? _mm256_and_si256(bytes, low4)
                                   : _mm256_and_si256(_mm256_srli_epi16(bytes, 4), low4);
      for (int t = 0; t < NT; ++t) {
        const int8_t* x = xq[t] + uint64_t{a0 + j} * kBlock;
        const __m256i p = DotU8I8(q, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x)));
        acc[t][0] = _mm256_fmadd_ps(_mm256_set1_ps(d * sc[j] * xd[t][a0 + j]),
                                    _mm256_cvtepi32_ps(p), acc[t][0]);
        mtail[t] += dmin * m[j] * xs[t][a0 + j];
      }
    }
  }
  for (int t = 0; t < NT; ++t) {
    out[t] = HorizontalSum(_mm256_add_ps(acc[t][0], acc[t][1])) - HorizontalSum(macc[t]) - mtail[t];
  }
#else
  float sums[NT] = {};
  for (uint32_t b = 0; b < nsb; ++b) {
    const std::byte* blk = w + uint64_t{b} * kQ4KBytes;
    const float d = HalfToFloat(blk), dmin = HalfToFloat(blk + 2);
    uint8_t sc[8], m[8];
    UnpackQ4KScales(blk + 4, sc, m);
    const auto* q = reinterpret_cast<const uint8_t*>(blk + 16);
    const uint32_t a0 = 8 * b, count = std::min(8u, nb - a0);
    for (uint32_t j = 0; j < count; ++j) {
      for (int t = 0; t < NT; ++t) {
        const int8_t* x = xq[t] + uint64_t{a0 + j} * kBlock;
        int32_t s = 0;
        for (uint32_t l = 0; l < kBlock; ++l) {
          const uint8_t byte = q[32 * (j / 2) + l];
          s += (j % 2 == 0 ? (byte & 0x0F) : (byte >> 4)) * x[l];
        }
        sums[t] += d * sc[j] * xd[t][a0 + j] * static_cast<float>(s) - dmin * m[j] * xs[t][a0 + j];
      }
    }
  }
  for (int t = 0; t < NT; ++t) out[t] = sums[t];
#endif
}

template <int NT>
void RowQ6K(const std::byte* w, const int8_t* const* xq, const float* const* xd,
            const float* const* xs, uint32_t nb, float* out) {
  const uint32_t nsb = static_cast<uint32_t>(CeilDiv(nb, 8));
#ifdef FLASHLM_AVX2
  // sum (q - 32) * x = sum q * x - 32 * sum x: the products use the unsigned 6-bit q, and the
  // offset is one FMA per half super-block against the activations' half-block sums
  // (xs[t] + nb, scaled like xd). Two accumulators per token (even and odd quarters) halve the
  // FMA latency chain.
  __m256 acc[NT][2], offset[NT];
  for (int t = 0; t < NT; ++t) acc[t][0] = acc[t][1] = offset[t] = _mm256_setzero_ps();
  float offset_tail[NT] = {};
  const __m256i low4 = _mm256_set1_epi8(0x0F), two = _mm256_set1_epi8(3);
  // Lanes 0-3 of a block's int32 dot cover its values 0..15 (scale 2k of the half), lanes 4-7
  // values 16..31 (scale 2k+1).
  const __m256i pick[4] = {
      _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1), _mm256_setr_epi32(2, 2, 2, 2, 3, 3, 3, 3),
      _mm256_setr_epi32(4, 4, 4, 4, 5, 5, 5, 5), _mm256_setr_epi32(6, 6, 6, 6, 7, 7, 7, 7)};
  for (uint32_t b = 0; b < nsb; ++b) {
    const std::byte* blk = w + uint64_t{b} * kQ6KBytes;
    const __m256 d = _mm256_set1_ps(HalfToFloat(blk + 208));
    const uint32_t a0 = 8 * b, count = std::min(8u, nb - a0);
    for (uint32_t h = 0; 4 * h < count; ++h) {
      const std::byte* ql = blk + 64 * h;
      const std::byte* qh = blk + 128 + 32 * h;
      // The half's 8 scales as f32 times d.
      const __m256 scales = _mm256_mul_ps(
          d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(
                 _mm_loadl_epi64(reinterpret_cast<const __m128i*>(blk + 192 + 8 * h)))));
      const __m256i l0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ql));
      const __m256i l1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ql + 32));
      const __m256i hb = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qh));
      __m256i q[4];
      q[0] = _mm256_or_si256(_mm256_and_si256(l0, low4),
                             _mm256_slli_epi16(_mm256_and_si256(hb, two), 4));
      q[1] = _mm256_or_si256(_mm256_and_si256(l1, low4),
                             _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 2), two), 4));
      q[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), low4),
                             _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 4), two), 4));
      q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), low4),
                             _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 6), two), 4));
      auto quarter = [&](uint32_t k) {
        const __m256 sk = _mm256_permutevar8x32_ps(scales, pick[k]);
        const uint32_t a = a0 + 4 * h + k;
        for (int t = 0; t < NT; ++t) {
          const __m256i x =
              _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq[t] + uint64_t{a} * kBlock));
          acc[t][k % 2] = _mm256_fmadd_ps(_mm256_mul_ps(sk, _mm256_set1_ps(xd[t][a])),
                                          _mm256_cvtepi32_ps(DotU8I8(q[k], x)), acc[t][k % 2]);
        }
      };
      const uint32_t kn = std::min(4u, count - 4 * h);
      const uint32_t first = a0 + 4 * h;  // the half's first activation block
      if (kn == 4) {
        quarter(0), quarter(1), quarter(2), quarter(3);
        // Lane i of `scales` is the scale of half-block i of the half's 4 activation blocks.
        for (int t = 0; t < NT; ++t) {
          offset[t] = _mm256_fmadd_ps(scales, _mm256_loadu_ps(xs[t] + nb + 2 * first), offset[t]);
        }
      } else {
        alignas(32) float sc_f[8];
        _mm256_store_ps(sc_f, scales);
        for (uint32_t k = 0; k < kn; ++k) {
          quarter(k);
          for (int t = 0; t < NT; ++t) {
            const float* hs = xs[t] + nb + 2 * (first + k);
            offset_tail[t] += sc_f[2 * k] * hs[0] + sc_f[2 * k + 1] * hs[1];
          }
        }
      }
    }
  }
  for (int t = 0; t < NT; ++t) {
    out[t] = HorizontalSum(_mm256_add_ps(acc[t][0], acc[t][1])) -
             32.0f * (HorizontalSum(offset[t]) + offset_tail[t]);
  }
#else
  (void)xs;  // the scalar path subtracts the offset per value
  float sums[NT] = {};
  for (uint32_t b = 0; b < nsb; ++b) {
    const std::byte* blk = w + uint64_t{b} * kQ6KBytes;
    const auto* ql = reinterpret_cast<const uint8_t*>(blk);
    const auto* qh = reinterpret_cast<const uint8_t*>(blk + 128);
    const auto* sc = reinterpret_cast<const int8_t*>(blk + 192);
    const float d = HalfToFloat(blk + 208);
    const uint32_t a0 = 8 * b, count = std::min(8u, nb - a0);
    for (uint32_t j = 0; j < count; ++j) {  // activation block a0 + j: half j / 4, quarter j % 4
      const uint32_t h = j / 4, k = j % 4;
      for (int t = 0; t < NT; ++t) {
        const int8_t* x = xq[t] + uint64_t{a0 + j} * kBlock;
        int32_t s[2] = {0, 0};  // values 0..15 and 16..31 of the block
        for (uint32_t l = 0; l < kBlock; ++l) {
          const uint8_t lb = ql[64 * h + l + (k % 2) * 32];
          const int lo = k < 2 ? (lb & 0x0F) : (lb >> 4);
          const int hi = (qh[32 * h + l] >> (2 * k)) & 3;
          s[l / 16] += ((lo | (hi << 4)) - 32) * x[l];
        }
        const int8_t* s2 = sc + 8 * h + 2 * k;
        sums[t] += d * xd[t][a0 + j] * (static_cast<float>(s2[0] * s[0] + s2[1] * s[1]));
      }
    }
  }
  for (int t = 0; t < NT; ++t) out[t] = sums[t];
#endif
}

#ifdef FLASHLM_AVX2
// R rows x NT tokens of q8_0/q4_0 against q8 activations: R x NT independent accumulators.
template <int R, int NT, bool kQ4>
void TileQ(const std::byte* const* w, const int8_t* const* xq, const float* const* xd, uint32_t nb,
           float* out /*[R][NT]*/) {
  constexpr uint32_t kBytes = kQ4 ? kQ4Bytes : kQ8Bytes;
  __m256 acc[R][NT];
  for (int r = 0; r < R; ++r) {
    for (int t = 0; t < NT; ++t) acc[r][t] = _mm256_setzero_ps();
  }
  for (uint32_t b = 0; b < nb; ++b) {
    __m256i xv[NT];
    for (int t = 0; t < NT; ++t) {
      xv[t] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq[t] + b * kBlock));
    }
    for (int r = 0; r < R; ++r) {
      const std::byte* blk = w[r] + b * kBytes;
      const float dw = HalfToFloat(blk);
      const __m256i wq =
          kQ4 ? UnpackQ4(blk + 2) : _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 2));
      for (int t = 0; t < NT; ++t) {
        const __m256 p = _mm256_cvtepi32_ps(DotI8(wq, xv[t]));
        acc[r][t] = _mm256_fmadd_ps(_mm256_set1_ps(dw * xd[t][b]), p, acc[r][t]);
      }
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int t = 0; t < NT; ++t) out[r * NT + t] = HorizontalSum(acc[r][t]);
  }
}
#endif

// Rows [r, r+4) against nt tokens with a multi-row tile when the dtype has one; returns false
// (nothing written) otherwise.
template <int NT>
bool Tile4(const MatrixView& w, uint32_t r, const float* const* x, const int8_t* const* xq,
           const float* const* xd, float* out /*[4][NT]*/) {
  const std::byte* rows[4];
  for (int i = 0; i < 4; ++i) rows[i] = w.bytes.data() + (r + i) * w.row_bytes();
  switch (w.dtype) {
#ifdef FLASHLM_AVX512
    case DType::kF32: {
      const float* f[4];
      for (int i = 0; i < 4; ++i) f[i] = reinterpret_cast<const float*>(rows[i]);
      TileF32<4, NT>(f, x, w.cols, out);
      return true;
    }
#endif
#ifdef FLASHLM_AVX2
    case DType::kQ8_0:
      if constexpr (NT <= 2) {
        TileQ<4, NT, false>(rows, xq, xd, Blocks(w.cols), out);
        return true;
      }
      return false;
    case DType::kQ4_0:
      if constexpr (NT <= 2) {
        TileQ<4, NT, true>(rows, xq, xd, Blocks(w.cols), out);
        return true;
      }
      return false;
#endif
    default:
      return false;
  }
}

template <int NT>
void RowDispatch(const MatrixView& w, uint32_t r, const float* const* x, const int8_t* const* xq,
                 const float* const* xd, const float* const* xs, float* out) {
  const std::byte* row = w.bytes.data() + r * w.row_bytes();
  switch (w.dtype) {
    case DType::kF32:
      return RowF32<NT>(reinterpret_cast<const float*>(row), x, w.cols, out);
    case DType::kF16:
      return RowF16<NT>(row, x, w.cols, out);
    case DType::kQ8_0:
      return RowQ<NT, false>(row, xq, xd, Blocks(w.cols), out);
    case DType::kQ4_0:
      return RowQ<NT, true>(row, xq, xd, Blocks(w.cols), out);
    case DType::kQ4_K:
      return RowQ4K<NT>(row, xq, xd, xs, Blocks(w.cols), out);
    case DType::kQ6_K:
      return RowQ6K<NT>(row, xq, xd, xs, Blocks(w.cols), out);
    default:
      CHECK(false && "unsupported dtype in MatMul");
  }
}

// Dtypes multiplied against q8 activations.
bool IsBlockType(DType t) {
  return t == DType::kQ8_0 || t == DType::kQ4_0 || t == DType::kQ4_K || t == DType::kQ6_K;
}

}  // namespace

bool MatMulSupports(DType dtype) {
  return dtype == DType::kF32 || dtype == DType::kF16 || IsBlockType(dtype);
}

uint64_t MatMulScratchBytes(uint32_t cols, uint32_t n_tokens) {
  return QTokenBytes(cols) * n_tokens;
}

void QuantizeActivations(std::span<const float> x, uint32_t cols, uint32_t n_tokens,
                         ByteSpan scratch) {
  CHECK_GE(x.size(), uint64_t{cols} * n_tokens);
  CHECK_GE(scratch.size(), MatMulScratchBytes(cols, n_tokens));
  const uint32_t nb = Blocks(cols);
  for (uint32_t t = 0; t < n_tokens; ++t) {
    std::byte* base = scratch.data() + t * QTokenBytes(cols);
    int8_t* q = reinterpret_cast<int8_t*>(base);
    float* d = reinterpret_cast<float*>(base + uint64_t{nb} * kBlock);
    float* sum = d + nb;
    float* half_sum = sum + nb;
    const float* xt = x.data() + uint64_t{t} * cols;
    for (uint32_t b = 0; b < nb; ++b) {
      const uint32_t c0 = b * kBlock, n = std::min(kBlock, cols - c0);
      float amax = 0.0f;
      for (uint32_t j = 0; j < n; ++j) amax = std::max(amax, std::fabs(xt[c0 + j]));
      const float scale = amax / 127.0f;
      const float inv = scale != 0.0f ? 1.0f / scale : 0.0f;
      int32_t isum[2] = {0, 0};
      for (uint32_t j = 0; j < kBlock; ++j) {
        q[c0 + j] = j < n ? static_cast<int8_t>(std::nearbyint(xt[c0 + j] * inv)) : 0;
        isum[j / 16] += q[c0 + j];
      }
      d[b] = scale;
      sum[b] = scale * static_cast<float>(isum[0] + isum[1]);
      half_sum[2 * b] = scale * static_cast<float>(isum[0]);
      half_sum[2 * b + 1] = scale * static_cast<float>(isum[1]);
    }
  }
}

void MatMulRows(const MatrixView& w, std::span<const float> x, uint32_t n_tokens,
                ConstByteSpan quantized_x, uint32_t row_begin, uint32_t row_end,
                std::span<float> y) {
  CHECK(MatMulSupports(w.dtype));
  CHECK_LE(row_end, w.rows);
  CHECK_GE(y.size(), uint64_t{n_tokens} * w.rows);
  const bool quantized = IsBlockType(w.dtype);
  const uint32_t nb = Blocks(w.cols);
  for (uint32_t t0 = 0; t0 < n_tokens; t0 += kMaxTile) {
    const uint32_t nt = std::min(kMaxTile, n_tokens - t0);
    const float* xs[kMaxTile] = {};
    const int8_t* xq[kMaxTile] = {};
    const float* xd[kMaxTile] = {};
    const float* xsum[kMaxTile] = {};
    for (uint32_t i = 0; i < nt; ++i) {
      xs[i] = x.data() + uint64_t{t0 + i} * w.cols;
      if (quantized) {
        const std::byte* base = quantized_x.data() + (t0 + i) * QTokenBytes(w.cols);
        xq[i] = reinterpret_cast<const int8_t*>(base);
        xd[i] = reinterpret_cast<const float*>(base + uint64_t{nb} * kBlock);
        xsum[i] = xd[i] + nb;
      }
    }
    uint32_t r = row_begin;
    // Multi-row tiles pay off for batches only: measured 2-4x slower than single rows for decode.
    for (bool tiled = nt > 1; tiled && r + 4 <= row_end; r += tiled ? 4 : 0) {
      float out[4 * kMaxTile];
      switch (nt) {
        case 1:
          tiled = Tile4<1>(w, r, xs, xq, xd, out);
          break;
        case 2:
          tiled = Tile4<2>(w, r, xs, xq, xd, out);
          break;
        case 3:
          tiled = Tile4<3>(w, r, xs, xq, xd, out);
          break;
        default:
          tiled = Tile4<4>(w, r, xs, xq, xd, out);
          break;
      }
      if (!tiled) break;
      for (uint32_t i = 0; i < 4; ++i) {
        for (uint32_t t = 0; t < nt; ++t) y[uint64_t{t0 + t} * w.rows + r + i] = out[i * nt + t];
      }
    }
    for (; r < row_end; ++r) {
      float out[kMaxTile];
      switch (nt) {
        case 1:
          RowDispatch<1>(w, r, xs, xq, xd, xsum, out);
          break;
        case 2:
          RowDispatch<2>(w, r, xs, xq, xd, xsum, out);
          break;
        case 3:
          RowDispatch<3>(w, r, xs, xq, xd, xsum, out);
          break;
        default:
          RowDispatch<4>(w, r, xs, xq, xd, xsum, out);
          break;
      }
      for (uint32_t i = 0; i < nt; ++i) y[uint64_t{t0 + i} * w.rows + r] = out[i];
    }
  }
}

void MatMul(const MatrixView& w, std::span<const float> x, uint32_t n_tokens, std::span<float> y,
            ByteSpan scratch, ThreadPool& pool) {
  CHECK(MatMulSupports(w.dtype));
  CHECK_GE(x.size(), uint64_t{n_tokens} * w.cols);
  CHECK_GE(y.size(), uint64_t{n_tokens} * w.rows);
  CHECK_GE(w.bytes.size(), uint64_t{w.rows} * w.row_bytes());
  ConstByteSpan qx;
  if (IsBlockType(w.dtype)) {
    QuantizeActivations(x, w.cols, n_tokens, scratch);
    qx = scratch;
  }
  // Rows in groups of 16 per chunk keep a chunk's weights contiguous.
  pool.ParallelFor(w.rows, 16, [&](uint64_t b, uint64_t e, uint32_t) {
    MatMulRows(w, x, n_tokens, qx, static_cast<uint32_t>(b), static_cast<uint32_t>(e), y);
  });
}

double ReferenceDot(const MatrixView& w, uint32_t r, std::span<const float> x) {
  const std::byte* row = w.bytes.data() + r * w.row_bytes();
  double sum = 0.0;
  if (w.dtype == DType::kQ4_K || w.dtype == DType::kQ6_K) {  // one super-block at a time
    const uint32_t per = layout::kKBlockValues;
    const uint64_t block_bytes = layout::RowBytes(w.dtype, per);
    float v[layout::kKBlockValues];
    for (uint32_t c0 = 0; c0 < w.cols; c0 += per) {
      const uint32_t n = std::min(per, w.cols - c0);
      CHECK_OK(layout::DequantizeRow(w.dtype,
                                     ConstByteSpan(row + c0 / per * block_bytes, block_bytes),
                                     std::span<float>(v, n)));
      for (uint32_t i = 0; i < n; ++i) sum += double(v[i]) * x[c0 + i];
    }
    return sum;
  }
  for (uint32_t c = 0; c < w.cols; ++c) {
    double v = 0.0;
    switch (w.dtype) {
      case DType::kF32: {
        float f;
        std::memcpy(&f, row + 4 * c, 4);
        v = f;
        break;
      }
      case DType::kF16: {
        uint16_t h;
        std::memcpy(&h, row + 2 * c, 2);
        v = layout::F16ToF32(h);
        break;
      }
      case DType::kQ8_0: {
        const std::byte* blk = row + (c / kBlock) * kQ8Bytes;
        uint16_t h;
        std::memcpy(&h, blk, 2);
        v = layout::F16ToF32(h) * static_cast<double>(static_cast<int8_t>(blk[2 + c % kBlock]));
        break;
      }
      case DType::kQ4_0: {
        const std::byte* blk = row + (c / kBlock) * kQ4Bytes;
        uint16_t h;
        std::memcpy(&h, blk, 2);
        const uint32_t j = c % kBlock;
        const uint8_t byte = static_cast<uint8_t>(blk[2 + j % 16]);
        const int q = (j < 16 ? (byte & 0x0F) : (byte >> 4)) - 8;
        v = layout::F16ToF32(h) * q;
        break;
      }
      default:
        CHECK(false && "unsupported dtype in ReferenceDot");
    }
    sum += v * x[c];
  }
  return sum;
}

void RmsNorm(std::span<const float> x, std::span<const float> w, float eps, std::span<float> out) {
  const uint32_t n = static_cast<uint32_t>(x.size());
  float ss = DotF32(x.data(), x.data(), n);
  ss = ss / n + eps;
  const float inv = 1.0f / std::sqrt(ss);
  for (uint32_t i = 0; i < n; ++i) out[i] = w[i] * (inv * x[i]);
}

void Softmax(std::span<float> x) {
  if (x.empty()) return;
  float mx = x[0];
  for (float v : x) mx = std::max(mx, v);
  float sum = 0.0f;
  for (float& v : x) {
    v = std::exp(v - mx);
    sum += v;
  }
  const float inv = 1.0f / sum;
  for (float& v : x) v *= inv;
}

void SwiGlu(std::span<float> gate, std::span<const float> up, bool relu) {
  for (size_t i = 0; i < gate.size(); ++i) {
    const float g = gate[i];
    const float a = relu ? std::max(g, 0.0f) : g / (1.0f + std::exp(-g));
    gate[i] = a * up[i];
  }
}

float DotF32(const float* a, const float* b, uint32_t n) {
  const float* xs[1] = {b};
  float out;
  RowF32<1>(a, xs, n, &out);
  return out;
}

void AxpyF32(float a, const float* x, float* y, uint32_t n) {
  uint32_t i = 0;
#ifdef FLASHLM_AVX2
  const __m256 av = _mm256_set1_ps(a);
  for (; i + 8 <= n; i += 8) {
    _mm256_storeu_ps(y + i, _mm256_fmadd_ps(av, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
  }
#endif
  for (; i < n; ++i) y[i] += a * x[i];
}

namespace {
#ifdef FLASHLM_AVX2
// The 32 values of one f16, q8_0 or q4_0 block at w, dequantised as layout::DequantizeRow does.
inline void LoadBlock32(DType dtype, const std::byte* w, __m256 v[4]) {
  if (dtype == DType::kF16) {
    for (int j = 0; j < 4; ++j) {
      v[j] = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + 16 * j)));
    }
    return;
  }
  const __m256 d = _mm256_set1_ps(HalfToFloat(w));
  __m128i q[2];
  if (dtype == DType::kQ4_0) {
    const __m256i all = UnpackQ4(w + 2);
    q[0] = _mm256_castsi256_si128(all);
    q[1] = _mm256_extracti128_si256(all, 1);
  } else {
    q[0] = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w + 2));
    q[1] = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w + 18));
  }
  for (int h = 0; h < 2; ++h) {
    v[2 * h] = _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q[h])));
    v[2 * h + 1] =
        _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(q[h], 8))));
  }
}

// AxpyRows over one full 32-value block at byte `at` of every row, for NT tokens from a[.][0]:
// y (NT x 32) stays in registers while the rows go by.
template <int NT>
void AxpyBlockRows(DType dtype, std::span<const std::byte* const> rows, uint64_t at, const float* a,
                   uint64_t a_stride, float* y, uint64_t y_stride) {
  __m256 acc[NT][4];
  for (int t = 0; t < NT; ++t) {
    for (int j = 0; j < 4; ++j) acc[t][j] = _mm256_loadu_ps(y + t * y_stride + 8 * j);
  }
  const size_t count = rows.size();
  constexpr size_t kAhead = 8;  // rows whose block is requested ahead
  for (size_t k = 0; k < count; ++k) {
    if (k + kAhead < count) __builtin_prefetch(rows[k + kAhead] + at, 0, 3);
    const float* ak = a + k * a_stride;
    bool any = false;
    for (int t = 0; t < NT; ++t) any |= ak[t] != 0.0f;
    if (!any) continue;
    __m256 v[4];
    LoadBlock32(dtype, rows[k] + at, v);
    for (int t = 0; t < NT; ++t) {
      if (ak[t] == 0.0f) continue;
      const __m256 at_t = _mm256_set1_ps(ak[t]);
      for (int j = 0; j < 4; ++j) acc[t][j] = _mm256_fmadd_ps(at_t, v[j], acc[t][j]);
    }
  }
  for (int t = 0; t < NT; ++t) {
    for (int j = 0; j < 4; ++j) _mm256_storeu_ps(y + t * y_stride + 8 * j, acc[t][j]);
  }
}
#endif

}  // namespace

void AxpyRow(DType dtype, const std::byte* w, uint32_t len, const float* a, uint32_t n_tokens,
             float* y, uint64_t y_stride) {
  CHECK(MatMulSupports(dtype));
  if (dtype == DType::kF32) {
    const float* v = reinterpret_cast<const float*>(w);
    for (uint32_t t = 0; t < n_tokens; ++t) {
      if (a[t] != 0.0f) AxpyF32(a[t], v, y + t * y_stride, len);
    }
    return;
  }
  if (dtype == DType::kQ4_K || dtype == DType::kQ6_K) {  // a super-block of 256 at a time
    const uint32_t per = layout::kKBlockValues;
    const uint64_t block_bytes = layout::RowBytes(dtype, per);
    float v[layout::kKBlockValues];
    for (uint32_t c = 0; c < len; c += per, w += block_bytes) {
      const uint32_t m = std::min(per, len - c);
      CHECK_OK(layout::DequantizeRow(dtype, ConstByteSpan(w, block_bytes), std::span<float>(v, m)));
      for (uint32_t t = 0; t < n_tokens; ++t) {
        if (a[t] != 0.0f) AxpyF32(a[t], v, y + t * y_stride + c, m);
      }
    }
    return;
  }
  // f16, q8_0, q4_0: 32 values at a time.
  const uint64_t block_bytes = layout::RowBytes(dtype, kBlock);
  float tmp[kBlock];
  for (uint32_t c = 0; c < len; c += kBlock, w += block_bytes) {
    const uint32_t m = std::min(kBlock, len - c);
#ifdef FLASHLM_AVX2
    if (m == kBlock) {
      __m256 v[4];
      LoadBlock32(dtype, w, v);
      for (uint32_t t = 0; t < n_tokens; ++t) {
        if (a[t] == 0.0f) continue;
        const __m256 at = _mm256_set1_ps(a[t]);
        float* yt = y + t * y_stride + c;
        for (int j = 0; j < 4; ++j) {
          _mm256_storeu_ps(yt + 8 * j, _mm256_fmadd_ps(at, v[j], _mm256_loadu_ps(yt + 8 * j)));
        }
      }
      continue;
    }
#endif
    CHECK_OK(layout::DequantizeRow(dtype, ConstByteSpan(w, layout::RowBytes(dtype, m)),
                                   std::span<float>(tmp, m)));
    for (uint32_t t = 0; t < n_tokens; ++t) {
      if (a[t] == 0.0f) continue;
      float* yt = y + t * y_stride + c;
      for (uint32_t i = 0; i < m; ++i) yt[i] += a[t] * tmp[i];
    }
  }
}

void AxpyRows(DType dtype, std::span<const std::byte* const> rows, uint64_t offset, uint32_t len,
              const float* a, uint64_t a_stride, uint32_t n_tokens, float* y, uint64_t y_stride) {
  CHECK(MatMulSupports(dtype));
  uint32_t done = 0;  // values handled by the register-blocked path
#ifdef FLASHLM_AVX2
  if (n_tokens > 1 && (dtype == DType::kF16 || dtype == DType::kQ8_0 || dtype == DType::kQ4_0)) {
    const uint64_t block_bytes = layout::RowBytes(dtype, kBlock);
    const uint32_t full = len / kBlock;
    for (uint32_t b = 0; b < full; ++b) {
      const uint64_t at = offset + b * block_bytes;
      for (uint32_t t0 = 0; t0 < n_tokens; t0 += 4) {
        const float* at0 = a + t0;
        float* yb = y + t0 * y_stride + uint64_t{b} * kBlock;
        switch (std::min(4u, n_tokens - t0)) {
          case 1:
            AxpyBlockRows<1>(dtype, rows, at, at0, a_stride, yb, y_stride);
            break;
          case 2:
            AxpyBlockRows<2>(dtype, rows, at, at0, a_stride, yb, y_stride);
            break;
          case 3:
            AxpyBlockRows<3>(dtype, rows, at, at0, a_stride, yb, y_stride);
            break;
          default:
            AxpyBlockRows<4>(dtype, rows, at, at0, a_stride, yb, y_stride);
            break;
        }
      }
    }
    done = full * kBlock;
  }
#endif
  if (done == len) return;
  // The rest (all of it for one token or other dtypes; else a partial last block), row by row.
  const uint64_t rest_offset = offset + layout::RowBytes(dtype, done);
  for (size_t k = 0; k < rows.size(); ++k) {
    AxpyRow(dtype, rows[k] + rest_offset, len - done, a + k * a_stride, n_tokens, y + done,
            y_stride);
  }
}

}  // namespace flashlm::engine
