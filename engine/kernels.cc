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
// Scratch bytes per token: int8 values, then one f32 scale per block.
uint64_t QTokenBytes(uint32_t cols) { return uint64_t{Blocks(cols)} * (kBlock + 4); }

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
                 const float* const* xd, float* out) {
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
    default:
      CHECK(false && "unsupported dtype in MatMul");
  }
}

bool IsBlockType(DType t) { return t == DType::kQ8_0 || t == DType::kQ4_0; }

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
    const float* xt = x.data() + uint64_t{t} * cols;
    for (uint32_t b = 0; b < nb; ++b) {
      const uint32_t c0 = b * kBlock, n = std::min(kBlock, cols - c0);
      float amax = 0.0f;
      for (uint32_t j = 0; j < n; ++j) amax = std::max(amax, std::fabs(xt[c0 + j]));
      const float scale = amax / 127.0f;
      const float inv = scale != 0.0f ? 1.0f / scale : 0.0f;
      for (uint32_t j = 0; j < kBlock; ++j) {
        q[c0 + j] = j < n ? static_cast<int8_t>(std::nearbyint(xt[c0 + j] * inv)) : 0;
      }
      d[b] = scale;
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
    for (uint32_t i = 0; i < nt; ++i) {
      xs[i] = x.data() + uint64_t{t0 + i} * w.cols;
      if (quantized) {
        const std::byte* base = quantized_x.data() + (t0 + i) * QTokenBytes(w.cols);
        xq[i] = reinterpret_cast<const int8_t*>(base);
        xd[i] = reinterpret_cast<const float*>(base + uint64_t{nb} * kBlock);
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
          RowDispatch<1>(w, r, xs, xq, xd, out);
          break;
        case 2:
          RowDispatch<2>(w, r, xs, xq, xd, out);
          break;
        case 3:
          RowDispatch<3>(w, r, xs, xq, xd, out);
          break;
        default:
          RowDispatch<4>(w, r, xs, xq, xd, out);
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
  // f16, q8_0, q4_0: 32 values at a time.
  const uint64_t block_bytes = layout::RowBytes(dtype, kBlock);
  float tmp[kBlock];
  for (uint32_t c = 0; c < len; c += kBlock, w += block_bytes) {
    const uint32_t m = std::min(kBlock, len - c);
#ifdef FLASHLM_AVX2
    if (m == kBlock) {
      __m256 v[4];
      if (dtype == DType::kF16) {
        for (int j = 0; j < 4; ++j) {
          v[j] = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + 16 * j)));
        }
      } else {
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

}  // namespace flashlm::engine
