#include "engine/kernels.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
// GCC 12's AVX-512 intrinsics (extract / insert of 256-bit halves) pass an undefined vector as
// the unused merge source, which -Wuninitialized reports at every inlined use.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
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
constexpr uint64_t kRowPanelBytes = 256 << 10;      // MatMulRows' generic path: a batch's panel

uint32_t Blocks(uint32_t cols) { return static_cast<uint32_t>(CeilDiv(cols, kBlock)); }
// Scratch bytes per token: int8 values, then one f32 scale per block, then per block the scale
// times the sum of the block's int8 values (q4_K's min term), then per block the int32 sum of
// the block's int8 values (q4_0's offset of 8), then per block the int32 sums of its two halves
// of 16 (q6_K's offset of 32, whose scales change every 16 values).
uint64_t QTokenBytes(uint32_t cols) { return uint64_t{Blocks(cols)} * (kBlock + 20); }
// Token t's parts of that scratch (nb = Blocks(cols)).
struct QToken {
  const int8_t* q;            // [nb x 32] int8 values
  const float* d;             // [nb] block scales
  const float* dsum;          // [nb] scale x sum of the block's int8 values
  const int32_t* isum;        // [nb] int32 sums of the blocks' int8 values
  const int32_t* half_isum;   // [2 nb] int32 sums of each block's two halves of 16
};
inline QToken QTokenAt(ConstByteSpan scratch, uint32_t cols, uint32_t t) {
  const uint32_t nb = Blocks(cols);
  const std::byte* base = scratch.data() + t * QTokenBytes(cols);
  QToken x;
  x.q = reinterpret_cast<const int8_t*>(base);
  x.d = reinterpret_cast<const float*>(base + uint64_t{nb} * kBlock);
  x.dsum = x.d + nb;
  x.isum = reinterpret_cast<const int32_t*>(x.dsum + nb);
  x.half_isum = x.isum + nb;
  return x;
}

// Rows [first, first + count) of row-major `w` that lie below row_end, the bytes a kernel asks
// for ahead of reading them: empty (no pointer past the matrix) when first >= row_end.
inline ConstByteSpan RowsAhead(const MatrixView& w, uint32_t first, uint32_t count,
                               uint32_t row_end) {
  if (first >= row_end) return {};
  const uint64_t rb = w.row_bytes();
  return w.bytes.subspan(uint64_t{first} * rb, uint64_t{std::min(count, row_end - first)} * rb);
}

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
// The largest of 8 lanes by _mm_max_ps's rule (the second operand where either is NaN), folding
// the upper half onto the lower three times, as HorizontalSum does.
inline float HorizontalMax(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_movehdup_ps(m));
  return _mm_cvtss_f32(m);
}
// 32 nibbles of a q4_0 block as int8 values in [-8, 7], in value order.
inline __m256i UnpackQ4(const std::byte* q) {
  const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q));
  // Low nibbles in the low half, high ones in the high half, then one 256-bit mask.
  const __m256i nibbles =
      _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(bytes, 4), bytes), _mm256_set1_epi8(0x0F));
  return _mm256_sub_epi8(nibbles, _mm256_set1_epi8(8));
}
#endif

// a * b rounded to f32 and never fused into the addition that follows: the scalar tails of the
// f32 dot products (RowFloat, TileFloat, AttentionDotRows) add their products one by one this
// way, so that they agree bit for bit whatever the compiler would contract at each site. (The axpy
// tails fuse, explicitly: std::fma.)
inline float UnfusedProduct(float a, float b) {
  float p = a * b;
#if defined(__SSE__)
  __asm__("" : "+x"(p));
#endif
  return p;
}

// ---- Prefetching ------------------------------------------------------------------------------
// (__builtin_prefetch(p, 0, 3) is _mm_prefetch(p, _MM_HINT_T0): a read, into L1.)

// Requests the kBytes bytes at p into L1: one request a 64 bytes from p and, where kLastByte, one
// for the last byte too (for a run that may not start on a 64-byte line).
template <uint64_t kBytes, bool kLastByte = true>
__attribute__((always_inline)) inline void PrefetchBytes(const std::byte* p) {
  for (uint64_t l = 0; l < kBytes; l += 64) __builtin_prefetch(p + l, 0, 3);
  if constexpr (kLastByte) __builtin_prefetch(p + kBytes - 1, 0, 3);
}

// Asks for the block_bytes-byte block at byte `next` of `row` (both its ends) if `next` is not 0:
// the batch down tiles (AxpyRows) pass the offset of the block after the one they are adding, so
// each row's next block is on its way a whole pass over the rows ahead of use. (Measured,
// bench/engine/ffn_bench.cc, 1b shape, 16 tokens, regrouped bundles, 3 interleaved rounds: q8_0
// 150-165 -> 132-135 ms at 1 thread and 83-88 -> 75-79 at 2, q4_0 134-140 -> 125-130 and
// 77-97 -> 72-79, every round; asking for the same block of the row 16 rows on, as before, left
// the tiles waiting on those loads. The q4_K / q6_K tiles, which dequantise into L1 first, gained
// nothing from it. docs/benchmarks.md, "Batches ask for the next block".)
__attribute__((always_inline)) inline void PrefetchNextBlock(const std::byte* row, uint64_t next,
                                                             uint64_t block_bytes) {
  if (next == 0) return;
  __builtin_prefetch(row + next, 0, 3);
  __builtin_prefetch(row + next + block_bytes - 1, 0, 3);
}

// ---- f32 / f16 / bf16 rows against NT f32 token vectors ------------------------------------
// kT, the rows' dtype: kF32, kF16 or kBF16. f16 and bf16 values are widened to f32 as they are
// loaded (bf16 exactly: its 16 bits are the top half of an f32's) and then take the f32 path.

template <DType kT>
constexpr uint32_t kFloatBytes = kT == DType::kF32 ? 4 : 2;

// Value c of such a row, as f32.
template <DType kT>
inline float RowValue(const std::byte* row, uint32_t c) {
  if constexpr (kT == DType::kF16) {
    return HalfToFloat(row + 2 * c);
  } else if constexpr (kT == DType::kBF16) {
    uint16_t h;
    std::memcpy(&h, row + 2 * c, 2);
    return layout::BF16ToF32(h);
  } else {
    return reinterpret_cast<const float*>(row)[c];
  }
}
#ifdef FLASHLM_AVX2
// 8 values of such a row from column c, as f32.
template <DType kT>
__attribute__((always_inline)) inline __m256 LoadRow8(const std::byte* row, uint32_t c) {
  if constexpr (kT == DType::kF16) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 2 * c)));
  } else if constexpr (kT == DType::kBF16) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 2 * c));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  } else {
    return _mm256_loadu_ps(reinterpret_cast<const float*>(row) + c);
  }
}
#endif

// An f32 matrix in strips (InterleaveStrips) keeps its rows kF32StripRows at a time, each group
// as kF32ChunkCols-column pieces of its rows, piece by piece: columns [0, 256) of rows 0 and 1 (1
// KiB each, row order), then columns [256, 512) of rows 0 and 1, and so on. So row i of a group
// starts at float 256i of it, and its column c is (c / 256) * 256 floats further on than in a
// row-major row (kF32ChunkSkip). Decode then reads one stream and each 1 KiB of activations
// meets two rows in a row, where a row-major row walks all of the activations once per row.
// Two rows: groups of 4 decoded 5-14% slower than row-major rows at the AMD EPYC's fast moments,
// groups of 2 faster at all of them (docs/benchmarks.md, "f32 rows in groups of four").
constexpr uint32_t kF32StripRows = 2;
constexpr uint32_t kF32ChunkCols = 256;
constexpr uint32_t kF32ChunkSkip = (kF32StripRows - 1) * kF32ChunkCols;

#if defined(FLASHLM_AVX2) && defined(__AVX512F__) && defined(__AVX512DQ__)
#define FLASHLM_AVX512 1
// The reduction RowFloat's AVX2 path ends with (its two 8-lane accumulators added, then
// HorizontalSum), applied to one 16-lane accumulator (RowFloat's on AVX-512, the
// tiles'): lane i of it takes the same fused terms in the same order as lane i % 8 of the AVX2
// path's accumulator i / 8, so every (row, token) dot product is bit-identical whichever path
// computes it (batch prefill and one-token decode agree exactly).
inline float ReduceLikeRowF32(__m512 v) {
  return HorizontalSum(_mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1)));
}

// 16 values of an f32, f16 or bf16 row from column c, as f32.
template <DType kT>
__attribute__((always_inline)) inline __m512 LoadRow16(const std::byte* row, uint32_t c) {
  if constexpr (kT == DType::kF16) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + 2 * c)));
  } else if constexpr (kT == DType::kBF16) {
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + 2 * c));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  } else {
    return _mm512_loadu_ps(reinterpret_cast<const float*>(row) + c);
  }
}

#endif

#ifdef FLASHLM_AVX2
// ---- f32 register tiles: their vectors, by ISA ------------------------------------------------
// A tile's accumulator for one (row, token) covers 16 columns at a time, as the one-token rows
// (RowFloat) do: one zmm on AVX-512, two ymm halves on AVX2 (columns c .. c + 7 and c + 8 .. c +
// 15 of each 16), reduced as RowFloat reduces them (ReduceTile), so that a tile's results are
// RowFloat's bits on either ISA. Tile shapes fit the register file: 4 rows x 6 tokens of zmm
// (24 accumulators + 4 weight vectors + 1 token vector of 32) on AVX-512, 3 rows x 4 tokens of
// ymm (12 + 3 + 1 of 16) on AVX2, a half at a time (TileFloat).
#ifdef FLASHLM_AVX512
using TileVec = __m512;
constexpr int kTileParts = 1;         // vectors per 16 columns
constexpr uint32_t kTileRowsF32 = 4;  // rows per tile
constexpr uint32_t kGroupF32 = 6;     // tokens per tile
inline TileVec TileZero() { return _mm512_setzero_ps(); }
inline TileVec TileLoad(const float* p) { return _mm512_loadu_ps(p); }
inline void TileStore(float* p, TileVec v) { _mm512_storeu_ps(p, v); }
inline TileVec TileFma(TileVec a, TileVec b, TileVec c) { return _mm512_fmadd_ps(a, b, c); }
template <DType kT>
__attribute__((always_inline)) inline TileVec LoadTileRow(const std::byte* row, uint32_t c) {
  return LoadRow16<kT>(row, c);
}
inline float ReduceTile(const TileVec* parts) { return ReduceLikeRowF32(parts[0]); }
#else
using TileVec = __m256;
constexpr int kTileParts = 2;
constexpr uint32_t kTileRowsF32 = 3;
constexpr uint32_t kGroupF32 = 4;
inline TileVec TileZero() { return _mm256_setzero_ps(); }
inline TileVec TileLoad(const float* p) { return _mm256_loadu_ps(p); }
inline void TileStore(float* p, TileVec v) { _mm256_storeu_ps(p, v); }
inline TileVec TileFma(TileVec a, TileVec b, TileVec c) { return _mm256_fmadd_ps(a, b, c); }
template <DType kT>
__attribute__((always_inline)) inline TileVec LoadTileRow(const std::byte* row, uint32_t c) {
  return LoadRow8<kT>(row, c);
}
inline float ReduceTile(const TileVec* parts) {
  return HorizontalSum(_mm256_add_ps(parts[0], parts[1]));
}
#endif
constexpr uint32_t kTileLanes = 16 / kTileParts;

// R rows x NT tokens of f32, f16 or bf16 rows at once (prefill): R x NT accumulators (each
// kTileParts vectors) in registers, so each loaded weight vector meets NT tokens and each token
// vector R rows. One call covers columns [c0, c1) (multiples of 16); the accumulators start at
// zero when c0 == 0, else are loaded from `acc_mem` ([R][NT][16] floats), and are stored back
// there unless `last`. The call with `last` reduces them and adds columns c1 .. n - 1 one by one,
// as RowFloat does: each lane takes the same fused terms in the same order however the columns
// are split, so results are bit-identical to those.
// The parts go one after the other over [c0, c1) (on AVX2 the low halves of every (row, token),
// then the high halves), so a tile holds R x NT accumulators, not R x NT x kTileParts: AVX2's 3 x
// 4 tile is 12 of its 16 ymm, with 3 weight vectors and 1 token vector, 7 loads for 12 FMAs. The
// second pass reads the rows' and tokens' slices from L1. Each lane still takes its columns in
// order, so the same bits.
// Row r's column c is value c + (c / kF32ChunkCols) * skip from w[r]: skip is 0 for row-major
// rows, kF32ChunkSkip for f32 rows in strips (which have no columns past c1).
template <int R, int NT, DType kT>
void TileFloat(const std::byte* const* w, uint32_t skip, const float* const* x, uint32_t c0,
               uint32_t c1, uint32_t n, bool last, float* acc_mem, float* out /*[R][NT]*/) {
  TileVec acc[R][NT];
  TileVec parts[R][NT][kTileParts];  // every part's sums, with `last`, for ReduceTile
  for (int p = 0; p < kTileParts; ++p) {
    for (int r = 0; r < R; ++r) {
      for (int t = 0; t < NT; ++t) {
        acc[r][t] = c0 == 0 ? TileZero() : TileLoad(acc_mem + (r * NT + t) * 16 + p * kTileLanes);
      }
    }
    // Whole pieces of kF32ChunkCols columns where skip != 0 (one piece, [c0, c1), where it is 0).
    for (uint32_t p0 = c0; p0 < c1;) {
      const uint32_t p1 = skip == 0 ? c1 : std::min(c1, (p0 / kF32ChunkCols + 1) * kF32ChunkCols);
      const uint64_t shift = uint64_t{p0 / kF32ChunkCols} * skip * kFloatBytes<kT>;
      const std::byte* wp[R];
      for (int r = 0; r < R; ++r) {
        wp[r] = w[r] + shift;
        // Opaque, so that GCC does not keep w[r] and `shift` apart and add them at every load: with
        // 6 token pointers the extra register spills onto the loop's address path.
        __asm__("" : "+r"(wp[r]));
      }
      for (uint32_t c = p0 + p * kTileLanes; c < p1; c += 16) {
        TileVec wv[R];
        for (int r = 0; r < R; ++r) wv[r] = LoadTileRow<kT>(wp[r], c);
        for (int t = 0; t < NT; ++t) {
          TileVec xv = TileLoad(x[t] + c);
          // Keeps xv in a register: GCC otherwise folds the load into each of the R FMAs, R loads
          // where one serves (2x slower 110m f32 prefill matmuls: the loop is load-bound then).
          __asm__("" : "+v"(xv));
          for (int r = 0; r < R; ++r) acc[r][t] = TileFma(wv[r], xv, acc[r][t]);
        }
      }
      p0 = p1;
    }
    for (int r = 0; r < R; ++r) {
      for (int t = 0; t < NT; ++t) {
        if (last) {
          parts[r][t][p] = acc[r][t];
        } else {
          TileStore(acc_mem + (r * NT + t) * 16 + p * kTileLanes, acc[r][t]);
        }
      }
    }
  }
  if (!last) return;
  for (int r = 0; r < R; ++r) {
    for (int t = 0; t < NT; ++t) {
      float s = ReduceTile(parts[r][t]);
      for (uint32_t k = c1; k < n; ++k) s += UnfusedProduct(RowValue<kT>(w[r], k), x[t][k]);
      out[r * NT + t] = s;
    }
  }
}
#endif

// On AVX-512, RowFloat asks for the row's bytes this far ahead as they read (prefetches
// never fault, so past a row's or a buffer's end is harmless). Decode of the 1b model at 1
// thread, against no prefetch, on an Intel Xeon: f32 3.8 -> 4.2 tok/s, f16 6.8 -> 8.5
// (docs/benchmarks.md, "f16 prefill tiles; f32 / f16 rows prefetched ahead"); 1 KiB was
// half-way, f16 levels off from 4 KiB, f32 was no faster at 3-4 KiB. On an AMD EPYC (Zen 5) the
// f32 prefetch cost more than it gave (1b f32 at 1 thread: 4.9 with it against 6.3 tok/s without,
// "f32 rows without the prefetch on AMD"), while f16's still helped (9.7-10.0 against 8.5-8.8), so
// f32 rows are prefetched on other CPUs only: RowPrefetchF32(), fixed at start-up.
constexpr uint64_t kRowPrefetchBytesF32 = 2048;
constexpr uint64_t kRowPrefetchBytesF16 = 4096;  // bf16 too (not swept on its own)

// f32, f16 or bf16 rows: per token, 16 lanes of fused products over the columns up
// to the last multiple of 16 (one zmm accumulator on AVX-512, two 8-lane ones on AVX2: the same
// sums), reduced as ReduceLikeRowF32 does, then the rest one by one (UnfusedProduct). The tiles
// (TileFloat) give the same bits for a batch.
// kPrefetch: whether the AVX-512 path prefetches ahead (the sums are the same either way).
template <int NT, DType kT, bool kPrefetch = true>
void RowFloat(const std::byte* w, const float* const* x, uint32_t n, float* out) {
  uint32_t c = 0;
  float sums[NT] = {};
#if defined(FLASHLM_AVX512)
  constexpr uint64_t kAhead = kT == DType::kF32 ? kRowPrefetchBytesF32 : kRowPrefetchBytesF16;
  __m512 acc[NT];
  for (int t = 0; t < NT; ++t) acc[t] = _mm512_setzero_ps();
  for (; c + 16 <= n; c += 16) {
    if constexpr (kPrefetch) {
      _mm_prefetch(reinterpret_cast<const char*>(w + kFloatBytes<kT> * uint64_t{c} + kAhead),
                   _MM_HINT_T0);
    }
    const __m512 wv = LoadRow16<kT>(w, c);
    for (int t = 0; t < NT; ++t) acc[t] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(x[t] + c), acc[t]);
  }
  for (int t = 0; t < NT; ++t) sums[t] = ReduceLikeRowF32(acc[t]);
#elif defined(FLASHLM_AVX2)
  __m256 acc[NT][2];
  for (int t = 0; t < NT; ++t) acc[t][0] = acc[t][1] = _mm256_setzero_ps();
  for (; c + 16 <= n; c += 16) {
    const __m256 w0 = LoadRow8<kT>(w, c), w1 = LoadRow8<kT>(w, c + 8);
    for (int t = 0; t < NT; ++t) {
      acc[t][0] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x[t] + c), acc[t][0]);
      acc[t][1] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x[t] + c + 8), acc[t][1]);
    }
  }
  for (int t = 0; t < NT; ++t) sums[t] = HorizontalSum(_mm256_add_ps(acc[t][0], acc[t][1]));
#endif
  for (; c < n; ++c) {
    const float wv = RowValue<kT>(w, c);
    for (int t = 0; t < NT; ++t) sums[t] += UnfusedProduct(wv, x[t][c]);
  }
  for (int t = 0; t < NT; ++t) out[t] = sums[t];
}
// Whether this is an AMD CPU ("AuthenticAMD"), fixed at start-up. Some prefetch settings tuned
// on the Intel Xeon of docs/benchmarks.md measured otherwise on its AMD EPYC (Zen 5): f32 rows
// (RowPrefetchF32) and q4_K / q6_K strips in decode (kDecodeAheadAmd).
bool AmdCpu() {
#if defined(FLASHLM_AVX2)
  static const bool amd = [] {
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (__get_cpuid(0, &a, &b, &c, &d) == 0) return false;
    // The vendor string "AuthenticAMD" is in ebx, edx, ecx.
    char vendor[12];
    std::memcpy(vendor, &b, 4), std::memcpy(vendor + 4, &d, 4), std::memcpy(vendor + 8, &c, 4);
    return std::memcmp(vendor, "AuthenticAMD", 12) == 0;
  }();
  return amd;
#else
  return false;
#endif
}
// Whether f32 rows are prefetched ahead: not on AMD CPUs (see kRowPrefetchBytesF32).
bool RowPrefetchF32() { return !AmdCpu(); }
template <int NT>
void RowF32(const float* w, const float* const* x, uint32_t n, float* out) {
  const std::byte* row = reinterpret_cast<const std::byte*>(w);
  if (RowPrefetchF32()) return RowFloat<NT, DType::kF32, true>(row, x, n, out);
  RowFloat<NT, DType::kF32, false>(row, x, n, out);
}

// ---- q8_0 / q4_0 rows against NT q8-quantised token vectors ---------------------------------
// xq[t] points at a token's int8 values, xd[t] at its per-block scales.

// Portable builds only: every AVX2 build multiplies q8_0 and q4_0 in strips (MatMulRowsStrips8,
// or the 512-bit kernels).
template <int NT, bool kQ4>
void RowQ(const std::byte* w, const int8_t* const* xq, const float* const* xd, uint32_t nb,
          float* out) {
  constexpr uint32_t kBytes = kQ4 ? kQ4Bytes : kQ8Bytes;
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

template <int NT>
void RowQ4K(const std::byte* w, const int8_t* const* xq, const float* const* xd,
            const float* const* xs, uint32_t nb, float* out) {
  const uint32_t nsb = static_cast<uint32_t>(CeilDiv(nb, 8));
  // Portable builds only: AVX2 builds multiply q4_K in strips (MatMulRowsKStrips8, or the
  // 512-bit StripQ4K).
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
}

template <int NT>
void RowQ6K(const std::byte* w, const int8_t* const* xq, const float* const* xd,
            const float* const* xs, uint32_t nb, float* out) {
  const uint32_t nsb = static_cast<uint32_t>(CeilDiv(nb, 8));
  // Portable builds only: AVX2 builds multiply q6_K in strips (MatMulRowsKStrips8, or the
  // 512-bit StripQ6K).
  (void)xs;  // the offset is subtracted per value
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
}

#if defined(FLASHLM_AVX512) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
#define FLASHLM_AVX512_VNNI 1
#endif

#ifdef FLASHLM_AVX512_VNNI
// ---- q4_0 and q8_0 in strips of 16 rows (512-bit VNNI; AMX for q8_0 batches) ---------------
// One zmm lane per weight row: a block's values of 16 rows are transposed in registers (4 bytes
// per row and lane: q4_0's nibbles, q8_0's bytes), so one vpdpbusd multiplies 4 values of 16 rows
// by the same 4 activation bytes (a broadcast), and one block's 8 vpdpbusd leave each lane with
// its row's exact int32 block product. The f32 work (convert, scale, add) then runs once per
// block for 16 rows. vpdpbusd multiplies unsigned by signed bytes: q4_0's nibbles are unsigned
// (stored value + 8) and q8_0's signed bytes are made so by adding 128 (xor 0x80) as they are
// used; the int32 accumulator starts at -8 (q4_0) or -128 (q8_0) times the sum of the block's
// activation values, so the block product is exact.
// Every lane accumulates sum over blocks b in order of f32(dot_b) * (dw_b * dx_b) with one fused
// multiply-add per block, so a (row, token) result depends on neither the batch, the token's
// place in it, the strip's other rows nor the thread split: prefill and decode are bit-identical.
// q8_0 batches on a CPU with AMX-INT8 take the exact int32 block products from tile multiplies
// instead (AmxStripTokens) and then run the same f32 operations per lane: the same results.
constexpr uint32_t kStrip = 16;        // rows per strip (zmm lanes)
constexpr uint32_t kStripChunk = 32;   // blocks packed at a time (18 KiB, stays in L1)
constexpr uint32_t kStripTokens = 8;   // tokens per pass over a packed chunk
// q4_0 decode prefetches the strip this many strips ahead as it reads one (2: 3-12% faster than 1
// on matrices streamed from DRAM in a microbenchmark, /work/bench/q4/mbcold.cc). q8_0's strips
// are twice as long and are prefetched row by row instead (kQ8PrefetchPairs).
constexpr uint32_t kPrefetchStrips = 2;
// q8_0 decode prefetches, at block pair p of a strip, pair p + kQ8PrefetchPairs of each of its 16
// rows (past the rows' end, of the next strip's rows): 16 x 272 bytes ahead.
constexpr uint32_t kQ8PrefetchPairs = 4;
constexpr uint32_t kQ8PairBytes = 2 * kQ8Bytes;  // a row's two blocks, 68 bytes

template <bool kQ8>
constexpr int kStripBias = kQ8 ? -128 : -8;  // times the activation block sum: the start value

// A block's 4-byte groups as vpdpbusd's unsigned operand: q8_0's signed bytes + 128.
template <bool kQ8>
__attribute__((always_inline)) inline __m512i StripValues(__m512i v) {
  if constexpr (kQ8) return _mm512_xor_si512(v, _mm512_set1_epi8(static_cast<char>(0x80)));
  return v;
}

// A region a caller reads after the current strip (DotRows' `ahead`), prefetched into L2 a slice
// per step of the strip kernel, so that its reads overlap the strip's compute instead of running
// before it: Slice(i) asks for bytes [i * step, (i + 1) * step) (whole lines).
struct AheadRegion {
  const std::byte* p = nullptr;
  uint64_t bytes = 0, step = 0;
  AheadRegion() = default;
  AheadRegion(ConstByteSpan region, uint32_t steps)
      : p(region.data()), bytes(region.size()), step(CeilDiv(CeilDiv(bytes, steps), 64) * 64) {}
  __attribute__((always_inline)) void Slice(uint32_t i) const {
    const uint64_t end = std::min(bytes, (uint64_t{i} + 1) * step);
    for (uint64_t o = uint64_t{i} * step; o < end; o += 64) {
      _mm_prefetch(reinterpret_cast<const char*>(p + o), _MM_HINT_T1);
    }
  }
};

// The strip of rows [r0, r0 + nr) of a matrix, nr = min(16, row_end - r0): row[i] = row r0 + i
// (rows past nr repeat the last one; their lanes are computed and dropped), offsets lane i =
// row[i] - row[0] in bytes (the gathers' indices: int32, which the callers CHECK), mask = the nr
// valid lanes. next / next_bytes: the strip `prefetch_strips` further on and its size (0 past
// row_end), which the kernels prefetch in step as they read this one (16 row streams read a few
// bytes at a time defeat the hardware prefetchers once the matrix is beyond the caches).
struct StripRows {
  const std::byte* row[kStrip];
  __m512i offsets;
  uint32_t nr;
  __mmask16 mask;
  const std::byte* next;
  uint64_t next_bytes;
  // DotRows' `ahead` region (empty elsewhere): slice i of it is prefetched at the kernel's step i.
  AheadRegion ahead;
};
inline void SetUpStrip(const MatrixView& w, uint32_t r0, uint32_t row_end, StripRows* s,
                       uint32_t prefetch_strips = kPrefetchStrips) {
  const uint64_t rb = w.row_bytes();
  s->nr = std::min(kStrip, row_end - r0);
  s->mask = static_cast<__mmask16>((1u << s->nr) - 1);
  alignas(64) int32_t off[kStrip];
  for (uint32_t i = 0; i < kStrip; ++i) {
    off[i] = static_cast<int32_t>(std::min(i, s->nr - 1) * rb);
    s->row[i] = w.bytes.data() + r0 * rb + off[i];
  }
  s->offsets = _mm512_load_si512(off);
  const ConstByteSpan next = RowsAhead(w, r0 + prefetch_strips * kStrip, kStrip, row_end);
  s->next = next.data();
  s->next_bytes = next.size();
}

// Prefetches unit u + kAhead (units of kBytes: a q4_K / q6_K super-block, a q8_0 block pair) of
// the strip's rows row[0..15] (rb bytes per row, nu units a row), or past their end the same unit
// counted on into the next strip (next, next_bytes long).
template <uint32_t kBytes, uint32_t kAhead>
__attribute__((always_inline)) inline void PrefetchStripAhead(const std::byte* const* row,
                                                              uint64_t rb, uint32_t u, uint32_t nu,
                                                              const std::byte* next,
                                                              uint64_t next_bytes) {
  const uint32_t au = u + kAhead;
  for (uint32_t r = 0; r < kStrip; ++r) {
    const std::byte* p;
    if (au < nu) {
      p = row[r] + uint64_t{au} * kBytes;
    } else {
      const uint64_t q = r * rb + uint64_t{au - nu} * kBytes;
      if (q >= next_bytes) break;  // q grows with r
      p = next + q;
    }
    const uintptr_t end = reinterpret_cast<uintptr_t>(p) + kBytes;
    for (uintptr_t l = reinterpret_cast<uintptr_t>(p) & ~uintptr_t{63}; l < end; l += 64) {
      _mm_prefetch(reinterpret_cast<const char*>(l), _MM_HINT_T0);
    }
  }
}

// One block of a strip, transposed: w[k] lane i holds row i's 4 values that meet activation
// bytes 4k .. 4k+3 of the block; d lane i is row i's scale.
// - q4_0: nibbles 0..15 (k < 4: low nibbles of bytes 4k..4k+3; k >= 4: high nibbles of bytes
//   4(k-4)..4(k-4)+3, i.e. values 16 + 4(k-4) ...).
// - q8_0: the signed bytes as stored (AMX multiplies them so; StripValues adds 128 for VNNI).
// The layout is AMX's for a tile operand B of 8 rows x 64 bytes (row k: each weight row's 4
// bytes).
struct alignas(64) PackedBlock {
  __m512i w[8];
  __m512 d;
};

// Rows' 16 bytes at byte offset q, transposed: t[k] dword i = row i's dword k (lanes in row order).
__attribute__((always_inline)) inline void TransposeRows16(const std::byte* const* row,
                                                           uint64_t q, __m512i* t) {
  auto load = [&](int r) { return _mm_loadu_si128(reinterpret_cast<const __m128i*>(row[r] + q)); };
  __m512i z[4];
  for (int m = 0; m < 4; ++m) {
    __m512i v = _mm512_castsi128_si512(load(m));
    v = _mm512_inserti32x4(v, load(4 + m), 1);
    v = _mm512_inserti32x4(v, load(8 + m), 2);
    z[m] = _mm512_inserti32x4(v, load(12 + m), 3);
  }
  const __m512i a0 = _mm512_unpacklo_epi32(z[0], z[1]), a1 = _mm512_unpackhi_epi32(z[0], z[1]);
  const __m512i a2 = _mm512_unpacklo_epi32(z[2], z[3]), a3 = _mm512_unpackhi_epi32(z[2], z[3]);
  t[0] = _mm512_unpacklo_epi64(a0, a2);
  t[1] = _mm512_unpackhi_epi64(a0, a2);
  t[2] = _mm512_unpacklo_epi64(a1, a3);
  t[3] = _mm512_unpackhi_epi64(a1, a3);
}

// Rows' 32 bytes at byte offset q, transposed: t[k] dword i = row i's dword k, k < 8 (what
// TransposeRows16 at q and q + 16 give: 16 loads, 8 inserts, 16 unpacks and 8 permutes instead
// of 32 loads, 24 inserts and 16 unpacks; DotRows on bundle rows in L2 went 8-20% faster,
// docs/benchmarks.md, "Rows transposed 32 bytes at a time"). Each zmm starts as
// rows m and m + 8 (one 32-byte load into each half); the two halves are then two 8 x 8 dword
// transposes side by side: dwords within 128-bit lanes, then qwords, then 128-bit lanes across
// the pair of registers.
__attribute__((always_inline)) inline void TransposeRows16x8(const std::byte* const* row,
                                                             uint64_t q, __m512i* t) {
  auto load = [&](int r) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row[r] + q));
  };
  __m512i v[8];
  for (int m = 0; m < 8; ++m) {
    v[m] = _mm512_inserti64x4(_mm512_castsi256_si512(load(m)), load(8 + m), 1);
  }
  __m512i a[8], b[8];
  for (int g = 0; g < 2; ++g) {  // rows 4g .. 4g + 3 (and 8 + 4g ..)
    const __m512i* x = v + 4 * g;
    __m512i* y = a + 4 * g;
    y[0] = _mm512_unpacklo_epi32(x[0], x[1]), y[1] = _mm512_unpackhi_epi32(x[0], x[1]);
    y[2] = _mm512_unpacklo_epi32(x[2], x[3]), y[3] = _mm512_unpackhi_epi32(x[2], x[3]);
    __m512i* z = b + 4 * g;  // z[j] 128-bit lane l: those rows' dword 4 * (l % 2) + j
    z[0] = _mm512_unpacklo_epi64(y[0], y[2]), z[1] = _mm512_unpackhi_epi64(y[0], y[2]);
    z[2] = _mm512_unpacklo_epi64(y[1], y[3]), z[3] = _mm512_unpackhi_epi64(y[1], y[3]);
  }
  // t[j] = lanes 0 and 2 of b[j] and b[4 + j] (dword j), t[4 + j] = lanes 1 and 3 (dword 4 + j),
  // in row order: rows 0-3, 4-7, 8-11, 12-15.
  const __m512i lo = _mm512_setr_epi64(0, 1, 8, 9, 4, 5, 12, 13);
  const __m512i hi = _mm512_setr_epi64(2, 3, 10, 11, 6, 7, 14, 15);
  for (int j = 0; j < 4; ++j) {
    t[j] = _mm512_permutex2var_epi64(b[j], lo, b[4 + j]);
    t[4 + j] = _mm512_permutex2var_epi64(b[j], hi, b[4 + j]);
  }
}

// Block b of the 16 rows row[0..15] (each the start of a q4_0 / q8_0 row) in PackedBlock's form,
// in registers. offsets lane i = row[i] - row[0] (for the scales' gather).
template <bool kQ8>
__attribute__((always_inline)) inline void LoadBlock(const std::byte* const* row, __m512i offsets,
                                                     uint32_t b, __m512i* w, __m512* d) {
  if constexpr (kQ8) {
    const uint64_t off = uint64_t{b} * kQ8Bytes;
    TransposeRows16x8(row, off + 2, w);
    const __m512i h = _mm512_i32gather_epi32(offsets, row[0] + off, 1);
    *d = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(h));
  } else {
    const uint64_t off = uint64_t{b} * kQ4Bytes;
    __m512i t[4];
    TransposeRows16(row, off + 2, t);
    const __m512i low4 = _mm512_set1_epi8(0x0F);
    for (int k = 0; k < 4; ++k) {
      w[k] = _mm512_and_si512(t[k], low4);
      w[4 + k] = _mm512_and_si512(_mm512_srli_epi16(t[k], 4), low4);
    }
    // The f16 scale is the low half of the 4 bytes at each row's block start.
    const __m512i h = _mm512_i32gather_epi32(offsets, row[0] + off, 1);
    *d = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(h));
  }
}

template <bool kQ8>
inline void PackBlock(const std::byte* const* row, __m512i offsets, uint32_t b, PackedBlock* out) {
  __m512i w[8];
  __m512 d;
  LoadBlock<kQ8>(row, offsets, b, w, &d);
  for (int k = 0; k < 8; ++k) _mm512_store_si512(&out->w[k], w[k]);
  _mm512_store_ps(&out->d, d);
}

// Blocks [b0, b0 + n) of a packed strip (pk[j] is block b0 + j) against NT tokens: acc[t] lane i
// += the blocks' products of row i and token t, in block order.
template <bool kQ8, int NT>
void StripBlocks(const PackedBlock* pk, uint32_t b0, uint32_t n, const int8_t* const* xq,
                 const float* const* xd, const int32_t* const* xi, __m512* acc) {
  // With few tokens, two int32 accumulators per token (even / odd k) shorten the vpdpbusd
  // dependency chain; integer sums are exact, so this does not change any result.
  constexpr int S = NT <= 4 ? 2 : 1;
  for (uint32_t j = 0; j < n; ++j) {
    const uint32_t b = b0 + j;
    const PackedBlock& p = pk[j];
    __m512i ia[NT][S];
    for (int t = 0; t < NT; ++t) {
      ia[t][0] = _mm512_set1_epi32(kStripBias<kQ8> * xi[t][b]);
      if constexpr (S == 2) ia[t][1] = _mm512_setzero_si512();
    }
    for (int k = 0; k < 8; ++k) {
      const __m512i wk = StripValues<kQ8>(_mm512_load_si512(&p.w[k]));
      for (int t = 0; t < NT; ++t) {
        int32_t x4;
        std::memcpy(&x4, xq[t] + uint64_t{b} * kBlock + 4 * k, 4);
        ia[t][k % S] = _mm512_dpbusd_epi32(ia[t][k % S], wk, _mm512_set1_epi32(x4));
      }
    }
    const __m512 dw = _mm512_load_ps(&p.d);
    for (int t = 0; t < NT; ++t) {
      __m512i s = ia[t][0];
      if constexpr (S == 2) s = _mm512_add_epi32(s, ia[t][1]);
      acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(dw, _mm512_set1_ps(xd[t][b])),
                               acc[t]);
    }
  }
}

// Tokens t0 .. t0 + NT - 1 over a packed chunk of the strip at rows [r0, r0 + nr): the running
// sums live in y between chunks (exact: a stored f32 reloads unchanged).
template <bool kQ8, int NT>
void StripTokens(const PackedBlock* pk, uint32_t b0, uint32_t n, bool first,
                 const int8_t* const* xq, const float* const* xd, const int32_t* const* xi,
                 uint32_t rows, uint32_t r0, uint32_t nr, uint32_t t0, float* y) {
  const __mmask16 mask = static_cast<__mmask16>((1u << nr) - 1);
  __m512 acc[NT];
  for (int t = 0; t < NT; ++t) {
    acc[t] =
        first ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(mask, y + uint64_t{t0 + t} * rows + r0);
  }
  StripBlocks<kQ8, NT>(pk, b0, n, xq, xd, xi, acc);
  for (int t = 0; t < NT; ++t)
    _mm512_mask_storeu_ps(y + uint64_t{t0 + t} * rows + r0, mask, acc[t]);
}

// One block of a strip (w, d as LoadBlock leaves them) against one token: acc lane i += row i's
// block product, with the same operations as StripBlocks<kQ8, 1>.
template <bool kQ8>
__attribute__((always_inline)) inline void BlockOneToken(const __m512i* w, __m512 d, uint32_t b,
                                                         const int8_t* xq, const float* xd,
                                                         const int32_t* xi, __m512* acc) {
  __m512i ia[2] = {_mm512_set1_epi32(kStripBias<kQ8> * xi[b]), _mm512_setzero_si512()};
  for (int k = 0; k < 8; ++k) {
    int32_t x4;
    std::memcpy(&x4, xq + uint64_t{b} * kBlock + 4 * k, 4);
    ia[k % 2] = _mm512_dpbusd_epi32(ia[k % 2], StripValues<kQ8>(w[k]), _mm512_set1_epi32(x4));
  }
  *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(ia[0], ia[1])),
                         _mm512_mul_ps(d, _mm512_set1_ps(xd[b])), *acc);
}

// One token (decode) over all nb blocks of a strip, each block transposed in registers and used
// at once (nothing packed): the same per-lane arithmetic as StripBlocks<kQ8, 1>, so the same
// results. q4_0 prefetches the next strip's `next_bytes` bytes at `next` in step (see
// MatMulRowsBlockStrips); q8_0 each row kQ8PrefetchPairs block pairs ahead (rb: the row bytes;
// next: the strip right after this one).
template <bool kQ8>
void StripDecode(const std::byte* const* row, __m512i offsets, uint32_t nb, uint64_t rb,
                 const int8_t* xq, const float* xd, const int32_t* xi, const std::byte* next,
                 uint64_t next_bytes, __m512* acc, const AheadRegion& ahead = {}) {
  if constexpr (kQ8) {
    const uint32_t pairs = static_cast<uint32_t>(CeilDiv(nb, 2));
    for (uint32_t p = 0; p < pairs; ++p) {
      PrefetchStripAhead<kQ8PairBytes, kQ8PrefetchPairs>(row, rb, p, pairs, next, next_bytes);
      ahead.Slice(p);
      for (uint32_t b = 2 * p; b < std::min(nb, 2 * p + 2); ++b) {
        __m512i w[8];
        __m512 d;
        LoadBlock<true>(row, offsets, b, w, &d);
        BlockOneToken<true>(w, d, b, xq, xd, xi, acc);
      }
    }
  } else {
    for (uint32_t b = 0; b < nb; ++b) {
      const uint64_t at = uint64_t{b} * kStrip * kQ4Bytes;
      for (uint64_t o = at; o < at + kStrip * kQ4Bytes && o < next_bytes; o += 64) {
        _mm_prefetch(reinterpret_cast<const char*>(next + o), _MM_HINT_T0);
      }
      ahead.Slice(b);
      __m512i w[8];
      __m512 d;
      LoadBlock<false>(row, offsets, b, w, &d);
      BlockOneToken<false>(w, d, b, xq, xd, xi, acc);
    }
  }
}

// ---- AMX-INT8 for q8_0 batches -----------------------------------------------------------------
// A tile multiply (tdpbssd) gives 16 tokens x 16 weight rows of one block's int32 products:
// operand A = the tokens' 32 activation bytes of the block (rows of the q8 scratch, QTokenBytes
// apart), B = the packed block (PackedBlock's 8 vectors: its tile layout), C = their products.
// C goes to memory and each token's row of it through the f32 steps of StripBlocks (per lane:
// convert, times dw * dx, fused add), so results are bit-identical to the VNNI kernels'.
// Tiles 0-2 and 3-5 are A, B, C for two blocks in flight.
// Only whole groups of 16 tokens take the tiles; the rest of a batch goes through VNNI. Measured
// (/work/bench/amx/mb.cc, outside the repository: MatMul of a 5632 x 2048 q8_0 matrix, 1
// thread, best of 7, this Intel Xeon), AMX time / VNNI time: 1.51 at 4 tokens (through tiles
// configured for fewer rows), 1.21 at 8, 1.02 at 12, 0.86 at 16, 0.76 at 32, 0.60 at 128. The
// tile multiplies are cheap; the f32 steps, identical on both paths, and the packing are not.
// (q4_0 through tdpbsud measured 1.03-1.05 at 16-32 tokens and 0.94 at 128: not taken.)
constexpr uint32_t kAmxTokens = 16;

// Set by SetAmx; read by UseAmx (any thread).
std::atomic<bool> amx_allowed{true};

// Whether this CPU has AMX-INT8 and Linux lets the process use its tile state (permission asked
// once, for the whole process: arch_prctl ARCH_REQ_XCOMP_PERM for XTILEDATA). FLASHLM_AMX=0 in
// the environment turns AMX off from the start (to compare the kernels).
bool AmxPresent() {
  static const bool present = [] {
    const char* env = std::getenv("FLASHLM_AMX");
    if (env != nullptr && std::strcmp(env, "0") == 0) return false;
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (__get_cpuid_count(7, 0, &a, &b, &c, &d) == 0) return false;
    const bool tile = (d >> 24) & 1, int8 = (d >> 25) & 1;
    constexpr long kArchReqXcompPerm = 0x1023, kXFeatureXTileData = 18;
    return tile && int8 && syscall(SYS_arch_prctl, kArchReqXcompPerm, kXFeatureXTileData) == 0;
  }();
  return present;
}

bool UseAmx() { return amx_allowed.load(std::memory_order_relaxed) && AmxPresent(); }

struct alignas(64) AmxTileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};
static_assert(sizeof(AmxTileConfig) == 64);

// Configures this thread's tiles.
__attribute__((target("amx-tile"))) void AmxConfigure() {
  AmxTileConfig c;
  for (int a : {0, 3}) c.rows[a] = kAmxTokens, c.colsb[a] = kBlock;
  for (int b : {1, 4}) c.rows[b] = 8, c.colsb[b] = 64;
  for (int t : {2, 5}) c.rows[t] = kAmxTokens, c.colsb[t] = 64;
  // Not _tile_loadconfig: GCC 12's asm for it names only the first 8 bytes as read, so the
  // compiler may drop the stores of the rest of the struct.
  asm volatile("ldtilecfg %0" ::"m"(c));
}

// Gives the tile state back (so the kernel need not save it at every switch).
__attribute__((target("amx-tile"))) void AmxRelease() { _tile_release(); }

// acc[t] lane i += f32(c[t][i]) * (dw lane i * dx[t][b]) for 16 tokens, as StripBlocks does.
__attribute__((always_inline)) inline void AmxAccumulate(const int32_t* c, const __m512& dw,
                                                         const float* const* xd, uint32_t b,
                                                         __m512* acc) {
  for (uint32_t t = 0; t < kAmxTokens; ++t) {
    const __m512 p = _mm512_cvtepi32_ps(_mm512_load_si512(c + kStrip * t));
    acc[t] = _mm512_fmadd_ps(p, _mm512_mul_ps(dw, _mm512_set1_ps(xd[t][b])), acc[t]);
  }
}

// Tokens t0 .. t0 + 15 over a packed q8_0 chunk of the strip at rows [r0, r0 + nr), as
// StripTokens<true, 16> computes them; the running sums live in y between chunks. The tiles
// must be configured (AmxConfigure).
__attribute__((target("amx-tile,amx-int8"))) void AmxStripTokens(
    const PackedBlock* pk, uint32_t b0, uint32_t n, bool first, ConstByteSpan quantized_x,
    uint32_t cols, uint32_t t0, uint32_t rows, uint32_t r0, uint32_t nr, float* y) {
  constexpr uint32_t kC = kAmxTokens * kStrip;  // int32 products of one block
  const uint64_t stride = QTokenBytes(cols);
  const int8_t* xq0 = QTokenAt(quantized_x, cols, t0).q;
  const float* xd[kAmxTokens];
  for (uint32_t t = 0; t < kAmxTokens; ++t) xd[t] = QTokenAt(quantized_x, cols, t0 + t).d;
  const __mmask16 mask = static_cast<__mmask16>((1u << nr) - 1);
  __m512 acc[kAmxTokens];
  for (uint32_t t = 0; t < kAmxTokens; ++t) {
    acc[t] =
        first ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(mask, y + uint64_t{t0 + t} * rows + r0);
  }
  // Products of two pairs of blocks: one pair's f32 steps run while the next pair's tile
  // multiplies are under way (AMX time / VNNI time 0.91 -> 0.86 at 16 tokens, 0.82 -> 0.76 at
  // 32 against one pair at a time).
  alignas(64) int32_t c[4 * kC];
  // The tile instructions are asm statements that do not tell the compiler which memory they
  // read or write: a barrier before (the packed blocks are stored) and after every tile store.
  asm volatile("" ::: "memory");
  uint32_t j = 0;
  for (; j + 1 < n; j += 2) {
    int32_t* cj = c + (j % 4) * kC;  // blocks j and j + 1: c[0..1] or c[2..3]
    const int8_t* a = xq0 + uint64_t{b0 + j} * kBlock;
    _tile_loadd(0, a, stride);
    _tile_loadd(1, pk[j].w, 64);
    _tile_zero(2);
    _tile_dpbssd(2, 0, 1);
    _tile_loadd(3, a + kBlock, stride);
    _tile_loadd(4, pk[j + 1].w, 64);
    _tile_zero(5);
    _tile_dpbssd(5, 3, 4);
    if (j >= 2) {  // the previous pair, in block order
      const int32_t* cp = c + ((j + 2) % 4) * kC;
      AmxAccumulate(cp, pk[j - 2].d, xd, b0 + j - 2, acc);
      AmxAccumulate(cp + kC, pk[j - 1].d, xd, b0 + j - 1, acc);
    }
    _tile_stored(2, cj, 64);
    _tile_stored(5, cj + kC, 64);
    asm volatile("" ::: "memory");
  }
  if (j >= 2) {
    const int32_t* cp = c + ((j + 2) % 4) * kC;
    AmxAccumulate(cp, pk[j - 2].d, xd, b0 + j - 2, acc);
    AmxAccumulate(cp + kC, pk[j - 1].d, xd, b0 + j - 1, acc);
  }
  if (j < n) {  // an odd block out
    _tile_loadd(0, xq0 + uint64_t{b0 + j} * kBlock, stride);
    _tile_loadd(1, pk[j].w, 64);
    _tile_zero(2);
    _tile_dpbssd(2, 0, 1);
    _tile_stored(2, c, 64);
    asm volatile("" ::: "memory");
    AmxAccumulate(c, pk[j].d, xd, b0 + j, acc);
  }
  for (uint32_t t = 0; t < kAmxTokens; ++t) {
    _mm512_mask_storeu_ps(y + uint64_t{t0 + t} * rows + r0, mask, acc[t]);
  }
}

// Every token over a packed chunk (blocks [b0, b0 + n)) of the strip at rows [r0, r0 + nr); the
// running sums live in y between chunks. With `amx` (q8_0, the tiles configured), each whole
// group of 16 tokens through the tiles; the rest kStripTokens at a time through VNNI.
template <bool kQ8>
void StripChunk(const PackedBlock* pk, uint32_t b0, uint32_t n, ConstByteSpan quantized_x,
                uint32_t cols, uint32_t n_tokens, uint32_t rows, uint32_t r0, uint32_t nr, bool amx,
                float* y) {
  const bool first = b0 == 0;
  uint32_t t0 = 0;
  if (kQ8 && amx) {
    for (; t0 + kAmxTokens <= n_tokens; t0 += kAmxTokens) {
      AmxStripTokens(pk, b0, n, first, quantized_x, cols, t0, rows, r0, nr, y);
    }
  }
  for (; t0 < n_tokens; t0 += kStripTokens) {
    const uint32_t nt = std::min(kStripTokens, n_tokens - t0);
    const int8_t* xq[kStripTokens] = {};
    const float* xd[kStripTokens] = {};
    const int32_t* xi[kStripTokens] = {};
    for (uint32_t i = 0; i < nt; ++i) {
      const QToken x = QTokenAt(quantized_x, cols, t0 + i);
      xq[i] = x.q;
      xd[i] = x.d;
      xi[i] = x.isum;
    }
    switch (nt) {
#define FLASHLM_STRIP_CASE(N)                                               \
  case N:                                                                   \
    StripTokens<kQ8, N>(pk, b0, n, first, xq, xd, xi, rows, r0, nr, t0, y); \
    break;
      FLASHLM_STRIP_CASE(1)
      FLASHLM_STRIP_CASE(2)
      FLASHLM_STRIP_CASE(3)
      FLASHLM_STRIP_CASE(4)
      FLASHLM_STRIP_CASE(5)
      FLASHLM_STRIP_CASE(6)
      FLASHLM_STRIP_CASE(7)
      default:
        StripTokens<kQ8, 8>(pk, b0, n, first, xq, xd, xi, rows, r0, nr, t0, y);
        break;
#undef FLASHLM_STRIP_CASE
    }
  }
}

// Whether a q8_0 batch of n_tokens has a group for the tiles (then the caller configures them
// with AmxConfigure first and releases them after).
inline bool AmxBatch(bool q8, uint32_t n_tokens) {
  return q8 && n_tokens >= kAmxTokens && UseAmx();
}

// ---- q4_0 and q8_0 interleaved in strips (InterleaveStrips) ----
// A pair of blocks of a strip: block b's 4 (q4_0) or 8 (q8_0) vectors, block b + 1's, then b's
// 16 f16 scales and b + 1's.
template <bool kQ8>
constexpr uint64_t kVectorBytes = kQ8 ? 512 : 256;  // one block's vectors
template <bool kQ8>
constexpr uint64_t kPairBytes = 2 * kVectorBytes<kQ8> + 64;  // 1088 / 576
// Decode prefetches this far ahead in a strip's stream (and on into the next strip's, which
// follows it in memory): the whole pairs that cover kStripsPrefetchAhead bytes (q8_0 2, q4_0 4).
// Interleaved strips of every dtype read best about 2 KiB ahead on the Intel Xeon of
// docs/benchmarks.md ("f32 prefill in column chunks; strips prefetched 2 KiB ahead"): 1b q8_0
// decode at 1 thread 13.2 -> 14.7 tok/s against 4 pairs (4.3 KiB), q4_K / q6_K 17.2 -> 19.2 against
// 4 super-blocks (9-13 KiB); further ahead, the prefetches that have not landed fill the core's
// line fill buffers and stall it.
constexpr uint64_t kStripsPrefetchAhead = 2048;
template <bool kQ8>
constexpr uint64_t kStripsPrefetchBytes =
    (kStripsPrefetchAhead + kPairBytes<kQ8> - 1) / kPairBytes<kQ8>* kPairBytes<kQ8>;

// Batches (two tokens or more) copy a strip's blocks a chunk at a time into an L1 buffer (pk in
// MatMulRowsBlockStrips) and ask, as they copy a pair, for the pair about 4 KiB on (q8_0 4 pairs,
// q4_0 8): without it the copying waited on DRAM. Measured (bench/engine/ffn_bench.cc, BM_DenseFfn,
// 1b shape, medians of two rounds, ms a pass, none -> 4 KiB): q8_0 4 tokens 54 -> 47 at 1 thread
// and 28 -> 25 at 2, 16 tokens 98 -> 87 and 52 -> 46; q4_0 4 tokens 43 -> 30 and 22 -> 17, 16
// tokens 82 -> 69 and 44 -> 40. 2.25 KiB ahead gained a little less for q4_0; 8.5-17 KiB no more
// (docs/benchmarks.md, "Batches ask for the next block").
constexpr uint64_t kStripsBatchPrefetchAhead = 4096;
template <bool kQ8>
constexpr uint64_t kStripsBatchPrefetchBytes =
    (kStripsBatchPrefetchAhead + kPairBytes<kQ8> - 1) / kPairBytes<kQ8>* kPairBytes<kQ8>;

// Block b of an interleaved strip (strip = its first byte) as LoadBlock leaves a row-major one:
// the same values in the same lanes, from vector loads (aligned where the matrix is, as a loaded
// checkpoint's are) and the scales.
template <bool kQ8>
__attribute__((always_inline)) inline void LoadBlockStrips(const std::byte* strip, uint32_t b,
                                                           __m512i* w, __m512* d) {
  const std::byte* pair = strip + uint64_t{b / 2} * kPairBytes<kQ8>;
  const std::byte* v = pair + (b % 2) * kVectorBytes<kQ8>;
  if constexpr (kQ8) {
    for (int k = 0; k < 8; ++k) w[k] = _mm512_loadu_si512(v + 64 * k);
  } else {
    const __m512i low4 = _mm512_set1_epi8(0x0F);
    for (int k = 0; k < 4; ++k) {
      const __m512i t = _mm512_loadu_si512(v + 64 * k);
      w[k] = _mm512_and_si512(t, low4);
      w[4 + k] = _mm512_and_si512(_mm512_srli_epi16(t, 4), low4);
    }
  }
  *d = _mm512_cvtph_ps(_mm256_loadu_si256(
      reinterpret_cast<const __m256i*>(pair + 2 * kVectorBytes<kQ8> + (b % 2) * 32)));
}

// StripDecode over an interleaved strip: one stream, read front to back.
template <bool kQ8>
void StripDecodeStrips(const std::byte* strip, uint32_t nb, const int8_t* xq, const float* xd,
                       const int32_t* xi, __m512* acc) {
  for (uint32_t b = 0; b < nb; b += 2) {
    PrefetchBytes<kPairBytes<kQ8>, false>(strip + uint64_t{b / 2} * kPairBytes<kQ8> +
                                          kStripsPrefetchBytes<kQ8>);
    for (uint32_t j = b; j < b + 2; ++j) {
      __m512i w[8];
      __m512 d;
      LoadBlockStrips<kQ8>(strip, j, w, &d);
      BlockOneToken<kQ8>(w, d, j, xq, xd, xi, acc);
    }
  }
}

template <bool kQ8>
void MatMulRowsBlockStrips(const MatrixView& w, uint32_t n_tokens, ConstByteSpan quantized_x,
                           uint32_t row_begin, uint32_t row_end, float* y) {
  const uint32_t nb = Blocks(w.cols);
  const uint64_t rb = w.row_bytes();
  CHECK_LT(rb * (kStrip - 1), uint64_t{INT32_MAX});   // the scales' gather offsets are int32
  if (w.strips) CHECK_EQ(row_begin % kStrip, 0u);     // a range of whole strips
  const bool amx = AmxBatch(kQ8, n_tokens);
  if (amx) AmxConfigure();
  alignas(64) PackedBlock pk[kStripChunk];
  for (uint32_t r0 = row_begin; r0 < row_end; r0 += kStrip) {
    if (w.strips) {
      const std::byte* strip = w.bytes.data() + uint64_t{r0} * rb;
      const uint32_t nr = std::min(kStrip, row_end - r0);
      if (n_tokens == 1) {
        const QToken x = QTokenAt(quantized_x, w.cols, 0);
        __m512 acc = _mm512_setzero_ps();
        StripDecodeStrips<kQ8>(strip, nb, x.q, x.d, x.isum, &acc);
        _mm512_mask_storeu_ps(y + r0, static_cast<__mmask16>((1u << nr) - 1), acc);
        continue;
      }
      for (uint32_t b0 = 0; b0 < nb; b0 += kStripChunk) {
        const uint32_t n = std::min(kStripChunk, nb - b0);
        for (uint32_t j = 0; j < n; ++j) {
          if ((b0 + j) % 2 == 0) {  // a pair kStripsBatchPrefetchBytes on
            PrefetchBytes<kPairBytes<kQ8>, false>(strip + uint64_t{(b0 + j) / 2} * kPairBytes<kQ8> +
                                                  kStripsBatchPrefetchBytes<kQ8>);
          }
          __m512i v[8];
          __m512 d;
          LoadBlockStrips<kQ8>(strip, b0 + j, v, &d);
          for (int k = 0; k < 8; ++k) _mm512_store_si512(&pk[j].w[k], v[k]);
          _mm512_store_ps(&pk[j].d, d);
        }
        StripChunk<kQ8>(pk, b0, n, quantized_x, w.cols, n_tokens, w.rows, r0, nr, amx, y);
      }
      continue;
    }
    // The strip's 16 rows are read a block at a time from each in turn: the strip further on
    // (contiguous, 16 x rb bytes) is prefetched as this one is packed, in step.
    StripRows s;
    SetUpStrip(w, r0, row_end, &s, kQ8 ? 1 : kPrefetchStrips);
    const std::byte* const* row = s.row;
    const std::byte* next = s.next;
    const uint64_t next_bytes = s.next_bytes;
    if (n_tokens == 1) {
      const QToken x = QTokenAt(quantized_x, w.cols, 0);
      __m512 acc = _mm512_setzero_ps();
      StripDecode<kQ8>(row, s.offsets, nb, rb, x.q, x.d, x.isum, next, next_bytes, &acc);
      _mm512_mask_storeu_ps(y + r0, s.mask, acc);
      continue;
    }
    constexpr uint64_t kBlockBytes = kQ8 ? kQ8Bytes : kQ4Bytes;
    for (uint32_t b0 = 0; b0 < nb; b0 += kStripChunk) {
      const uint32_t n = std::min(kStripChunk, nb - b0);
      for (uint32_t j = 0; j < n; ++j) {
        const uint64_t ahead = uint64_t{b0 + j} * kStrip * kBlockBytes;
        for (uint64_t o = ahead; o < ahead + kStrip * kBlockBytes && o < next_bytes; o += 64) {
          _mm_prefetch(reinterpret_cast<const char*>(next + o), _MM_HINT_T0);
        }
        PackBlock<kQ8>(row, s.offsets, b0 + j, &pk[j]);
      }
      StripChunk<kQ8>(pk, b0, n, quantized_x, w.cols, n_tokens, w.rows, r0, s.nr, amx, y);
    }
  }
  if (amx) AmxRelease();
}

// ---- q4_K in strips of 16 rows (512-bit VNNI) -----------------------------------------------
// As q4_0's strips: one zmm lane per row, each 32-byte quarter of a super-block (sub-blocks 2i
// and 2i+1 in its low and high nibbles) transposed in registers for 16 rows, 8 vpdpbusd per
// sub-block against broadcast activation bytes. The 6-bit scales and mins of the 16 rows are
// unpacked in lanes from the super-block's first 16 bytes (d | dmin, and the 12 packed bytes),
// transposed like the values (no gathers). Per lane, in order over
// sub-blocks: acc += f32(dot) * ((d * sc) * dx), then macc += (dmin * m) * xs; the result is
// acc - macc. The same code runs for every token count, so q4_K results do not depend on the
// batch or the row range either.
constexpr uint32_t kStripTokensK = 4;  // tokens per pass over a strip's super-blocks
// q4_K / q6_K prefetch in the order they read. Interleaved strips (InterleavedK) ask for the
// super-block about 2 KiB ahead (kStripsPrefetchAhead; one token on an AMD CPU 2 super-blocks,
// kDecodeAheadAmd). Row-major rows (RowMajorK: a bundle's rows, a matrix not in strips) ask, at
// super-block sb of a strip, for super-block sb + kPrefetchSuperBlocks of each of its 16 rows, or,
// past the rows' end, the matching super-block of the next strip's rows (so StripRows::next is
// the strip 1 ahead). That keeps about 4 x 16 x 210 bytes in flight whatever the row length;
// a strip ahead (74 KiB for a 5632-column q6_K strip) overflows L1 before it is read. On the 1b
// Q4_K_M matmuls streamed from DRAM, 1 thread (/work/bench/kq/mbtok.cc): q6_K 15-17 -> 20-23
// GB/s against whole strips 1 ahead, q4_K equal; 2 strips ahead (q4_0's) was slower still.
constexpr uint32_t kPrefetchStripsK = 1;
constexpr uint32_t kPrefetchSuperBlocks = 4;

// Where a q4_K / q6_K strip's super-blocks come from (the kernels' template parameter Src):
// Group(sb, q, t) leaves in t[k] lane i row i's bytes q + 4k .. q + 4k + 3 of super-block sb
// (q a multiple of 16), Group2(sb, q, t) the same for t[0 .. 8) (Group at q and q + 16), D(sb) each
// row's f16 at byte 208 (q6_K's d) as f32, and Prefetch(sb) asks for the bytes read some
// super-blocks later (RowMajorK kPrefetchSuperBlocks, InterleavedK kAhead). Row-major rows: 16 row
// pointers, each group transposed in registers.
template <uint32_t kBytes>
struct RowMajorK {
  const StripRows* s;
  uint64_t rb;
  uint32_t nsb;
  __attribute__((always_inline)) void Group(uint32_t sb, uint32_t q, __m512i* t) const {
    TransposeRows16(s->row, uint64_t{sb} * kBytes + q, t);
  }
  __attribute__((always_inline)) void Group2(uint32_t sb, uint32_t q, __m512i* t) const {
    TransposeRows16x8(s->row, uint64_t{sb} * kBytes + q, t);
  }
  __attribute__((always_inline)) __m512 D(uint32_t sb) const {
    __m512i tail[4];  // bytes 194..209: reading 16 bytes at 208 would pass the block's end
    TransposeRows16(s->row, uint64_t{sb} * kBytes + 194, tail);
    return _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(tail[3], 16)));
  }
  __attribute__((always_inline)) void Prefetch(uint32_t sb) const {
    PrefetchStripAhead<kBytes, kPrefetchSuperBlocks>(s->row, rb, sb, nsb, s->next, s->next_bytes);
    s->ahead.Slice(sb);
  }
};

// A strip interleaved by InterleaveStrips: each group is 4 vector loads, read front to back.
// Prefetch asks kAheadSb super-blocks ahead (kAheadBatchK for every batch and on other CPUs,
// kDecodeAheadAmd for one token on an AMD CPU).
template <uint32_t kBytes>
constexpr uint32_t kGroupsBytesK = kBytes / 16 * 256;  // a super-block's groups
// Super-blocks ahead that cover kStripsPrefetchAhead bytes of groups (1 for q4_K and q6_K).
template <uint32_t kBytes>
constexpr uint32_t kAheadBatchK = static_cast<uint32_t>(
    (kStripsPrefetchAhead + kGroupsBytesK<kBytes> - 1) / kGroupsBytesK<kBytes>);
// One token (decode) on an AMD CPU: 2 super-blocks ahead (4.5 / 6.6 KiB). 1b Q4_K_M decode on
// the AMD EPYC (Zen 5) against 1 (docs/benchmarks.md, "q4_K / q6_K decode prefetches 2
// super-blocks ahead on AMD"): 1.10-1.11x at 1 thread, 1.08-1.15x at 2, faster in 23 of 24
// interleaved rounds; 3 gained no more. Batches keep kAheadBatchK (2 made 1b pp128 at 1 thread
// 0.75x); not measured on Intel, which keeps it too.
constexpr uint32_t kDecodeAheadAmd = 2;
template <uint32_t kBytes, uint32_t kAheadSb = kAheadBatchK<kBytes>>
struct InterleavedK {
  static constexpr uint64_t kGroupsBytes = kGroupsBytesK<kBytes>;
  static constexpr uint64_t kTailBytes = kBytes % 16 * kStrip;  // a super-block's tail bytes
  const std::byte* strip;                                       // the strip's first byte
  uint32_t nsb;
  __attribute__((always_inline)) void Group(uint32_t sb, uint32_t q, __m512i* t) const {
    const std::byte* p = strip + sb * kGroupsBytes + 16 * uint64_t{q};
    for (int k = 0; k < 4; ++k) t[k] = _mm512_loadu_si512(p + 64 * k);
  }
  __attribute__((always_inline)) void Group2(uint32_t sb, uint32_t q, __m512i* t) const {
    Group(sb, q, t);
    Group(sb, q + 16, t + 4);
  }
  __attribute__((always_inline)) __m512 D(uint32_t sb) const {
    static_assert(kBytes % 16 == 2);
    return _mm512_cvtph_ps(_mm256_loadu_si256(
        reinterpret_cast<const __m256i*>(strip + nsb * kGroupsBytes + sb * kTailBytes)));
  }
  // The groups of super-block sb + kAheadSb (past the strip's end, the next strip's, which
  // follows it) and the tail bytes' line it falls in. (A strip of fewer super-blocks than
  // kAheadSb asks for bytes a little further on; a prefetch never faults.)
  __attribute__((always_inline)) void Prefetch(uint32_t sb) const {
    const uint64_t strip_bytes = nsb * (kGroupsBytes + kTailBytes);
    uint32_t asb = sb + kAheadSb;
    const std::byte* base = strip;
    if (asb >= nsb) base += strip_bytes, asb -= nsb;
    const std::byte* p = base + asb * kGroupsBytes;
    PrefetchBytes<kGroupsBytes, false>(p);
    if constexpr (kTailBytes > 0) {
      _mm_prefetch(reinterpret_cast<const char*>(base + nsb * kGroupsBytes + asb * kTailBytes),
                   _MM_HINT_T0);
    }
  }
};

template <int NT, class Src>
void StripQ4K(const Src& src, uint32_t nb, const QToken* x, __m512* acc, __m512* macc,
              bool prefetch) {
  const uint32_t nsb = static_cast<uint32_t>(CeilDiv(nb, 8));
  const __m512i low4 = _mm512_set1_epi8(0x0F);
  for (uint32_t sb = 0; sb < nsb; ++sb) {
    if (prefetch) src.Prefetch(sb);
    // The 16 header bytes of each row (d | dmin, then the 12 packed scale bytes) as 4 dwords.
    __m512i hdr[4];
    src.Group(sb, 0, hdr);
    const __m512i g0 = hdr[0], u0 = hdr[1], u1 = hdr[2], u2 = hdr[3];
    const __m512 d = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(g0));
    const __m512 dmin = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(g0, 16)));
    const __m512i m6 = _mm512_set1_epi32(0x3F3F3F3F), m4 = _mm512_set1_epi32(0x0F0F0F0F),
                  m2 = _mm512_set1_epi32(0x30303030);
    // Byte j of sc[j / 4] (m[j / 4]) is sub-block j's scale (min), as in UnpackQ4KScales.
    const __m512i sc[2] = {
        _mm512_and_si512(u0, m6),
        _mm512_or_si512(_mm512_and_si512(u2, m4), _mm512_and_si512(_mm512_srli_epi32(u0, 2), m2))};
    const __m512i mn[2] = {
        _mm512_and_si512(u1, m6),
        _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32(u2, 4), m4),
                        _mm512_and_si512(_mm512_srli_epi32(u1, 2), m2))};
    const uint32_t a0 = 8 * sb, count = std::min(8u, nb - a0);
    for (uint32_t i = 0; 2 * i < count; ++i) {
      // Quarter i: 32 bytes per row at +16 + 32i, transposed as q4_0's blocks (two 16-byte halves).
      __m512i t[8];
      src.Group2(sb, 16 + 32 * i, t);
      for (uint32_t s = 0; s < 2 && 2 * i + s < count; ++s) {
        const uint32_t j = 2 * i + s, blk = a0 + j;
        const int shift = 8 * static_cast<int>(j % 4);
        const __m512 scf = _mm512_cvtepi32_ps(
            _mm512_and_si512(_mm512_srli_epi32(sc[j / 4], shift), _mm512_set1_epi32(0xFF)));
        const __m512 mf = _mm512_cvtepi32_ps(
            _mm512_and_si512(_mm512_srli_epi32(mn[j / 4], shift), _mm512_set1_epi32(0xFF)));
        const __m512 dsc = _mm512_mul_ps(d, scf), dm = _mm512_mul_ps(dmin, mf);
        __m512i ia[NT][2];
        for (int tk = 0; tk < NT; ++tk) ia[tk][0] = ia[tk][1] = _mm512_setzero_si512();
        for (int k = 0; k < 8; ++k) {
          const __m512i wk = s == 0 ? _mm512_and_si512(t[k], low4)
                                    : _mm512_and_si512(_mm512_srli_epi16(t[k], 4), low4);
          for (int tk = 0; tk < NT; ++tk) {
            int32_t x4;
            std::memcpy(&x4, x[tk].q + uint64_t{blk} * kBlock + 4 * k, 4);
            ia[tk][k % 2] = _mm512_dpbusd_epi32(ia[tk][k % 2], wk, _mm512_set1_epi32(x4));
          }
        }
        for (int tk = 0; tk < NT; ++tk) {
          acc[tk] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(ia[tk][0], ia[tk][1])),
                                    _mm512_mul_ps(dsc, _mm512_set1_ps(x[tk].d[blk])), acc[tk]);
          macc[tk] = _mm512_fmadd_ps(dm, _mm512_set1_ps(x[tk].dsum[blk]), macc[tk]);
        }
      }
    }
  }
}

// ---- q6_K in strips of 16 rows (512-bit VNNI) -----------------------------------------------
// As q4_K's strips, for q6_K: per half super-block (128 values) the 64 low-bit bytes and 32
// high-bit bytes of 16 rows are transposed in registers and combined into unsigned 6-bit values
// (0..63); each activation block's two 16-value halves (each with its own int8 scale) get their
// own int32 accumulators, started at -32 x the half's activation sum (exact). Per lane, in order
// over activation blocks: acc += f32(dot_lo) * ((d * sc_lo) * dx), then the same for the high
// half. The same code runs for every token count.
template <int NT, class Src>
void StripQ6K(const Src& src, uint32_t nb, const QToken* x, __m512* acc, bool prefetch) {
  const uint32_t nsb = static_cast<uint32_t>(CeilDiv(nb, 8));
  const __m512i low4 = _mm512_set1_epi8(0x0F), m30 = _mm512_set1_epi8(0x30);
  for (uint32_t sb = 0; sb < nsb; ++sb) {
    if (prefetch) src.Prefetch(sb);
    // d is byte 208's f16 and the scales bytes 192..207, transposed like the values where the
    // rows are row-major: gathers of lines still on their way from DRAM cost more than the
    // loads and shuffles (decode microbenchmark).
    const __m512 d = src.D(sb);
    __m512i sc4[4];  // the 16 int8 scales, 4 per dword
    src.Group(sb, 192, sc4);
    auto scale = [&](uint32_t i) {  // d * scale i, per lane
      const __m512i v = _mm512_srai_epi32(
          _mm512_slli_epi32(sc4[i / 4], static_cast<int>(24 - 8 * (i % 4))), 24);
      return _mm512_mul_ps(d, _mm512_cvtepi32_ps(v));
    };
    const uint32_t a0 = 8 * sb, count = std::min(8u, nb - a0);
    for (uint32_t h = 0; 4 * h < count; ++h) {
      __m512i tl[16], th[8];
      src.Group2(sb, 64 * h, tl);
      src.Group2(sb, 64 * h + 32, tl + 8);
      src.Group2(sb, 128 + 32 * h, th);
      // Activation block 4h + K of the super-block (K a constant: the shifts are immediates).
      // Its 6-bit values are (low-bit nibble) | (high bits 2K, 2K+1 of th moved to bits 4, 5):
      // one shift and one and for the high bits, one ternary-logic op for the combine.
      const auto block = [&](auto kc) {
        constexpr int K = decltype(kc)::value;
        const uint32_t blk = a0 + 4 * h + K;
        const __m512 dsc[2] = {scale(8 * h + 2 * K), scale(8 * h + 2 * K + 1)};
        __m512i ia[NT][2];
        for (int tk = 0; tk < NT; ++tk) {
          ia[tk][0] = _mm512_set1_epi32(-32 * x[tk].half_isum[2 * blk]);
          ia[tk][1] = _mm512_set1_epi32(-32 * x[tk].half_isum[2 * blk + 1]);
        }
        for (int j = 0; j < 8; ++j) {  // dword j: values 4j .. 4j + 3 of the block
          const __m512i l = tl[8 * (K % 2) + j];
          const __m512i lo = K < 2 ? l : _mm512_srli_epi32(l, 4);  // bits 0..3 used
          __m512i hi = th[j];
          if constexpr (K == 0) hi = _mm512_slli_epi32(hi, 4);
          if constexpr (K == 1) hi = _mm512_slli_epi32(hi, 2);
          if constexpr (K == 3) hi = _mm512_srli_epi32(hi, 2);
          hi = _mm512_and_si512(hi, m30);
          // (lo & 0x0F) | hi: ternary-logic table (A & C) | B = 0xEC.
          const __m512i wj = _mm512_ternarylogic_epi32(lo, hi, low4, 0xEC);
          for (int tk = 0; tk < NT; ++tk) {
            int32_t x4;
            std::memcpy(&x4, x[tk].q + uint64_t{blk} * kBlock + 4 * j, 4);
            ia[tk][j / 4] = _mm512_dpbusd_epi32(ia[tk][j / 4], wj, _mm512_set1_epi32(x4));
          }
        }
        for (int tk = 0; tk < NT; ++tk) {
          const __m512 dx = _mm512_set1_ps(x[tk].d[blk]);
          acc[tk] =
              _mm512_fmadd_ps(_mm512_cvtepi32_ps(ia[tk][0]), _mm512_mul_ps(dsc[0], dx), acc[tk]);
          acc[tk] =
              _mm512_fmadd_ps(_mm512_cvtepi32_ps(ia[tk][1]), _mm512_mul_ps(dsc[1], dx), acc[tk]);
        }
      };
      const uint32_t kn = std::min(4u, count - 4 * h);
      block(std::integral_constant<int, 0>{});
      if (kn > 1) block(std::integral_constant<int, 1>{});
      if (kn > 2) block(std::integral_constant<int, 2>{});
      if (kn > 3) block(std::integral_constant<int, 3>{});
    }
  }
}

// Every token, kStripTokensK at a time, over one strip read through `src`: store(t, v) gets
// token t's 16 lanes (q4_K: acc - macc). Prefetches on the last pass only (earlier passes'
// reads are re-read there).
template <bool kQ6, class Src, class Store>
void KStripTokens(const Src& src, uint32_t cols, uint32_t n_tokens, ConstByteSpan quantized_x,
                  Store&& store) {
  const uint32_t nb = Blocks(cols);
  for (uint32_t t0 = 0; t0 < n_tokens; t0 += kStripTokensK) {
    const uint32_t nt = std::min(kStripTokensK, n_tokens - t0);
    QToken x[kStripTokensK];
    for (uint32_t i = 0; i < nt; ++i) x[i] = QTokenAt(quantized_x, cols, t0 + i);
    const bool prefetch = t0 + nt == n_tokens;
    __m512 out[kStripTokensK];
    const auto pass = [&](auto tokens) {
      constexpr int NT = decltype(tokens)::value;
      for (int i = 0; i < NT; ++i) out[i] = _mm512_setzero_ps();
      if constexpr (kQ6) {
        StripQ6K<NT>(src, nb, x, out, prefetch);
      } else {
        __m512 macc[NT];
        for (int i = 0; i < NT; ++i) macc[i] = _mm512_setzero_ps();
        StripQ4K<NT>(src, nb, x, out, macc, prefetch);
        for (int i = 0; i < NT; ++i) out[i] = _mm512_sub_ps(out[i], macc[i]);
      }
    };
    switch (nt) {
      case 1:
        pass(std::integral_constant<int, 1>{});
        break;
      case 2:
        pass(std::integral_constant<int, 2>{});
        break;
      case 3:
        pass(std::integral_constant<int, 3>{});
        break;
      default:
        pass(std::integral_constant<int, 4>{});
        break;
    }
    for (uint32_t i = 0; i < nt; ++i) store(t0 + i, out[i]);
  }
}

// MatMulRows for q4_K (kQ6 false) and q6_K (kQ6 true) in strips: for every strip of rows
// [row_begin, row_end) and every pass of up to kStripTokensK tokens over it, StripQ4K / StripQ6K
// run over all its super-blocks (prefetching kPrefetchSuperBlocks ahead in read order, into the
// next strip at the end, on the last pass only, as earlier passes re-read this one), and the
// pass's results (q4_K: acc - macc) are stored to y, masked to the strip's rows. The strip is
// read through RowMajorK, or InterleavedK where w.strips.
template <bool kQ6>
void MatMulRowsKStrips(const MatrixView& w, uint32_t n_tokens, ConstByteSpan quantized_x,
                       uint32_t row_begin, uint32_t row_end, float* y) {
  constexpr uint32_t kBytes = kQ6 ? kQ6KBytes : kQ4KBytes;
  const uint32_t nsb = static_cast<uint32_t>(CeilDiv(Blocks(w.cols), 8));
  const uint64_t rb = w.row_bytes();
  CHECK_LT(rb * (kStrip - 1), uint64_t{INT32_MAX});  // SetUpStrip's row offsets are int32
  if (w.strips) CHECK_EQ(row_begin % kStrip, 0u);    // a range of whole strips
  const bool decode_ahead = n_tokens == 1 && AmdCpu();
  for (uint32_t r0 = row_begin; r0 < row_end; r0 += kStrip) {
    StripRows s;
    SetUpStrip(w, r0, row_end, &s, kPrefetchStripsK);
    const auto store = [&](uint32_t t, __m512 v) {
      _mm512_mask_storeu_ps(y + uint64_t{t} * w.rows + r0, s.mask, v);
    };
    if (w.strips) {
      const std::byte* strip = w.bytes.data() + uint64_t{r0} * rb;
      if (decode_ahead) {
        KStripTokens<kQ6>(InterleavedK<kBytes, kDecodeAheadAmd>{strip, nsb}, w.cols, n_tokens,
                          quantized_x, store);
      } else {
        KStripTokens<kQ6>(InterleavedK<kBytes>{strip, nsb}, w.cols, n_tokens, quantized_x, store);
      }
    } else {
      KStripTokens<kQ6>(RowMajorK<kBytes>{&s, rb, nsb}, w.cols, n_tokens, quantized_x, store);
    }
  }
}

// DotRows for q4_0 / q4_K / q6_K: the rows 16 at a time as one row-major strip (rows anywhere
// in memory; the last one repeated to fill the strip, its lanes dropped), so each row's result
// is the lane MatMul's strip kernels compute for it: bit-identical. Past the strips' own rows only
// `ahead` is prefetched, spread over the last strip's kernel steps. False (nothing written) where
// the q4_0 scales' gather cannot reach a row (rows more than 2 GiB apart).
bool DotRowsStrips(DType dtype, uint32_t cols, std::span<const std::byte* const> rows,
                   uint32_t n_tokens, ConstByteSpan quantized_x, float* out, ConstByteSpan ahead) {
  const uint32_t count = static_cast<uint32_t>(rows.size());
  const uint64_t rb = layout::RowBytes(dtype, cols);
  const uint32_t nb = Blocks(cols);
  if (dtype == DType::kQ4_0 || dtype == DType::kQ8_0) {  // their scales are gathered
    for (uint32_t k = 0; k < count; ++k) {
      const int64_t d = rows[k] - rows[k / kStrip * kStrip];
      if (d < INT32_MIN || d > INT32_MAX) return false;
    }
  }
  const bool amx = AmxBatch(dtype == DType::kQ8_0, n_tokens);
  if (amx) AmxConfigure();
  for (uint32_t k0 = 0; k0 < count; k0 += kStrip) {
    StripRows s;
    s.nr = std::min(kStrip, count - k0);
    s.mask = static_cast<__mmask16>((1u << s.nr) - 1);
    s.next = nullptr;
    s.next_bytes = 0;
    if (k0 + kStrip >= count && !ahead.empty()) {  // the last strip: one slice a kernel step
      const bool k = dtype == DType::kQ4_K || dtype == DType::kQ6_K;
      const bool q8_token = dtype == DType::kQ8_0 && n_tokens == 1;
      s.ahead = AheadRegion(ahead, static_cast<uint32_t>(k          ? CeilDiv(nb, 8)
                                                         : q8_token ? CeilDiv(nb, 2)
                                                                    : nb));
    }
    alignas(64) int32_t off[kStrip];
    for (uint32_t i = 0; i < kStrip; ++i) {
      s.row[i] = rows[k0 + std::min(i, s.nr - 1)];
      off[i] = static_cast<int32_t>(s.row[i] - s.row[0]);
    }
    s.offsets = _mm512_load_si512(off);
    alignas(64) float lanes[kStrip];
    const auto store = [&](uint32_t t, __m512 v) {
      _mm512_store_ps(lanes, v);
      for (uint32_t i = 0; i < s.nr; ++i) out[uint64_t{k0 + i} * n_tokens + t] = lanes[i];
    };
    if (dtype == DType::kQ4_K) {
      KStripTokens<false>(RowMajorK<kQ4KBytes>{&s, rb, static_cast<uint32_t>(CeilDiv(nb, 8))}, cols,
                          n_tokens, quantized_x, store);
      continue;
    }
    if (dtype == DType::kQ6_K) {
      KStripTokens<true>(RowMajorK<kQ6KBytes>{&s, rb, static_cast<uint32_t>(CeilDiv(nb, 8))}, cols,
                         n_tokens, quantized_x, store);
      continue;
    }
    const bool q8 = dtype == DType::kQ8_0;
    CHECK(q8 || dtype == DType::kQ4_0);
    if (n_tokens == 1) {
      const QToken x = QTokenAt(quantized_x, cols, 0);
      __m512 acc = _mm512_setzero_ps();
      if (q8) {
        StripDecode<true>(s.row, s.offsets, nb, rb, x.q, x.d, x.isum, nullptr, 0, &acc, s.ahead);
      } else {
        StripDecode<false>(s.row, s.offsets, nb, rb, x.q, x.d, x.isum, nullptr, 0, &acc, s.ahead);
      }
      store(0, acc);
      continue;
    }
    // Tokens kAmxTokens at a time, each group over the strip's packed chunks in turn (the
    // running sums in y between chunks, as MatMulRowsBlockStrips keeps them).
    alignas(64) PackedBlock pk[kStripChunk];
    alignas(64) float y[kAmxTokens * kStrip];
    for (uint32_t t0 = 0; t0 < n_tokens; t0 += kAmxTokens) {
      const uint32_t nt = std::min(kAmxTokens, n_tokens - t0);
      const ConstByteSpan qx = quantized_x.subspan(uint64_t{t0} * QTokenBytes(cols));
      for (uint32_t b0 = 0; b0 < nb; b0 += kStripChunk) {
        const uint32_t n = std::min(kStripChunk, nb - b0);
        for (uint32_t j = 0; j < n; ++j) {
          s.ahead.Slice(b0 + j);
          if (q8) {
            PackBlock<true>(s.row, s.offsets, b0 + j, &pk[j]);
            continue;
          }
          PackBlock<false>(s.row, s.offsets, b0 + j, &pk[j]);
        }
        if (q8) {
          StripChunk<true>(pk, b0, n, qx, cols, nt, kStrip, 0, s.nr, amx, y);
        } else {
          StripChunk<false>(pk, b0, n, qx, cols, nt, kStrip, 0, s.nr, false, y);
        }
      }
      for (uint32_t t = 0; t < nt; ++t) {
        for (uint32_t i = 0; i < s.nr; ++i) {
          out[uint64_t{k0 + i} * n_tokens + t0 + t] = y[t * kStrip + i];
        }
      }
    }
  }
  if (amx) AmxRelease();
  return true;
}
#endif

#if defined(FLASHLM_AVX2) && !defined(FLASHLM_AVX512_VNNI)
#define FLASHLM_STRIPS8 1
// ---- q4_0 and q8_0 in strips of 8 rows a ymm (AVX2 without 512-bit VNNI) ---------------------
// The 512-bit strip kernels' arithmetic on 256-bit vectors: one ymm lane a weight row, a block's
// values of 8 rows transposed (4 bytes a lane), each multiplied by a broadcast of the 4
// activation bytes it meets, so one vpmaddubsw serves 8 rows and the f32 scaling runs once a
// block for 8 rows. Row by row (RowQ), each block cost its own integer reduction, convert and
// scaling, and one token of 1b-q4_0 decoded at 0.77-0.86 of llama.cpp's AVX2 build, which
// repacks q4_0 into 8-row interleaved blocks for the same reason (docs/benchmarks.md, "AVX2: q4_0,
// q8_0 and q4_K in strips").
// Per lane and block, the exact block product:
// - q4_0: the 8 vpmaddubsw products (stored nibbles 0..15 as the unsigned operand, each pair at
//   most 2 x 15 x 128 = 3840 in size) are added as int16 (8 x 3840 = 30720 fits), widened to
//   int32 with vpmaddwd, and 8 x the block's activation sum is taken off;
// - q8_0: each vpmaddubsw takes |w| and x with w's sign (the activations are in [-127, 127], so a
//   pair is at most 2 x 128 x 127 = 32512 in size) and is widened at once;
// - with AVX-VNNI, vpdpbusd from -8 (q4_0) or -128 (q8_0, its bytes + 128) x the activation sum:
//   the same integers.
// Then acc = fma(f32(product), dw x dx, acc), blocks in order. So a (row, token) result depends
// on neither the batch, the rows beside it, the row range nor the thread split, nor on whether
// the matrix is interleaved: decode, prefill and DotRows give the same bits.
// Interleaved strips are InterleaveStrips' 16-row strips: rows 8h .. 8h + 7 are the h-th 32 bytes
// of each 64-byte vector, and their 8 f16 scales the h-th 16 bytes of the block's 32.
constexpr uint32_t kHalf = 8;      // rows a ymm
constexpr uint32_t kStrip16 = 16;  // rows an interleaved strip (InterleaveStrips)
template <bool kQ8>
constexpr uint32_t kS8Vectors = kQ8 ? 8 : 4;  // of a block: 4 value bytes of 16 rows each
template <bool kQ8>
constexpr uint64_t kS8PairBytes = 2 * kS8Vectors<kQ8> * 64 + 64;  // a block pair: 576 / 1088
// Decode asks for the pair 4 pairs on as it reads one (q4_0 2.3 KiB, q8_0 4.3 KiB), and batches
// 8 pairs on. (q8_0 decode, 1b-q8_0 at 1 thread, three rounds: 2 pairs on 21.2-21.7 tok/s, 1
// pair 21.5-21.7, 4 pairs 22.7-23.3, the row-by-row kernel before the strips 22.0-23.7; then 4,
// 6 and 8 pairs 23.8-24.9, 24.1-25.1 and 24.3-24.9.)
template <bool kQ8>
constexpr uint64_t kS8PrefetchBytes = 4 * kS8PairBytes<kQ8>;
template <bool kQ8>
constexpr uint64_t kS8BatchPrefetchBytes = 2 * kS8PrefetchBytes<kQ8>;
// Row-major rows ask for the bytes read after them (the matrix's next rows: `next`, `bytes` of
// them) in step with their own blocks: at block i, share i of `share` bytes (a multiple of 64),
// the part of it below `bytes`.
__attribute__((always_inline)) inline void PrefetchShare(const std::byte* next, uint64_t bytes,
                                                         uint64_t share, uint64_t i) {
  for (uint64_t o = i * share; o < (i + 1) * share && o < bytes; o += 64) {
    _mm_prefetch(reinterpret_cast<const char*>(next + o), _MM_HINT_T0);
  }
}
// The share for `bytes` asked for over `steps` blocks (at least all of them by the last).
inline uint64_t ShareOver(uint64_t bytes, uint32_t steps) { return (bytes / steps + 64) / 64 * 64; }

// One (half, token) block product's accumulator: Start, then Add for each of the block's value
// vectors w (lane i: row i's 4 stored bytes; q4_0: 4 nibbles 0..15) and the 4 activation bytes
// they meet (x4, broadcast), then Finish.
template <bool kQ8>
__attribute__((always_inline)) inline __m256i S8Start(int32_t xsum) {
#ifdef FLASHLM_VNNI
  return _mm256_set1_epi32((kQ8 ? -128 : -8) * xsum);
#else
  (void)xsum;
  return _mm256_setzero_si256();
#endif
}
template <bool kQ8>
__attribute__((always_inline)) inline __m256i S8Add(__m256i s, __m256i w, __m256i x4) {
#ifdef FLASHLM_VNNI
  if constexpr (kQ8) w = _mm256_xor_si256(w, _mm256_set1_epi8(static_cast<char>(0x80)));
  return _mm256_dpbusd_epi32(s, w, x4);
#else
  if constexpr (kQ8) {
    const __m256i p = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x4, w));
    return _mm256_add_epi32(s, _mm256_madd_epi16(p, _mm256_set1_epi16(1)));
  }
  return _mm256_add_epi16(s, _mm256_maddubs_epi16(w, x4));
#endif
}
template <bool kQ8>
__attribute__((always_inline)) inline __m256i S8Finish(__m256i s, int32_t xsum) {
#ifdef FLASHLM_VNNI
  (void)xsum;
  return s;
#else
  if constexpr (kQ8) return s;
  return _mm256_sub_epi32(_mm256_madd_epi16(s, _mm256_set1_epi16(1)), _mm256_set1_epi32(8 * xsum));
#endif
}
__attribute__((always_inline)) inline __m256i Broadcast4(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm256_set1_epi32(v);
}

// Block b of H halves against NT tokens: acc[h * NT + t] lane i += the block product of half h's
// row i and token t. src.Raw(b, h, k) gives the half's k-th vector of stored value bytes (lane i:
// row i's bytes 4k .. 4k + 3 of the block's values, k < kS8Vectors), src.Scales(b, h) its 8
// scales as f32. q4_0's vector k holds values 4k .. 4k + 3 in its low nibbles and 16 + 4k .. in
// its high ones.
template <bool kQ8, int H, int NT, class Src>
__attribute__((always_inline)) inline void S8Block(const Src& src, uint32_t b,
                                                   const int8_t* const* xq, const float* const* xd,
                                                   const int32_t* const* xi, __m256* acc) {
  const __m256i low4 = _mm256_set1_epi8(0x0F);
  __m256i s[H][NT];
  for (int t = 0; t < NT; ++t) {
    for (int h = 0; h < H; ++h) s[h][t] = S8Start<kQ8>(xi[t][b]);
  }
  for (int k = 0; k < static_cast<int>(kS8Vectors<kQ8>); ++k) {
    __m256i lo[H], hi[H];
    for (int h = 0; h < H; ++h) {
      const __m256i raw = src.Raw(b, h, k);
      if constexpr (kQ8) {
        lo[h] = raw;
      } else {
        lo[h] = _mm256_and_si256(raw, low4);                        // values 4k .. 4k + 3
        hi[h] = _mm256_and_si256(_mm256_srli_epi16(raw, 4), low4);  // values 16 + 4k ..
      }
    }
    for (int t = 0; t < NT; ++t) {
      const int8_t* x = xq[t] + uint64_t{b} * kBlock;
      const __m256i xl = Broadcast4(x + 4 * k);
      for (int h = 0; h < H; ++h) s[h][t] = S8Add<kQ8>(s[h][t], lo[h], xl);
      if constexpr (!kQ8) {
        const __m256i xh = Broadcast4(x + 16 + 4 * k);
        for (int h = 0; h < H; ++h) s[h][t] = S8Add<kQ8>(s[h][t], hi[h], xh);
      }
    }
  }
  for (int h = 0; h < H; ++h) {
    const __m256 d = src.Scales(b, h);
    for (int t = 0; t < NT; ++t) {
      const __m256i p = S8Finish<kQ8>(s[h][t], xi[t][b]);
      acc[h * NT + t] = _mm256_fmadd_ps(
          _mm256_cvtepi32_ps(p), _mm256_mul_ps(d, _mm256_set1_ps(xd[t][b])), acc[h * NT + t]);
    }
  }
}

// A 16-row interleaved strip (its first byte).
template <bool kQ8>
struct S8Interleaved {
  const std::byte* strip;
  __attribute__((always_inline)) __m256i Raw(uint32_t b, int h, int k) const {
    const std::byte* v =
        strip + uint64_t{b / 2} * kS8PairBytes<kQ8> + (b % 2) * kS8Vectors<kQ8> * 64;
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(v + 64 * k + 32 * h));
  }
  __attribute__((always_inline)) __m256 Scales(uint32_t b, int h) const {
    const std::byte* s = strip + uint64_t{b / 2} * kS8PairBytes<kQ8> + 2 * kS8Vectors<kQ8> * 64 +
                         (b % 2) * 32 + 16 * h;
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s)));
  }
};

// Rows' 16 bytes at byte offset q, transposed: t[k] lane i = row i's dword k (k < 4; rows m and
// 4 + m share a register, as TransposeRows16 puts 4 rows in each 128-bit lane).
__attribute__((always_inline)) inline void TransposeRows8(const std::byte* const* row, uint64_t q,
                                                          __m256i* t) {
  auto load = [&](int r) { return _mm_loadu_si128(reinterpret_cast<const __m128i*>(row[r] + q)); };
  __m256i z[4];
  for (int m = 0; m < 4; ++m) z[m] = _mm256_set_m128i(load(4 + m), load(m));
  const __m256i a0 = _mm256_unpacklo_epi32(z[0], z[1]), a1 = _mm256_unpackhi_epi32(z[0], z[1]);
  const __m256i a2 = _mm256_unpacklo_epi32(z[2], z[3]), a3 = _mm256_unpackhi_epi32(z[2], z[3]);
  t[0] = _mm256_unpacklo_epi64(a0, a2);
  t[1] = _mm256_unpackhi_epi64(a0, a2);
  t[2] = _mm256_unpacklo_epi64(a1, a3);
  t[3] = _mm256_unpackhi_epi64(a1, a3);
}

// The f16 in the low half of each of v's 8 dwords, as f32.
__attribute__((always_inline)) inline __m256 Low16ToFloat(__m256i v) {
  const __m256i lows = _mm256_shuffle_epi8(
      v, _mm256_setr_epi8(0, 1, 4, 5, 8, 9, 12, 13, -1, -1, -1, -1, -1, -1, -1, -1, 0, 1, 4, 5, 8,
                          9, 12, 13, -1, -1, -1, -1, -1, -1, -1, -1));
  return _mm256_cvtph_ps(_mm256_castsi256_si128(_mm256_permute4x64_epi64(lows, 0x08)));
}

// An 8 x 8 transpose of dwords: t[j] lane i = v[i]'s dword j (within 128-bit lanes, then
// across).
__attribute__((always_inline)) inline void Transpose8x8Epi32(const __m256i* v, __m256i* t) {
  __m256i a[8], c[8];
  for (int g = 0; g < 2; ++g) {  // rows 4g .. 4g + 3
    const __m256i* x = v + 4 * g;
    __m256i* y = a + 4 * g;
    y[0] = _mm256_unpacklo_epi32(x[0], x[1]), y[1] = _mm256_unpackhi_epi32(x[0], x[1]);
    y[2] = _mm256_unpacklo_epi32(x[2], x[3]), y[3] = _mm256_unpackhi_epi32(x[2], x[3]);
    __m256i* z = c + 4 * g;  // z[j] 128-bit lane l: those rows' dword 4l + j
    z[0] = _mm256_unpacklo_epi64(y[0], y[2]), z[1] = _mm256_unpackhi_epi64(y[0], y[2]);
    z[2] = _mm256_unpacklo_epi64(y[1], y[3]), z[3] = _mm256_unpackhi_epi64(y[1], y[3]);
  }
  for (int j = 0; j < 4; ++j) {
    t[j] = _mm256_permute2x128_si256(c[j], c[4 + j], 0x20);
    t[4 + j] = _mm256_permute2x128_si256(c[j], c[4 + j], 0x31);
  }
}

// 8 row-major rows row[0..7] (offsets lane i = row[i] - row[0], for the scales' gather): Load(b)
// transposes block b's value bytes in registers, which Raw then hands out; one half (H = 1).
template <bool kQ8>
struct S8Rows {
  static constexpr uint64_t kBytes = kQ8 ? kQ8Bytes : kQ4Bytes;
  const std::byte* const* row;
  __m256i offsets;
  __m256i t[kS8Vectors<kQ8>];
  __attribute__((always_inline)) void Load(uint32_t b) {
    const uint64_t q = uint64_t{b} * kBytes + 2;
    if constexpr (kQ8) {
      __m256i v[8];
      for (int m = 0; m < 8; ++m) {
        v[m] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row[m] + q));
      }
      Transpose8x8Epi32(v, t);
    } else {
      TransposeRows8(row, q, t);
    }
  }
  __attribute__((always_inline)) __m256i Raw(uint32_t, int, int k) const { return t[k]; }
  __attribute__((always_inline)) __m256 Scales(uint32_t b, int) const {
    // Each row's f16 scale is the low half of the 4 bytes at its block's start.
    return Low16ToFloat(_mm256_i32gather_epi32(
        reinterpret_cast<const int*>(row[0] + uint64_t{b} * kBytes), offsets, 1));
  }
};

// NT tokens (from t0) over all nb blocks of the 8 rows `src` reads: acc[t] lane i = row i's sum
// with token t0 + t. `next` / `next_bytes`: bytes read after these rows, asked for in step (a
// block's share, 8 block sizes, at each block).
template <bool kQ8, int NT>
void S8RowsTokens(S8Rows<kQ8>& src, uint32_t nb, ConstByteSpan quantized_x, uint32_t cols,
                  uint32_t t0, const std::byte* next, uint64_t next_bytes, __m256* acc) {
  const int8_t* xq[NT];
  const float* xd[NT];
  const int32_t* xi[NT];
  for (int t = 0; t < NT; ++t) {
    const QToken x = QTokenAt(quantized_x, cols, t0 + t);
    xq[t] = x.q, xd[t] = x.d, xi[t] = x.isum;
    acc[t] = _mm256_setzero_ps();
  }
  constexpr uint64_t kShare = kHalf * S8Rows<kQ8>::kBytes;
  for (uint32_t b = 0; b < nb; ++b) {
    PrefetchShare(next, next_bytes, kShare, b);
    src.Load(b);
    S8Block<kQ8, 1, NT>(src, b, xq, xd, xi, acc);
  }
}

// NT tokens (from t0) over the 16-row interleaved strip: acc[h * NT + t] lane i = row 8h + i's
// sum with token t0 + t. Each block pair asks for the pair `prefetch_bytes` on.
template <bool kQ8, int NT>
void S8StripTokens(const S8Interleaved<kQ8>& src, uint32_t nb, ConstByteSpan quantized_x,
                   uint32_t cols, uint32_t t0, uint64_t prefetch_bytes, __m256* acc) {
  const int8_t* xq[NT];
  const float* xd[NT];
  const int32_t* xi[NT];
  for (int t = 0; t < NT; ++t) {
    const QToken x = QTokenAt(quantized_x, cols, t0 + t);
    xq[t] = x.q, xd[t] = x.d, xi[t] = x.isum;
    acc[t] = acc[NT + t] = _mm256_setzero_ps();
  }
  for (uint32_t b = 0; b < nb; b += 2) {
    PrefetchBytes<kS8PairBytes<kQ8>, false>(src.strip + uint64_t{b / 2} * kS8PairBytes<kQ8> +
                                            prefetch_bytes);
    S8Block<kQ8, 2, NT>(src, b, xq, xd, xi, acc);
    S8Block<kQ8, 2, NT>(src, b + 1, xq, xd, xi, acc);
  }
}

// Stores lanes [0, nr) of acc (8 floats) at y, y + stride, ...
__attribute__((always_inline)) inline void StoreLanes(__m256 acc, uint32_t nr, float* y,
                                                      uint64_t stride) {
  alignas(32) float lanes[kHalf];
  _mm256_store_ps(lanes, acc);
  for (uint32_t i = 0; i < nr; ++i) y[i * stride] = lanes[i];
}

// kernel(t0, nt) for t0 = 0, 4, 8, ... < n_tokens, nt = the group's token count (<= 4) as a
// std::integral_constant, so that the kernel can pass it on as a template argument: the one
// switch from a run-time count to a template.
template <class Kernel>
__attribute__((always_inline)) inline void ForTokenGroups(uint32_t n_tokens, Kernel&& kernel) {
  for (uint32_t t0 = 0; t0 < n_tokens; t0 += 4) {
    switch (std::min(4u, n_tokens - t0)) {
      case 1:
        kernel(t0, std::integral_constant<int, 1>{});
        break;
      case 2:
        kernel(t0, std::integral_constant<int, 2>{});
        break;
      case 3:
        kernel(t0, std::integral_constant<int, 3>{});
        break;
      default:
        kernel(t0, std::integral_constant<int, 4>{});
        break;
    }
  }
}

// Rows [row_begin, row_end) of a q4_0 / q8_0 matrix, interleaved or row-major, against n_tokens
// tokens: y[t * rows + r]. Tokens 4 at a time, over an interleaved strip both halves a block (so
// each broadcast serves 16 rows; q4_0: 2 at a time was 0-10% slower in 1b-q4_0 pp128 at 1 thread,
// 5 of 6 rounds), over 8 row-major rows so that each transpose serves 4.
template <bool kQ8>
void MatMulRowsStrips8(const MatrixView& w, uint32_t n_tokens, ConstByteSpan quantized_x,
                       uint32_t row_begin, uint32_t row_end, float* y) {
  const uint32_t nb = Blocks(w.cols);
  const uint64_t rb = w.row_bytes();
  if (w.strips) {
    CHECK_EQ(row_begin % kStrip16, 0u);  // a range of whole strips
    CHECK_EQ(nb % 2, 0u);
    const uint64_t ahead = n_tokens == 1 ? kS8PrefetchBytes<kQ8> : kS8BatchPrefetchBytes<kQ8>;
    for (uint32_t r0 = row_begin; r0 < row_end; r0 += kStrip16) {
      const S8Interleaved<kQ8> src{w.bytes.data() + uint64_t{r0} * rb};
      const uint32_t nr = std::min(kStrip16, row_end - r0);
      ForTokenGroups(n_tokens, [&](uint32_t t0, auto nt) {
        __m256 acc[2 * nt];
        S8StripTokens<kQ8, nt>(src, nb, quantized_x, w.cols, t0, ahead, acc);
        for (uint32_t h = 0; h < 2; ++h) {
          const uint32_t hr = nr > h * kHalf ? std::min(kHalf, nr - h * kHalf) : 0;
          for (uint32_t t = 0; t < nt; ++t) {
            StoreLanes(acc[h * nt + t], hr, y + uint64_t{t0 + t} * w.rows + r0 + h * kHalf, 1);
          }
        }
      });
    }
    return;
  }
  CHECK_LT(rb * (kHalf - 1), uint64_t{INT32_MAX});  // the scales' gather offsets are int32
  for (uint32_t r0 = row_begin; r0 < row_end; r0 += kHalf) {
    const uint32_t nr = std::min(kHalf, row_end - r0);
    const std::byte* row[kHalf];
    alignas(32) int32_t off[kHalf];
    for (uint32_t i = 0; i < kHalf; ++i) {
      off[i] = static_cast<int32_t>(std::min(i, nr - 1) * rb);  // rows past nr repeat the last
      row[i] = w.bytes.data() + r0 * rb + off[i];
    }
    S8Rows<kQ8> src{row, _mm256_load_si256(reinterpret_cast<const __m256i*>(off)), {}};
    // The rows 2 x 8 on (contiguous), asked for in step by the first token group.
    const ConstByteSpan next = RowsAhead(w, r0 + 2 * kHalf, kHalf, row_end);
    ForTokenGroups(n_tokens, [&](uint32_t t0, auto nt) {
      __m256 acc[nt];
      S8RowsTokens<kQ8, nt>(src, nb, quantized_x, w.cols, t0, next.data(),
                            t0 == 0 ? next.size() : 0, acc);
      for (uint32_t t = 0; t < nt; ++t) {
        StoreLanes(acc[t], nr, y + uint64_t{t0 + t} * w.rows + r0, 1);
      }
    });
  }
}

// DotRows for q4_0 / q8_0 rows anywhere in memory, 8 at a time: out[k * n_tokens + t]. False
// (nothing written) where two rows of a group are too far apart for the scales' int32 gather
// offsets.
template <bool kQ8>
bool DotRowsStrips8(uint32_t cols, std::span<const std::byte* const> rows, uint32_t n_tokens,
                    ConstByteSpan quantized_x, float* out) {
  const uint32_t count = static_cast<uint32_t>(rows.size());
  for (uint32_t k = 0; k < count; ++k) {
    const int64_t d = rows[k] - rows[k / kHalf * kHalf];
    if (d < INT32_MIN || d > INT32_MAX) return false;
  }
  const uint32_t nb = Blocks(cols);
  for (uint32_t k0 = 0; k0 < count; k0 += kHalf) {
    const uint32_t nr = std::min(kHalf, count - k0);
    const std::byte* row[kHalf];
    alignas(32) int32_t off[kHalf];
    for (uint32_t i = 0; i < kHalf; ++i) {
      row[i] = rows[k0 + std::min(i, nr - 1)];
      off[i] = static_cast<int32_t>(row[i] - row[0]);
    }
    S8Rows<kQ8> src{row, _mm256_load_si256(reinterpret_cast<const __m256i*>(off)), {}};
    ForTokenGroups(n_tokens, [&](uint32_t t0, auto nt) {
      __m256 acc[nt];
      S8RowsTokens<kQ8, nt>(src, nb, quantized_x, cols, t0, nullptr, 0, acc);
      for (uint32_t t = 0; t < nt; ++t) {
        StoreLanes(acc[t], nr, out + uint64_t{k0} * n_tokens + t0 + t, n_tokens);
      }
    });
  }
  return true;
}

// ---- q4_K and q6_K in strips of 8 rows a ymm (AVX2 without 512-bit VNNI) --------------------
// StripQ4K's and StripQ6K's arithmetic on ymm, 8 rows a pass (K8StripQ4K, K8StripQ6K below).
// Batches read an interleaved 16-row strip a half (8 rows) at a time, 4 tokens a pass; the second
// half finds the strip in L1 or L2. Decode reads both halves in one pass (K8StripQ4KPair,
// K8StripQ6K<1, 2>), so the strip is read once, front to back, while DRAM reads stay in flight;
// read a half at a time, one token of q6_K ran at 0.88-0.90 of the row-by-row kernel it
// replaced, in one pass at 1.2-1.7x of it (docs/benchmarks.md, "AVX2: q6_K in strips").
// Row-major rows are transposed a super-block at a time into a buffer on the stack, except for
// one token of q6_K (K8RowsQ6KOneToken), and ask for the matrix's next 8 rows as they go.
constexpr uint32_t kK8AheadSb = 2;      // interleaved: super-blocks asked for ahead (4.5 / 6.6 KiB)
constexpr uint32_t kK8RowsAheadSb = 4;  // row-major: the same rows' super-block this far on

// Where 8 rows' q4_K (kBytes = kQ4KBytes) or q6_K (kQ6KBytes) super-blocks come from: Load(sb)
// readies super-block sb; Vec(sb, B) lane i = row i's bytes B .. B + 3 of it (B a multiple of 4
// below 16 x (kBytes / 16)); D(sb), q6_K only, the rows' f16 d (bytes 208, 209) as f32;
// Prefetch(sb) asks for bytes read later.
// K8Interleaved: half h (rows 8h .. 8h + 7) of an interleaved 16-row strip of nsb super-blocks.
// There row i's bytes B .. B + 3 of super-block sb are at sb * kGroupsBytes + 16 B + 4 i, and
// q6_K's d values follow all the groups, 32 bytes a super-block (InterleaveStrips).
template <uint64_t kBytes>
struct K8Interleaved {
  static constexpr uint64_t kGroupsBytes = kBytes / 16 * 256;  // a super-block of the strip
  const std::byte* strip;
  uint32_t nsb, h;
  __attribute__((always_inline)) void Load(uint32_t) const {}
  __attribute__((always_inline)) __m256i Vec(uint32_t sb, uint32_t b) const {
    return _mm256_loadu_si256(
        reinterpret_cast<const __m256i*>(strip + sb * kGroupsBytes + 16 * uint64_t{b} + 32 * h));
  }
  __attribute__((always_inline)) __m256 D(uint32_t sb) const {
    static_assert(kBytes == kQ6KBytes);
    return _mm256_cvtph_ps(_mm_loadu_si128(
        reinterpret_cast<const __m128i*>(strip + nsb * kGroupsBytes + 32 * sb + 16 * h)));
  }
  // The first pass asks for the groups (and q6_K's d values) kK8AheadSb super-blocks on (past
  // the strip's end, bytes of the next strip, which follows it; a prefetch never faults).
  __attribute__((always_inline)) void Prefetch(uint32_t sb) const {
    if (h != 0) return;
    PrefetchBytes<kGroupsBytes, false>(strip + (uint64_t{sb} + kK8AheadSb) * kGroupsBytes);
    if constexpr (kBytes == kQ6KBytes) {
      _mm_prefetch(reinterpret_cast<const char*>(strip + nsb * kGroupsBytes +
                                                 32 * (uint64_t{sb} + kK8AheadSb)),
                   _MM_HINT_T0);
    }
  }
};

// Asks for super-block sb + kK8RowsAheadSb (of kBytes bytes) of each of 8 row-major rows of nsb.
template <uint64_t kBytes>
__attribute__((always_inline)) inline void PrefetchRows8(const std::byte* const* row, uint32_t sb,
                                                         uint32_t nsb) {
  if (sb + kK8RowsAheadSb >= nsb) return;
  for (int r = 0; r < 8; ++r)
    PrefetchBytes<kBytes>(row[r] + uint64_t{sb + kK8RowsAheadSb} * kBytes);
}

// K8Rows: 8 row-major rows row[0..7] of nsb super-blocks. Load transposes a super-block's whole
// 16-byte groups into `t` (9 transposes for q4_K, 13 for q6_K), where Vec finds them.
template <uint64_t kBytes>
struct K8Rows {
  static constexpr uint32_t kGroupBytes = kBytes / 16 * 16;  // 144 / 208
  const std::byte* const* row;
  uint32_t nsb;
  alignas(32) std::byte t[8 * kGroupBytes];  // row i's bytes B .. B + 3 at 8 B + 4 i
  __m256 d;                                  // q6_K
  const std::byte* next = nullptr;  // bytes read after these rows (the matrix's next rows), or null
  uint64_t next_bytes = 0;
  uint64_t next_share = 0;  // of them asked for at each super-block
  __attribute__((always_inline)) void Load(uint32_t sb) {
    const uint64_t o = uint64_t{sb} * kBytes;
    for (uint32_t q = 0; q < kGroupBytes; q += 16) {
      __m256i v[4];
      TransposeRows8(row, o + q, v);
      for (int k = 0; k < 4; ++k) {
        _mm256_store_si256(reinterpret_cast<__m256i*>(t + 8 * (q + 4 * k)), v[k]);
      }
    }
    if constexpr (kBytes == kQ6KBytes) {
      __m256i tail[4];  // bytes 194 .. 209: 16 bytes at 208 would pass the block's end
      TransposeRows8(row, o + 194, tail);
      d = Low16ToFloat(_mm256_srli_epi32(tail[3], 16));
    }
  }
  __attribute__((always_inline)) __m256i Vec(uint32_t, uint32_t b) const {
    return _mm256_load_si256(reinterpret_cast<const __m256i*>(t + 8 * b));
  }
  __attribute__((always_inline)) __m256 D(uint32_t) const { return d; }
  __attribute__((always_inline)) void Prefetch(uint32_t sb) const {
    PrefetchRows8<kBytes>(row, sb, nsb);
    PrefetchShare(next, next_bytes, next_share, sb);
  }
};

// The 16 header bytes of 8 rows' super-block sb (d | dmin, then the 12 packed scale bytes),
// unpacked as UnpackQ4KScales does: byte j of sc[j / 4] (mn[j / 4]) is sub-block j's scale (min).
struct K4Header {
  __m256 d, dmin;
  __m256i sc[2], mn[2];
};
template <class Src>
__attribute__((always_inline)) inline K4Header LoadK4Header(const Src& src, uint32_t sb) {
  const __m256i h0 = src.Vec(sb, 0), u0 = src.Vec(sb, 4), u1 = src.Vec(sb, 8), u2 = src.Vec(sb, 12);
  const __m256i m6 = _mm256_set1_epi32(0x3F3F3F3F), m4 = _mm256_set1_epi32(0x0F0F0F0F),
                m2 = _mm256_set1_epi32(0x30303030);
  K4Header hd;
  hd.d = Low16ToFloat(h0), hd.dmin = Low16ToFloat(_mm256_srli_epi32(h0, 16));
  hd.sc[0] = _mm256_and_si256(u0, m6);
  hd.sc[1] =
      _mm256_or_si256(_mm256_and_si256(u2, m4), _mm256_and_si256(_mm256_srli_epi32(u0, 2), m2));
  hd.mn[0] = _mm256_and_si256(u1, m6);
  hd.mn[1] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi32(u2, 4), m4),
                             _mm256_and_si256(_mm256_srli_epi32(u1, 2), m2));
  return hd;
}
// Sub-block j's d x scale (*dsc) and dmin x min (*dm), per lane.
__attribute__((always_inline)) inline void K4SubBlock(const K4Header& hd, uint32_t j, __m256* dsc,
                                                      __m256* dm) {
  const int shift = 8 * static_cast<int>(j % 4);
  const __m256i byte = _mm256_set1_epi32(0xFF);
  *dsc = _mm256_mul_ps(
      hd.d, _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srli_epi32(hd.sc[j / 4], shift), byte)));
  *dm = _mm256_mul_ps(
      hd.dmin, _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srli_epi32(hd.mn[j / 4], shift), byte)));
}

// q4_K: each 32-byte quarter of a super-block holds sub-blocks 2i and 2i + 1 in its low and high
// nibbles; each sub-block's 8 vectors are multiplied by broadcast activation bytes (S8Add:
// nibbles 0..15 unsigned, added as int16, at most 30720; vpdpbusd with AVX-VNNI), the 6-bit
// scales and mins unpacked in lanes from the super-block's first 16 bytes. Per lane, in order over
// sub-blocks: acc += f32(dot) * ((d * sc) * dx), then macc += (dmin * m) * xs; the result is acc -
// macc. So q4_K results on AVX2 do not depend on the batch, the row range, the thread count or
// the layout either.
// NT tokens over the 8 rows `src` reads: out[t] lane i = row i with token t.
template <int NT, class Src>
__attribute__((always_inline)) inline void K8StripQ4K(Src& src, uint32_t nb, const QToken* x,
                                                      bool prefetch, __m256* out) {
  const uint32_t nsb = static_cast<uint32_t>(CeilDiv(nb, 8));
  const __m256i low4 = _mm256_set1_epi8(0x0F);
  __m256 acc[NT], macc[NT];
  for (int t = 0; t < NT; ++t) acc[t] = macc[t] = _mm256_setzero_ps();
  for (uint32_t sb = 0; sb < nsb; ++sb) {
    if (prefetch) src.Prefetch(sb);
    src.Load(sb);
    const K4Header hd = LoadK4Header(src, sb);
    const uint32_t a0 = 8 * sb, count = std::min(8u, nb - a0);
    for (uint32_t i = 0; 2 * i < count; ++i) {
      __m256i t[8];  // quarter i: 32 bytes per row at 16 + 32i, held for both sub-blocks
      for (int k = 0; k < 8; ++k) t[k] = src.Vec(sb, 16 + 32 * i + 4 * k);
      for (uint32_t s = 0; s < 2 && 2 * i + s < count; ++s) {
        const uint32_t j = 2 * i + s, blk = a0 + j;
        __m256 dsc, dm;
        K4SubBlock(hd, j, &dsc, &dm);
        __m256i ia[NT];
        for (int tk = 0; tk < NT; ++tk) ia[tk] = S8Start<false>(0);
        for (int k = 0; k < 8; ++k) {
          const __m256i wk = s == 0 ? _mm256_and_si256(t[k], low4)
                                    : _mm256_and_si256(_mm256_srli_epi16(t[k], 4), low4);
          for (int tk = 0; tk < NT; ++tk) {
            ia[tk] = S8Add<false>(ia[tk], wk, Broadcast4(x[tk].q + uint64_t{blk} * kBlock + 4 * k));
          }
        }
        for (int tk = 0; tk < NT; ++tk) {
          acc[tk] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(S8Finish<false>(ia[tk], 0)),
                                    _mm256_mul_ps(dsc, _mm256_set1_ps(x[tk].d[blk])), acc[tk]);
          macc[tk] = _mm256_fmadd_ps(dm, _mm256_set1_ps(x[tk].dsum[blk]), macc[tk]);
        }
      }
    }
  }
  for (int t = 0; t < NT; ++t) out[t] = _mm256_sub_ps(acc[t], macc[t]);
}

// One token (decode) over both halves of an interleaved strip (src[0], src[1]) in one pass, so
// that each broadcast serves 16 rows and the strip is read once, front to back: out[g] lane i =
// row 8g + i. The same lanes' arithmetic as K8StripQ4K (the same bits). Each value vector is
// loaded where it is used (held for both sub-blocks, 16 of them would not fit the registers).
template <class Src>
__attribute__((always_inline)) inline void K8StripQ4KPair(const Src* src, uint32_t nb,
                                                          const QToken& x, __m256* out) {
  const uint32_t nsb = static_cast<uint32_t>(CeilDiv(nb, 8));
  const __m256i low4 = _mm256_set1_epi8(0x0F);
  __m256 acc[2], macc[2];
  for (int g = 0; g < 2; ++g) acc[g] = macc[g] = _mm256_setzero_ps();
  for (uint32_t sb = 0; sb < nsb; ++sb) {
    src[0].Prefetch(sb);
    const K4Header hd[2] = {LoadK4Header(src[0], sb), LoadK4Header(src[1], sb)};
    const uint32_t a0 = 8 * sb, count = std::min(8u, nb - a0);
    for (uint32_t j = 0; j < count; ++j) {  // sub-block j: quarter j / 2, nibbles j % 2
      const uint32_t blk = a0 + j;
      __m256i ia[2] = {S8Start<false>(0), S8Start<false>(0)};
      for (int k = 0; k < 8; ++k) {
        const __m256i xk = Broadcast4(x.q + uint64_t{blk} * kBlock + 4 * k);
        for (int g = 0; g < 2; ++g) {
          const __m256i raw = src[g].Vec(sb, 16 + 32 * (j / 2) + 4 * k);
          const __m256i wk = _mm256_and_si256(j % 2 == 0 ? raw : _mm256_srli_epi16(raw, 4), low4);
          ia[g] = S8Add<false>(ia[g], wk, xk);
        }
      }
      for (int g = 0; g < 2; ++g) {
        __m256 dsc, dm;
        K4SubBlock(hd[g], j, &dsc, &dm);
        acc[g] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(S8Finish<false>(ia[g], 0)),
                                 _mm256_mul_ps(dsc, _mm256_set1_ps(x.d[blk])), acc[g]);
        macc[g] = _mm256_fmadd_ps(dm, _mm256_set1_ps(x.dsum[blk]), macc[g]);
      }
    }
  }
  for (int g = 0; g < 2; ++g) out[g] = _mm256_sub_ps(acc[g], macc[g]);
}

// q6_K: per half super-block (128 values) and activation block K of it (values 32K .. 32K + 31
// of the half), each of the block's 8 value dwords is made for 8 rows at once from the half's
// low-bit bytes (a nibble) and high-bit bytes (2 bits moved to bits 4, 5): unsigned 6-bit values
// 0..63. They meet broadcast activation bytes: without VNNI two vpmaddubsw at a time (a pair of
// products is at most 2 x 63 x 127 = 16002 in size, so two add up in int16), widened with
// vpmaddwd, and 32 x the 16 values' activation sum taken off; with AVX-VNNI vpdpbusd from -32 x
// that sum. The same integers. Each 16-value half of a block has its own scale: per lane, acc +=
// f32(dot_lo) * ((d * sc_lo) * dx), then the same for the high half, blocks in order. So q6_K
// results on AVX2 do not depend on the batch, the row range, the thread count or the layout
// either.

// Dword j of activation block K of half h of a super-block, for the 8 rows: the 6-bit values
// (low nibble from the low-bit bytes, the block's 2 high bits from the high-bit bytes).
template <int K, class Src>
__attribute__((always_inline)) inline __m256i K6Values(const Src& src, uint32_t sb, uint32_t h,
                                                       int j) {
  const __m256i l = src.Vec(sb, 64 * h + 32 * (K % 2) + 4 * j);
  __m256i hi = src.Vec(sb, 128 + 32 * h + 4 * j);  // bits 2K, 2K + 1 of each byte are K's
  if constexpr (K == 0) hi = _mm256_slli_epi16(hi, 4);
  if constexpr (K == 1) hi = _mm256_slli_epi16(hi, 2);
  if constexpr (K == 3) hi = _mm256_srli_epi16(hi, 2);
  const __m256i lo = K < 2 ? l : _mm256_srli_epi16(l, 4);
  return _mm256_or_si256(_mm256_and_si256(lo, _mm256_set1_epi8(0x0F)),
                         _mm256_and_si256(hi, _mm256_set1_epi8(0x30)));
}

// One 16-value half's accumulator (K6Start, K6Add2 per two value dwords, K6Finish): the exact
// sum of (q - 32) x, from the unsigned 6-bit q and the half's activation sum.
__attribute__((always_inline)) inline __m256i K6Start(int32_t half_sum) {
#ifdef FLASHLM_VNNI
  return _mm256_set1_epi32(-32 * half_sum);
#else
  (void)half_sum;
  return _mm256_setzero_si256();
#endif
}
__attribute__((always_inline)) inline __m256i K6Add2(__m256i s, __m256i w0, __m256i x0, __m256i w1,
                                                     __m256i x1) {
#ifdef FLASHLM_VNNI
  return _mm256_dpbusd_epi32(_mm256_dpbusd_epi32(s, w0, x0), w1, x1);
#else
  const __m256i p = _mm256_add_epi16(_mm256_maddubs_epi16(w0, x0), _mm256_maddubs_epi16(w1, x1));
  return _mm256_add_epi32(s, _mm256_madd_epi16(p, _mm256_set1_epi16(1)));
#endif
}
__attribute__((always_inline)) inline __m256i K6Finish(__m256i s, int32_t half_sum) {
#ifdef FLASHLM_VNNI
  (void)half_sum;
  return s;
#else
  return _mm256_sub_epi32(s, _mm256_set1_epi32(32 * half_sum));
#endif
}

// H sources of 8 rows each (src[0 .. H)) in one pass, NT tokens: out[g * NT + t] lane i = row i
// of src[g] with token t. H = 2 takes both halves of an interleaved strip at once (decode), so
// each broadcast serves 16 rows and the strip is read once, front to back.
template <int NT, int H, class Src>
__attribute__((always_inline)) inline void K8StripQ6K(Src* src, uint32_t nb, const QToken* x,
                                                      bool prefetch, __m256* out) {
  const uint32_t nsb = static_cast<uint32_t>(CeilDiv(nb, 8));
  __m256 acc[H * NT];
  for (int i = 0; i < H * NT; ++i) acc[i] = _mm256_setzero_ps();
  for (uint32_t sb = 0; sb < nsb; ++sb) {
    if (prefetch) src[0].Prefetch(sb);
    __m256 d[H];
    for (int g = 0; g < H; ++g) src[g].Load(sb), d[g] = src[g].D(sb);
    const uint32_t a0 = 8 * sb, count = std::min(8u, nb - a0);
    for (uint32_t h = 0; 4 * h < count; ++h) {
      const auto block = [&](auto kc) {
        constexpr int K = decltype(kc)::value;
        const uint32_t blk = a0 + 4 * h + K;
        for (int part = 0; part < 2; ++part) {  // values 16 part .. 16 part + 15 of the block
          __m256i s[H][NT];
          for (int t = 0; t < NT; ++t) {
            for (int g = 0; g < H; ++g) s[g][t] = K6Start(x[t].half_isum[2 * blk + part]);
          }
          for (int j = 4 * part; j < 4 * part + 4; j += 2) {
            __m256i w[H][2];
            for (int g = 0; g < H; ++g) {
              w[g][0] = K6Values<K>(src[g], sb, h, j), w[g][1] = K6Values<K>(src[g], sb, h, j + 1);
            }
            for (int t = 0; t < NT; ++t) {
              const int8_t* xb = x[t].q + uint64_t{blk} * kBlock + 4 * j;
              const __m256i x0 = Broadcast4(xb), x1 = Broadcast4(xb + 4);
              for (int g = 0; g < H; ++g) s[g][t] = K6Add2(s[g][t], w[g][0], x0, w[g][1], x1);
            }
          }
          // Scale 8h + 2K + part of the super-block's 16: byte 2 (K % 2) + part of this dword.
          const int byte = 2 * (K % 2) + part;
          for (int g = 0; g < H; ++g) {
            const __m256i sv = src[g].Vec(sb, 192 + 8 * h + 4 * (K / 2));
            const __m256 dsc = _mm256_mul_ps(d[g], _mm256_cvtepi32_ps(_mm256_srai_epi32(
                                                       _mm256_slli_epi32(sv, 24 - 8 * byte), 24)));
            for (int t = 0; t < NT; ++t) {
              const __m256i p = K6Finish(s[g][t], x[t].half_isum[2 * blk + part]);
              acc[g * NT + t] =
                  _mm256_fmadd_ps(_mm256_cvtepi32_ps(p),
                                  _mm256_mul_ps(dsc, _mm256_set1_ps(x[t].d[blk])), acc[g * NT + t]);
            }
          }
        }
      };
      const uint32_t kn = std::min(4u, count - 4 * h);
      block(std::integral_constant<int, 0>{});
      if (kn > 1) block(std::integral_constant<int, 1>{});
      if (kn > 2) block(std::integral_constant<int, 2>{});
      if (kn > 3) block(std::integral_constant<int, 3>{});
    }
  }
  for (int i = 0; i < H * NT; ++i) out[i] = acc[i];
}

// One token over 8 row-major q6_K rows row[0..7] of nsb super-blocks (decode of streamed rows):
// out lane i = row i, the same lanes' arithmetic as K8StripQ6K (the same bits). Each row's block
// dots are taken along the row (its values in the lanes, as the row-by-row kernel before the
// strips did), and only the int32 half-block dots are transposed into row lanes for the f32
// steps. Transposing every value byte first (K8Rows) ran at 0.59-0.73 of the row kernel's rate
// (docs/benchmarks.md, "AVX2: q6_K in strips"); this, with the next rows asked for, at 0.94-1.2.
// `next` / `next_bytes`: bytes read after these rows (the matrix's next rows), asked for a
// super-block's share at a time.
__attribute__((always_inline)) inline __m256 K8RowsQ6KOneToken(const std::byte* const* row,
                                                               uint32_t nsb, uint32_t nb,
                                                               const QToken& x,
                                                               const std::byte* next,
                                                               uint64_t next_bytes) {
  const __m256i low4 = _mm256_set1_epi8(0x0F), two = _mm256_set1_epi8(3),
                ones = _mm256_set1_epi16(1);
  __m256 acc = _mm256_setzero_ps();
  const uint64_t share = ShareOver(next_bytes, nsb);
  for (uint32_t sb = 0; sb < nsb; ++sb) {
    PrefetchShare(next, next_bytes, share, sb);
    const uint64_t o = uint64_t{sb} * kQ6KBytes;
    __m256i sc4[4], tail[4];  // the 16 int8 scales, 4 a dword; bytes 194 .. 209 (for d)
    TransposeRows8(row, o + 192, sc4);
    TransposeRows8(row, o + 194, tail);
    const __m256 d = Low16ToFloat(_mm256_srli_epi32(tail[3], 16));
    const uint32_t a0 = 8 * sb, count = std::min(8u, nb - a0);
    for (uint32_t h = 0; 4 * h < count; ++h) {
      const uint32_t kn = std::min(4u, count - 4 * h);
      // dots[r] = row r's [lo_0 .. lo_3 | hi_0 .. hi_3]: blocks 4h .. 4h + 3's 16-value half
      // dots with the unsigned 6-bit values (before 32 x the half sums are taken off).
      __m256i dots[8];
      for (int r = 0; r < 8; ++r) {
        const std::byte* q = row[r] + o;
        const __m256i l0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + 64 * h));
        const __m256i l1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + 64 * h + 32));
        const __m256i hb = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + 128 + 32 * h));
        __m256i m[4];
        for (uint32_t k = 0; k < 4; ++k) {
          if (k >= kn) {  // past the row's last block (no activations there)
            m[k] = _mm256_setzero_si256();
            continue;
          }
          const __m256i l = k % 2 == 0 ? l0 : l1;
          const __m256i lo = k < 2 ? l : _mm256_srli_epi16(l, 4);
          const __m256i hi2 = _mm256_and_si256(_mm256_srli_epi16(hb, 2 * k), two);
          const __m256i v = _mm256_or_si256(_mm256_and_si256(lo, low4), _mm256_slli_epi16(hi2, 4));
          const __m256i xb = _mm256_loadu_si256(
              reinterpret_cast<const __m256i*>(x.q + uint64_t{a0 + 4 * h + k} * kBlock));
          m[k] = _mm256_madd_epi16(_mm256_maddubs_epi16(v, xb), ones);  // exact: pairs <= 16002
        }
        dots[r] = _mm256_hadd_epi32(_mm256_hadd_epi32(m[0], m[1]), _mm256_hadd_epi32(m[2], m[3]));
      }
      __m256i t[8];  // t[part * 4 + K] lane r: row r's dot of block 4h + K's half `part`
      Transpose8x8Epi32(dots, t);
      for (uint32_t k = 0; k < kn; ++k) {
        const uint32_t blk = a0 + 4 * h + k;
        const __m256i sv = sc4[2 * h + k / 2];
        for (int part = 0; part < 2; ++part) {
          const int byte = 2 * static_cast<int>(k % 2) + part;
          const __m256 dsc = _mm256_mul_ps(
              d, _mm256_cvtepi32_ps(_mm256_srai_epi32(_mm256_slli_epi32(sv, 24 - 8 * byte), 24)));
          const __m256i p = _mm256_sub_epi32(t[4 * part + k],
                                             _mm256_set1_epi32(32 * x.half_isum[2 * blk + part]));
          acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_mul_ps(dsc, _mm256_set1_ps(x.d[blk])),
                                acc);
        }
      }
    }
  }
  return acc;
}

// Every token, 4 at a time, over the 8 rows `src` reads (the first nr of them kept), through
// K8StripQ4K or (kQ6) K8StripQ6K: token t's row i at y[t * token_stride + i * row_stride].
// Prefetches on the last pass only (earlier passes' reads are re-read there).
template <bool kQ6, class Src>
void K8Tokens(Src& src, uint32_t cols, uint32_t n_tokens, ConstByteSpan quantized_x, uint32_t nr,
              float* y, uint64_t token_stride, uint64_t row_stride) {
  const uint32_t nb = Blocks(cols);
  ForTokenGroups(n_tokens, [&](uint32_t t0, auto nt) {
    QToken x[nt];
    for (uint32_t i = 0; i < nt; ++i) x[i] = QTokenAt(quantized_x, cols, t0 + i);
    __m256 out[nt];
    if constexpr (kQ6) {
      K8StripQ6K<nt, 1>(&src, nb, x, t0 + nt == n_tokens, out);
    } else {
      K8StripQ4K<nt>(src, nb, x, t0 + nt == n_tokens, out);
    }
    for (uint32_t t = 0; t < nt; ++t)
      StoreLanes(out[t], nr, y + (t0 + t) * token_stride, row_stride);
  });
}

// K8Tokens over 8 row-major rows row[0..7] of nsb super-blocks.
template <bool kQ6>
void K8RowsTokens(const std::byte* const* row, uint32_t nsb, uint32_t cols, uint32_t n_tokens,
                  ConstByteSpan quantized_x, uint32_t nr, float* y, uint64_t token_stride,
                  uint64_t row_stride, const std::byte* next, uint64_t next_bytes) {
  if constexpr (kQ6) {
    if (n_tokens == 1) {
      const QToken x = QTokenAt(quantized_x, cols, 0);
      StoreLanes(K8RowsQ6KOneToken(row, nsb, Blocks(cols), x, next, next_bytes), nr, y, row_stride);
      return;
    }
  }
  K8Rows<kQ6 ? kQ6KBytes : kQ4KBytes> src;  // (its buffer is written before it is read)
  src.row = row, src.nsb = nsb;
  src.next = next, src.next_bytes = next_bytes, src.next_share = ShareOver(next_bytes, nsb);
  K8Tokens<kQ6>(src, cols, n_tokens, quantized_x, nr, y, token_stride, row_stride);
}

// MatMulRows for q4_K (kQ6 false) and q6_K: interleaved 16-row strips a half at a time,
// row-major rows 8 at a time.
template <bool kQ6>
void MatMulRowsKStrips8(const MatrixView& w, uint32_t n_tokens, ConstByteSpan quantized_x,
                        uint32_t row_begin, uint32_t row_end, float* y) {
  constexpr uint64_t kBytes = kQ6 ? kQ6KBytes : kQ4KBytes;
  const uint32_t nsb = static_cast<uint32_t>(CeilDiv(Blocks(w.cols), 8));
  const uint64_t rb = w.row_bytes();
  if (w.strips) {
    CHECK_EQ(row_begin % kStrip16, 0u);  // a range of whole strips
    for (uint32_t r0 = row_begin; r0 < row_end; r0 += kStrip16) {
      const std::byte* strip = w.bytes.data() + uint64_t{r0} * rb;
      if (n_tokens == 1) {  // decode: both halves in one pass
        K8Interleaved<kBytes> src[2] = {{strip, nsb, 0}, {strip, nsb, 1}};
        const QToken x = QTokenAt(quantized_x, w.cols, 0);
        __m256 out[2];
        if constexpr (kQ6) {
          K8StripQ6K<1, 2>(src, Blocks(w.cols), &x, true, out);
        } else {
          K8StripQ4KPair(src, Blocks(w.cols), x, out);
        }
        for (uint32_t h = 0; h < 2 && r0 + h * kHalf < row_end; ++h) {
          StoreLanes(out[h], std::min(kHalf, row_end - r0 - h * kHalf), y + r0 + h * kHalf, 1);
        }
        continue;
      }
      for (uint32_t h = 0; h < 2 && r0 + h * kHalf < row_end; ++h) {
        const uint32_t nr = std::min(kHalf, row_end - r0 - h * kHalf);
        K8Interleaved<kBytes> src{strip, nsb, h};
        K8Tokens<kQ6>(src, w.cols, n_tokens, quantized_x, nr, y + r0 + h * kHalf, w.rows, 1);
      }
    }
    return;
  }
  for (uint32_t r0 = row_begin; r0 < row_end; r0 += kHalf) {
    const uint32_t nr = std::min(kHalf, row_end - r0);
    const std::byte* row[kHalf];
    for (uint32_t i = 0; i < kHalf; ++i) row[i] = w.bytes.data() + (r0 + std::min(i, nr - 1)) * rb;
    // The rows 8 on (contiguous), asked for as these are read (on the last token pass).
    const ConstByteSpan next = RowsAhead(w, r0 + kHalf, kHalf, row_end);
    K8RowsTokens<kQ6>(row, nsb, w.cols, n_tokens, quantized_x, nr, y + r0, w.rows, 1, next.data(),
                      next.size());
  }
}

// DotRows for q4_K (kQ6 false) or q6_K rows anywhere in memory, 8 at a time:
// out[k * n_tokens + t].
template <bool kQ6>
void DotRowsKStrips8(uint32_t cols, std::span<const std::byte* const> rows, uint32_t n_tokens,
                     ConstByteSpan quantized_x, float* out) {
  const uint32_t count = static_cast<uint32_t>(rows.size());
  const uint32_t nsb = static_cast<uint32_t>(CeilDiv(Blocks(cols), 8));
  for (uint32_t k0 = 0; k0 < count; k0 += kHalf) {
    const uint32_t nr = std::min(kHalf, count - k0);
    const std::byte* row[kHalf];
    for (uint32_t i = 0; i < kHalf; ++i) row[i] = rows[k0 + std::min(i, nr - 1)];
    K8RowsTokens<kQ6>(row, nsb, cols, n_tokens, quantized_x, nr, out + uint64_t{k0} * n_tokens, 1,
                      n_tokens, nullptr, 0);
  }
}
#endif

template <int NT>
void RowDispatch(const MatrixView& w, uint32_t r, const float* const* x, const int8_t* const* xq,
                 const float* const* xd, const float* const* xs, float* out) {
  const std::byte* row = w.bytes.data() + r * w.row_bytes();
  switch (w.dtype) {
    case DType::kF32:
      return RowF32<NT>(reinterpret_cast<const float*>(row), x, w.cols, out);
    case DType::kF16:
      return RowFloat<NT, DType::kF16>(row, x, w.cols, out);
    case DType::kBF16:
      return RowFloat<NT, DType::kBF16>(row, x, w.cols, out);
#ifndef FLASHLM_AVX2  // AVX2 builds multiply q8_0 and q4_0 in strips: MatMulRows never sends them
    case DType::kQ8_0:
      return RowQ<NT, false>(row, xq, xd, Blocks(w.cols), out);
    case DType::kQ4_0:
      return RowQ<NT, true>(row, xq, xd, Blocks(w.cols), out);
#endif
#ifndef FLASHLM_AVX2  // and q4_K and q6_K
    case DType::kQ4_K:
      return RowQ4K<NT>(row, xq, xd, xs, Blocks(w.cols), out);
    case DType::kQ6_K:
      return RowQ6K<NT>(row, xq, xd, xs, Blocks(w.cols), out);
#endif
    default:
      CHECK(false && "unsupported dtype in MatMul");
  }
}

// Dtypes multiplied against q8 activations.
bool IsBlockType(DType t) {
  return t == DType::kQ8_0 || t == DType::kQ4_0 || t == DType::kQ4_K || t == DType::kQ6_K;
}

#if defined(FLASHLM_AVX2)
// ---- Prefill GEMM for f32 / f16: weight panels x token groups x column chunks x register tiles
// For a batch, rows [row_begin, row_end) are cut into panels of about kPanelBytes of weights
// (they stay in L2 while every token group passes over them, so each weight byte comes from DRAM
// once per call), each panel meets the tokens in groups of at most kGroupF32, as even as that
// allows (so no group of one token behind full ones), and rows longer than
// kChunkF32 columns go kChunkF32 columns at a time, so that a group's slice of activations
// (6 x 4 KiB on AVX-512) stays in L1 while every row of the panel meets it; the register tiles'
// accumulators wait in a buffer between chunks (TileFloat's acc_mem; the same sums bit for bit).
// Within that, kTileRowsF32 rows at a time meet the group in one register tile (rows left over
// one at a time, with the same tile code, so results do not depend on where a row falls). A group
// of one token would go one row at a time. On the 1b model's 2048- and
// 5632-column f32 matrices this took prefill from 58 to 66 tok/s at 1 thread, against 192 KiB
// panels whole rows at a time (docs/benchmarks.md, "f32 prefill in column chunks; strips
// prefetched 2 KiB ahead"). f16 rows run the same code, converted to f32 as they are loaded.
// (The block dtypes have strips of their own on AVX-512: MatMulRowsBlockStrips,
// MatMulRowsKStrips.) CPUs without AVX-512 run the same code with AVX2's tiles (kTileRowsF32 x
// kGroupF32 = 3 x 4). Measured there (x86-64-v3 build on the AMD EPYC, alternated rounds)
// against RowFloat's 4 tokens a row over 256 KiB panels: a 5632 x 2048 f32 matrix times 128
// tokens 57-60 -> 43-45 ms with 2 x 3 tiles of both halves (docs/benchmarks.md, "AVX2: q4_0
// without the sign trick; f32 register tiles"); 3 x 4 tiles a half at a time took that to 33-34
// ms ("AVX2: f32 tiles of 3 x 4, a half at a time").
constexpr uint64_t kPanelBytes = 640 << 10;
constexpr uint32_t kChunkF32 = 1024;  // columns per chunk (a multiple of 16)
// A panel of rows that are chunked (longer than kChunkF32 columns) has at most this many rows
// (f32 rows fill kPanelBytes with that many; f16 / bf16 rows have twice as many, capped).
constexpr uint32_t kMaxChunkedPanelRows = kPanelBytes / (kChunkF32 * sizeof(float));

// Rows [r0, r1) against tokens t0 .. t0 + NT - 1 (x indexed from t0).
template <int NT, DType kT>
void PanelTokens(const MatrixView& w, uint32_t r0, uint32_t r1, const float* const* x, uint32_t t0,
                 float* y) {
  const uint32_t cols = w.cols;
  const uint64_t rb = w.row_bytes();
  const uint32_t c16 = cols / 16 * 16;
  alignas(64) float acc[kMaxChunkedPanelRows * NT * 16];  // [row][token][lane], chunked rows
  float out[kTileRowsF32 * NT];
  const std::byte* rows[kTileRowsF32];
  // Row r's first value and the values skipped after each of its pieces (f32 in strips).
  CHECK(!w.strips || (kT == DType::kF32 && c16 == cols));
  const uint32_t skip = w.strips ? kF32ChunkSkip : 0;
  const auto row_at = [&](uint32_t r) {
    if (!w.strips) return w.bytes.data() + uint64_t{r} * rb;
    return w.bytes.data() + uint64_t{r / kF32StripRows} * kF32StripRows * rb +
           uint64_t{r % kF32StripRows} * kF32ChunkCols * sizeof(float);
  };
  for (uint32_t c0 = 0;;) {
    const uint32_t c1 = c16 - c0 > kChunkF32 ? c0 + kChunkF32 : c16;
    const bool last = c1 == c16;
    CHECK(last || r1 - r0 <= kMaxChunkedPanelRows);
    for (uint32_t r = r0; r < r1;) {
      const uint32_t nr = NT > 1 && r + kTileRowsF32 <= r1 ? kTileRowsF32 : 1;
      for (uint32_t i = 0; i < nr; ++i) rows[i] = row_at(r + i);
      float* acc_mem = acc + uint64_t{r - r0} * NT * 16;
      if (nr == kTileRowsF32) {
        TileFloat<kTileRowsF32, NT, kT>(rows, skip, x, c0, c1, cols, last, acc_mem, out);
      } else {
        TileFloat<1, NT, kT>(rows, skip, x, c0, c1, cols, last, acc_mem, out);
      }
      if (last) {
        for (uint32_t i = 0; i < nr; ++i) {
          for (int t = 0; t < NT; ++t) y[uint64_t{t0 + t} * w.rows + r + i] = out[i * NT + t];
        }
      }
      r += nr;
    }
    if (last) break;
    c0 = c1;
  }
}

#ifdef FLASHLM_AVX512
// One token over rows [row_begin, row_end) (row_begin a multiple of kF32StripRows) of an f32
// matrix in strips: per group of rows, one accumulator a row, each taking its row's 16-lane fused
// products in column order as RowFloat's one accumulator does, then reduced as ReduceLikeRowF32
// does: the same bits as RowFloat. The matrix is read front to back as one stream, and each
// 1 KiB of activations meets the group's rows one after another while it is in L1. Against
// row-major rows (RowFloat), one token over a 0.7 GiB matrix from DRAM at 1 thread on the AMD
// EPYC: 7-14% less time in alternating runs (docs/benchmarks.md, "f32 rows in groups of four",
// its "Groups of two").
void MatMulRowsF32Strips(const MatrixView& w, const float* x, uint32_t row_begin, uint32_t row_end,
                         float* y) {
  CHECK_EQ(row_begin % kF32StripRows, 0u);
  CHECK_EQ(w.cols % kF32ChunkCols, 0u);
  const uint64_t rb = w.row_bytes();
  for (uint32_t r0 = row_begin; r0 < row_end; r0 += kF32StripRows) {
    const float* group = reinterpret_cast<const float*>(w.bytes.data() + uint64_t{r0} * rb);
    const uint32_t nr = std::min(kF32StripRows, row_end - r0);
    __m512 acc[kF32StripRows];
    for (__m512& a : acc) a = _mm512_setzero_ps();
    for (uint32_t c0 = 0; c0 < w.cols; c0 += kF32ChunkCols) {
      const float* piece = group + uint64_t{c0} * kF32StripRows;
      for (uint32_t i = 0; i < kF32StripRows; ++i) {
        for (uint32_t c = 0; c < kF32ChunkCols; c += 16) {
          acc[i] = _mm512_fmadd_ps(_mm512_loadu_ps(piece + i * kF32ChunkCols + c),
                                   _mm512_loadu_ps(x + c0 + c), acc[i]);
        }
      }
    }
    for (uint32_t i = 0; i < nr; ++i) y[r0 + i] = ReduceLikeRowF32(acc[i]);
  }
}
#endif

template <DType kT>
void MatMulRowsTiledFloat(const MatrixView& w, std::span<const float> x, uint32_t n_tokens,
                          uint32_t row_begin, uint32_t row_end, float* y) {
  constexpr uint64_t kR = kTileRowsF32;
  uint64_t panel_rows64 = std::max<uint64_t>(kR, kPanelBytes / w.row_bytes() / kR * kR);
  if (w.cols > kChunkF32) {
    panel_rows64 = std::min<uint64_t>(panel_rows64, kMaxChunkedPanelRows / kR * kR);
  }
  const uint32_t panel_rows = static_cast<uint32_t>(std::min<uint64_t>(panel_rows64, w.rows));
  for (uint32_t p0 = row_begin; p0 < row_end; p0 += panel_rows) {
    const uint32_t p1 = std::min(row_end, p0 + panel_rows);
    // Groups of as even a size as kGroupF32 allows (5 tokens on AVX2: 3 + 2, not 4 + 1).
    const uint32_t groups = (n_tokens + kGroupF32 - 1) / kGroupF32;
    for (uint32_t g = 0, t0 = 0; g < groups; ++g) {
      const uint32_t nt = (n_tokens - t0 + (groups - g) - 1) / (groups - g);
      const float* xs[kGroupF32] = {};
      for (uint32_t i = 0; i < nt; ++i) xs[i] = x.data() + uint64_t{t0 + i} * w.cols;
      // PanelTokens<nt, kT>, for nt in 1 .. kGroupF32.
      [&]<uint32_t... I>(std::integer_sequence<uint32_t, I...>) {
        ((nt == I + 1 ? PanelTokens<I + 1, kT>(w, p0, p1, xs, t0, y) : void()), ...);
      }
      (std::make_integer_sequence<uint32_t, kGroupF32>());
      t0 += nt;
    }
  }
}
#endif

}  // namespace

bool SetAmx(bool allowed) {
#ifdef FLASHLM_AVX512_VNNI
  amx_allowed.store(allowed, std::memory_order_relaxed);
  return UseAmx();
#else
  (void)allowed;
  return false;
#endif
}

bool MatMulSupports(DType dtype) {
  return dtype == DType::kF32 || dtype == DType::kF16 || dtype == DType::kBF16 ||
         IsBlockType(dtype);
}

bool CanInterleaveStrips(DType dtype, uint32_t rows, uint32_t cols) {
  if (rows == 0 || rows % 16 != 0 || cols == 0) return false;
#ifdef FLASHLM_AVX512
  if (dtype == DType::kF32) return cols % kF32ChunkCols == 0;
#endif
#ifdef FLASHLM_AVX512_VNNI
  if (dtype == DType::kQ4_0 || dtype == DType::kQ8_0) return cols % (2 * kBlock) == 0;
  return dtype == DType::kQ4_K || dtype == DType::kQ6_K;
#elif defined(FLASHLM_STRIPS8)
  if (dtype == DType::kQ4_0 || dtype == DType::kQ8_0) return cols % (2 * kBlock) == 0;
  return dtype == DType::kQ4_K || dtype == DType::kQ6_K;
#else
  (void)dtype;
  return false;
#endif
}

void InterleaveStrips(DType dtype, uint32_t rows, uint32_t cols, ByteSpan bytes) {
  CHECK(CanInterleaveStrips(dtype, rows, cols));
  constexpr uint32_t kRows = 16;
  const uint64_t rb = layout::RowBytes(dtype, cols), strip_bytes = kRows * rb;
  CHECK_EQ(bytes.size(), uint64_t{rows} * rb);
  std::vector<std::byte> src(strip_bytes);
  for (uint32_t s = 0; s < rows / kRows; ++s) {
    std::byte* out = bytes.data() + s * strip_bytes;
    std::memcpy(src.data(), out, strip_bytes);
    if (dtype == DType::kF32) {  // groups of kF32StripRows rows, piece by piece
      constexpr uint64_t kPieceBytes = kF32ChunkCols * sizeof(float);
      for (uint32_t g = 0; g < kRows / kF32StripRows; ++g) {
        std::byte* group = out + uint64_t{g} * kF32StripRows * rb;
        for (uint32_t k = 0; k < cols / kF32ChunkCols; ++k) {
          for (uint32_t i = 0; i < kF32StripRows; ++i) {
            std::memcpy(group + (uint64_t{k} * kF32StripRows + i) * kPieceBytes,
                        src.data() + (g * kF32StripRows + i) * rb + k * kPieceBytes, kPieceBytes);
          }
        }
      }
      continue;
    }
    if (dtype == DType::kQ4_0 || dtype == DType::kQ8_0) {
      const bool q8 = dtype == DType::kQ8_0;
      const uint32_t block_bytes = q8 ? kQ8Bytes : kQ4Bytes;
      const uint32_t vectors = q8 ? 8 : 4;  // of a block
      const uint64_t pair_bytes = 2 * uint64_t{kRows} * block_bytes;
      for (uint32_t b = 0; b < cols / kBlock; ++b) {
        std::byte* pair = out + uint64_t{b / 2} * pair_bytes;
        std::byte* v = pair + (b % 2) * 64 * vectors;
        std::byte* scales = pair + 2 * 64 * vectors + (b % 2) * 32;
        for (uint32_t i = 0; i < kRows; ++i) {
          const std::byte* blk = src.data() + i * rb + uint64_t{b} * block_bytes;
          std::memcpy(scales + 2 * i, blk, 2);
          for (uint32_t k = 0; k < vectors; ++k) {
            std::memcpy(v + 64 * k + 4 * i, blk + 2 + 4 * k, 4);
          }
        }
      }
      continue;
    }
    // q4_K / q6_K: super-block j's groups, then every super-block's tail bytes.
    const uint32_t block_bytes = dtype == DType::kQ4_K ? kQ4KBytes : kQ6KBytes;
    const uint32_t groups = block_bytes / 16, tail = block_bytes % 16;
    const uint32_t nsb = static_cast<uint32_t>(rb / block_bytes);
    for (uint32_t j = 0; j < nsb; ++j) {
      for (uint32_t i = 0; i < kRows; ++i) {
        const std::byte* blk = src.data() + i * rb + uint64_t{j} * block_bytes;
        std::byte* groups_out = out + uint64_t{j} * groups * 256;
        for (uint32_t g = 0; g < groups; ++g) {
          for (uint32_t k = 0; k < 4; ++k) {
            std::memcpy(groups_out + 256 * g + 64 * k + 4 * i, blk + 16 * g + 4 * k, 4);
          }
        }
        std::memcpy(out + uint64_t{nsb} * groups * 256 + (uint64_t{j} * kRows + i) * tail,
                    blk + 16 * groups, tail);
      }
    }
  }
}

MatrixView KeepInStrips(const MatrixView& view, ByteSpan bytes) {
  CHECK(bytes.data() == view.bytes.data() && bytes.size() == view.bytes.size());
  if (view.strips || !CanInterleaveStrips(view.dtype, view.rows, view.cols)) return view;
  InterleaveStrips(view.dtype, view.rows, view.cols, bytes);
  MatrixView out = view;
  out.strips = true;
  return out;
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
    int32_t* int_sum = reinterpret_cast<int32_t*>(sum + nb);
    const float* xt = x.data() + uint64_t{t} * cols;
    for (uint32_t b = 0; b < nb; ++b) {
      const uint32_t c0 = b * kBlock, n = std::min(kBlock, cols - c0);
      int32_t isum[2] = {0, 0};
      float scale;
#ifdef FLASHLM_AVX512
      if (n == kBlock) {  // the same operations on 16 lanes: max is exact, and cvtps rounds to
                          // nearest even as nearbyint does (default rounding mode)
        const __m512 x0 = _mm512_loadu_ps(xt + c0), x1 = _mm512_loadu_ps(xt + c0 + 16);
        const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(x0), _mm512_abs_ps(x1)));
        scale = amax / 127.0f;
        const __m512 inv = _mm512_set1_ps(scale != 0.0f ? 1.0f / scale : 0.0f);
        const __m512i q0 = _mm512_cvtps_epi32(_mm512_mul_ps(x0, inv));
        const __m512i q1 = _mm512_cvtps_epi32(_mm512_mul_ps(x1, inv));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(q + c0), _mm512_cvtepi32_epi8(q0));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(q + c0 + 16), _mm512_cvtepi32_epi8(q1));
        isum[0] = _mm512_reduce_add_epi32(q0);
        isum[1] = _mm512_reduce_add_epi32(q1);
      } else
#elif defined(FLASHLM_AVX2)
      if (n == kBlock) {  // the same operations on 8 lanes, as on AVX-512 above
        __m256 xv[4];
        __m256 amax8 = _mm256_setzero_ps();
        const __m256 sign = _mm256_set1_ps(-0.0f);
        for (int k = 0; k < 4; ++k) {
          xv[k] = _mm256_loadu_ps(xt + c0 + 8 * k);
          // (|x| > amax ? |x| : amax), std::max(amax, |x|)'s choice, NaN included.
          amax8 = _mm256_max_ps(_mm256_andnot_ps(sign, xv[k]), amax8);
        }
        scale = HorizontalMax(amax8) / 127.0f;
        const __m256 inv = _mm256_set1_ps(scale != 0.0f ? 1.0f / scale : 0.0f);
        __m256i qi[4];
        for (int k = 0; k < 4; ++k) qi[k] = _mm256_cvtps_epi32(_mm256_mul_ps(xv[k], inv));
        // |q| <= 127, so the saturating packs are exact; they interleave 128-bit lanes, which
        // the final dword permute puts back in column order.
        const __m256i w01 = _mm256_packs_epi32(qi[0], qi[1]);
        const __m256i w23 = _mm256_packs_epi32(qi[2], qi[3]);
        const __m256i b = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(w01, w23),
                                                      _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + c0), b);
        for (int h = 0; h < 2; ++h) {
          const __m256i s8 = _mm256_add_epi32(qi[2 * h], qi[2 * h + 1]);
          __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s8), _mm256_extracti128_si256(s8, 1));
          s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, _MM_SHUFFLE(1, 0, 3, 2)));
          s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, _MM_SHUFFLE(2, 3, 0, 1)));
          isum[h] = _mm_cvtsi128_si32(s4);
        }
      } else
#endif
      {
        float amax = 0.0f;
        for (uint32_t j = 0; j < n; ++j) amax = std::max(amax, std::fabs(xt[c0 + j]));
        scale = amax / 127.0f;
        const float inv = scale != 0.0f ? 1.0f / scale : 0.0f;
        for (uint32_t j = 0; j < kBlock; ++j) {
          q[c0 + j] = j < n ? static_cast<int8_t>(std::nearbyint(xt[c0 + j] * inv)) : 0;
          isum[j / 16] += q[c0 + j];
        }
      }
      d[b] = scale;
      sum[b] = scale * static_cast<float>(isum[0] + isum[1]);
      int_sum[b] = isum[0] + isum[1];
      int_sum[nb + 2 * b] = isum[0];
      int_sum[nb + 2 * b + 1] = isum[1];
    }
  }
}

void MatMulRows(const MatrixView& w, std::span<const float> x, uint32_t n_tokens,
                ConstByteSpan quantized_x, uint32_t row_begin, uint32_t row_end,
                std::span<float> y) {
  CHECK(MatMulSupports(w.dtype));
  CHECK(!w.strips || CanInterleaveStrips(w.dtype, w.rows, w.cols));
  CHECK_LE(row_end, w.rows);
  CHECK_GE(y.size(), uint64_t{n_tokens} * w.rows);
#ifdef FLASHLM_AVX512
  // q4_0 and q8_0 (prefill and decode) go through 16-row strips, q4_K and q6_K likewise.
#ifdef FLASHLM_AVX512_VNNI
  if (w.dtype == DType::kQ4_0) {
    return MatMulRowsBlockStrips<false>(w, n_tokens, quantized_x, row_begin, row_end, y.data());
  }
  if (w.dtype == DType::kQ8_0) {
    return MatMulRowsBlockStrips<true>(w, n_tokens, quantized_x, row_begin, row_end, y.data());
  }
  if (w.dtype == DType::kQ4_K) {
    return MatMulRowsKStrips<false>(w, n_tokens, quantized_x, row_begin, row_end, y.data());
  }
  if (w.dtype == DType::kQ6_K) {
    return MatMulRowsKStrips<true>(w, n_tokens, quantized_x, row_begin, row_end, y.data());
  }
#endif
  if (n_tokens == 1 && w.strips && w.dtype == DType::kF32) {
    return MatMulRowsF32Strips(w, x.data(), row_begin, row_end, y.data());
  }
#endif
#ifdef FLASHLM_STRIPS8
  // q4_0, q8_0, q4_K and q6_K, decode and prefill, interleaved or row-major.
  if (w.dtype == DType::kQ4_0) {
    return MatMulRowsStrips8<false>(w, n_tokens, quantized_x, row_begin, row_end, y.data());
  }
  if (w.dtype == DType::kQ8_0) {
    return MatMulRowsStrips8<true>(w, n_tokens, quantized_x, row_begin, row_end, y.data());
  }
  if (w.dtype == DType::kQ4_K) {
    return MatMulRowsKStrips8<false>(w, n_tokens, quantized_x, row_begin, row_end, y.data());
  }
  if (w.dtype == DType::kQ6_K) {
    return MatMulRowsKStrips8<true>(w, n_tokens, quantized_x, row_begin, row_end, y.data());
  }
#endif
#ifdef FLASHLM_AVX2
  // Batches of f32 / f16 / bf16 rows: panels, column chunks and register tiles.
  if (n_tokens > 1 && w.dtype == DType::kF32) {  // row-major or in strips
    return MatMulRowsTiledFloat<DType::kF32>(w, x, n_tokens, row_begin, row_end, y.data());
  }
  if (n_tokens > 1 && w.dtype == DType::kF16) {
    return MatMulRowsTiledFloat<DType::kF16>(w, x, n_tokens, row_begin, row_end, y.data());
  }
  if (n_tokens > 1 && w.dtype == DType::kBF16) {
    return MatMulRowsTiledFloat<DType::kBF16>(w, x, n_tokens, row_begin, row_end, y.data());
  }
#endif
  const bool quantized = IsBlockType(w.dtype);
  // A batch takes the rows a panel of about kRowPanelBytes at a time (a multiple of 4 rows), and
  // every token group passes over a panel while it is in L2, so that each weight byte comes from
  // DRAM once per call rather than once per kMaxTile tokens. A row's results do not depend on
  // the panel. (This path is what CPUs without AVX-512 VNNI run for q4_K / q6_K batches, and
  // portable builds for every batch; f32 / f16 / bf16 batches took it too until they got AVX2
  // register tiles, MatMulRowsTiledFloat, and q8_0 / q4_0 until MatMulRowsStrips8. Measured on the
  // AMD EPYC with the x86-64-v3 build, 1b prefill pp128, whole rows before -> panels, 4 rounds at 1
  // thread: f32 12.1-13.8 -> 27.2-33.3 tok/s, q8_0 0.97-1.33x, q4_0 0.99-1.17x; 2 rounds at 2
  // threads: f32 26.7-33.6 -> 56.7-64.4. 128 and 512 KiB panels alike. docs/benchmarks.md, "Without
  // AVX-512".)
  const uint32_t panel_rows =
      n_tokens <= kMaxTile
          ? row_end - row_begin
          : static_cast<uint32_t>(std::max<uint64_t>(4, kRowPanelBytes / w.row_bytes() / 4 * 4));
  for (uint32_t p0 = row_begin; p0 < row_end; p0 += panel_rows) {
    const uint32_t p1 = std::min(row_end, p0 + panel_rows);
    for (uint32_t t0 = 0; t0 < n_tokens; t0 += kMaxTile) {
      const uint32_t nt = std::min(kMaxTile, n_tokens - t0);
      const float* xs[kMaxTile] = {};
      const int8_t* xq[kMaxTile] = {};
      const float* xd[kMaxTile] = {};
      const float* xsum[kMaxTile] = {};
      for (uint32_t i = 0; i < nt; ++i) {
        xs[i] = x.data() + uint64_t{t0 + i} * w.cols;
        if (quantized) {
          const QToken token = QTokenAt(quantized_x, w.cols, t0 + i);
          xq[i] = token.q;
          xd[i] = token.d;
          xsum[i] = token.dsum;
        }
      }
      for (uint32_t r = p0; r < p1; ++r) {
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
}

void DotRows(DType dtype, uint32_t cols, std::span<const std::byte* const> rows,
             std::span<const float> x, uint32_t n_tokens, ConstByteSpan quantized_x, float* out,
             ConstByteSpan ahead) {
  CHECK(MatMulSupports(dtype));
  const uint32_t count = static_cast<uint32_t>(rows.size());
#ifdef FLASHLM_AVX512_VNNI
  if ((dtype == DType::kQ8_0 || dtype == DType::kQ4_0 || dtype == DType::kQ4_K ||
       dtype == DType::kQ6_K) &&
      DotRowsStrips(dtype, cols, rows, n_tokens, quantized_x, out, ahead)) {
    return;
  }
#endif
#ifdef FLASHLM_STRIPS8
  if (dtype == DType::kQ4_0 && DotRowsStrips8<false>(cols, rows, n_tokens, quantized_x, out)) {
    return;
  }
  if (dtype == DType::kQ8_0 && DotRowsStrips8<true>(cols, rows, n_tokens, quantized_x, out)) {
    return;
  }
  if (dtype == DType::kQ4_K) return DotRowsKStrips8<false>(cols, rows, n_tokens, quantized_x, out);
  if (dtype == DType::kQ6_K) return DotRowsKStrips8<true>(cols, rows, n_tokens, quantized_x, out);
#endif
  const uint64_t row_bytes = layout::RowBytes(dtype, cols);
  for (uint32_t k = 0; k < count; ++k) {
    const MatrixView row{dtype, 1, cols, ConstByteSpan(rows[k], row_bytes)};
    MatMulRows(row, x, n_tokens, quantized_x, 0, 1,
               std::span<float>(out + uint64_t{k} * n_tokens, n_tokens));
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

void MatMulShared(std::span<const MatrixView* const> w, std::span<const float> x, uint32_t n_tokens,
                  std::span<const std::span<float>> y, ByteSpan scratch, ThreadPool& pool) {
  const uint32_t count = static_cast<uint32_t>(w.size());
  CHECK(count >= 1 && count <= kMaxSharedMatrices && y.size() == count);
  const uint32_t cols = w[0]->cols;
  bool quantize = false;
  // Matrix m's rows are [start[m], start[m] + rows) of one range, each start a multiple of 16
  // (MatMul's grain), so that a chunk begins on a strip of every matrix it touches.
  uint64_t start[kMaxSharedMatrices + 1];
  start[0] = 0;
  for (uint32_t m = 0; m < count; ++m) {
    CHECK(MatMulSupports(w[m]->dtype));
    CHECK_EQ(w[m]->cols, cols);
    CHECK_GE(y[m].size(), uint64_t{n_tokens} * w[m]->rows);
    CHECK_GE(w[m]->bytes.size(), uint64_t{w[m]->rows} * w[m]->row_bytes());
    quantize = quantize || IsBlockType(w[m]->dtype);
    start[m + 1] = AlignUp(start[m] + w[m]->rows, 16);
  }
  CHECK_GE(x.size(), uint64_t{n_tokens} * cols);
  ConstByteSpan qx;
  if (quantize) {
    QuantizeActivations(x, cols, n_tokens, scratch);
    qx = scratch;
  }
  pool.ParallelFor(start[count], 16, [&](uint64_t b, uint64_t e, uint32_t) {
    for (uint32_t m = 0; m < count; ++m) {
      const uint64_t lo = std::max(b, start[m]), hi = std::min(e, start[m] + w[m]->rows);
      if (lo >= hi) continue;
      MatMulRows(*w[m], x, n_tokens, qx, static_cast<uint32_t>(lo - start[m]),
                 static_cast<uint32_t>(hi - start[m]), y[m]);
    }
  });
}

double ReferenceDot(const MatrixView& w, uint32_t r, std::span<const float> x) {
  CHECK(!w.strips);  // row r is not where row() says
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
      case DType::kBF16: {
        uint16_t h;
        std::memcpy(&h, row + 2 * c, 2);
        v = layout::BF16ToF32(h);
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

// e^t for t <= 0 (the softmax's x - max, Silu's -|g|): t = n ln2 + r, |r| <= ln2 / 2 (ln2 in two
// parts, Cody-Waite), e^r by its Taylor polynomial to r^7 (truncation below 6e-9 relative, under a
// tenth of an ulp; within 3e-7 relative of exp in all, tested), times 2^n. Below -87.3 the result
// is a denormal, as expf's is; below -103 (and for -inf and NaN) exactly 0.
namespace {
constexpr float kExpFloor = -103.0f;
constexpr float kLog2e = 1.44269504088896341f;
constexpr float kLn2Hi = 0.693145751953125f;
constexpr float kLn2Lo = 1.428606765330187045e-06f;
constexpr float kExpTaylor[8] = {1.0f / 5040, 1.0f / 720, 1.0f / 120, 1.0f / 24,
                                 1.0f / 6,    0.5f,       1.0f,       1.0f};

// Without AVX-512's scalef, p x 2^n is taken as (p x 2^(n + 100)) x 2^-100: the first product is
// exact (a normal float's exponent moved), the second rounds once (to a denormal below 2^-126),
// as scalef does. ExpNonPositiveScalar and ExpNonPositive8 take the same operations in the same
// order (each IEEE-rounded alike), so every lane of the second is the first's bits.
float ExpNonPositiveScalar(float t) {
  if (!(t >= kExpFloor)) return 0.0f;  // NaN too
  const float n = std::nearbyint(t * kLog2e);
  float r = std::fma(-n, kLn2Hi, t);
  r = std::fma(-n, kLn2Lo, r);
  float p = kExpTaylor[0];
  for (int k = 1; k < 8; ++k) p = std::fma(p, r, kExpTaylor[k]);
  const uint32_t bits = static_cast<uint32_t>(static_cast<int32_t>(n) + 127 + 100) << 23;
  float up;
  std::memcpy(&up, &bits, sizeof(up));
  return p * up * 0x1p-100f;
}

#ifdef FLASHLM_AVX2
inline __m256 ExpNonPositive8(__m256 in) {
  const __m256 kept = _mm256_cmp_ps(in, _mm256_set1_ps(kExpFloor), _CMP_GE_OQ);
  const __m256 x = _mm256_max_ps(in, _mm256_set1_ps(kExpFloor));  // keeps 2^n's bits sane
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(kLog2e)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Hi), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Lo), r);
  __m256 p = _mm256_set1_ps(kExpTaylor[0]);
  for (int k = 1; k < 8; ++k) p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kExpTaylor[k]));
  const __m256 up = _mm256_castsi256_ps(
      _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127 + 100)), 23));
  const __m256 e = _mm256_mul_ps(_mm256_mul_ps(p, up), _mm256_set1_ps(0x1p-100f));
  return _mm256_and_ps(kept, e);
}
#endif
}  // namespace

#if defined(FLASHLM_AVX2) && defined(__AVX512F__)
namespace {

// ExpNonPositive8 on 16 lanes, 2^n applied by scalef (one rounding, as there).
inline __m512 ExpNonPositive(__m512 in) {
  const __mmask16 kept = _mm512_cmp_ps_mask(in, _mm512_set1_ps(kExpFloor), _CMP_GE_OQ);
  const __m512 x = _mm512_max_ps(in, _mm512_set1_ps(kExpFloor));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(kLog2e)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Hi), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Lo), r);
  __m512 p = _mm512_set1_ps(kExpTaylor[0]);
  for (int k = 1; k < 8; ++k) p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kExpTaylor[k]));
  return _mm512_maskz_scalef_ps(kept, p, n);
}

}  // namespace

void Softmax(std::span<float> x) {
  if (x.empty()) return;
  const uint32_t n = static_cast<uint32_t>(x.size());
  float* v = x.data();
  auto mask = [&](uint32_t i) {
    return n - i >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (n - i)) - 1);
  };
  __m512 mx = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  for (uint32_t i = 0; i < n; i += 16) {
    mx = _mm512_mask_max_ps(mx, mask(i), mx, _mm512_maskz_loadu_ps(mask(i), v + i));
  }
  const __m512 top = _mm512_set1_ps(_mm512_reduce_max_ps(mx));
  __m512 sum = _mm512_setzero_ps();
  for (uint32_t i = 0; i < n; i += 16) {
    const __mmask16 m = mask(i);
    const __m512 e = ExpNonPositive(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, v + i), top));
    _mm512_mask_storeu_ps(v + i, m, e);
    sum = _mm512_mask_add_ps(sum, m, sum, e);
  }
  const __m512 inv = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(sum));
  for (uint32_t i = 0; i < n; i += 16) {
    const __mmask16 m = mask(i);
    _mm512_mask_storeu_ps(v + i, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, v + i), inv));
  }
}
#elif defined(FLASHLM_AVX2)
// As the AVX-512 Softmax, 8 lanes at a time: the maximum, e^(x - max) by ExpNonPositive8 summed
// in 8 float lanes (positions past the end read as -inf, which weighs 0), then times 1 / sum.
void Softmax(std::span<float> x) {
  if (x.empty()) return;
  const uint32_t n = static_cast<uint32_t>(x.size());
  float* v = x.data();
  const __m256 minus_inf = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  auto mask = [&](uint32_t i) {  // lanes [0, min(8, n - i)) set
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int32_t>(std::min(8u, n - i))), lane);
  };
  auto load = [&](uint32_t i) {
    if (n - i >= 8) return _mm256_loadu_ps(v + i);
    const __m256i m = mask(i);
    return _mm256_blendv_ps(minus_inf, _mm256_maskload_ps(v + i, m), _mm256_castsi256_ps(m));
  };
  auto store = [&](uint32_t i, __m256 e) {
    if (n - i >= 8) {
      _mm256_storeu_ps(v + i, e);
    } else {
      _mm256_maskstore_ps(v + i, mask(i), e);
    }
  };
  __m256 mx = minus_inf;
  for (uint32_t i = 0; i < n; i += 8) mx = _mm256_max_ps(mx, load(i));
  const __m256 top = _mm256_set1_ps(HorizontalMax(mx));
  __m256 sum = _mm256_setzero_ps();
  for (uint32_t i = 0; i < n; i += 8) {
    const __m256 e = ExpNonPositive8(_mm256_sub_ps(load(i), top));
    store(i, e);
    sum = _mm256_add_ps(sum, e);
  }
  const __m256 inv = _mm256_set1_ps(1.0f / HorizontalSum(sum));
  for (uint32_t i = 0; i < n; i += 8) store(i, _mm256_mul_ps(load(i), inv));
}
#else
void Softmax(std::span<float> x) {
  if (x.empty()) return;
  float mx = x[0];
  for (float v : x) mx = std::max(mx, v);
  double sum = 0.0;  // a float sum drifts ~5e-7 relative over 1000 terms
  for (float& v : x) {
    v = std::exp(v - mx);
    sum += v;
  }
  const float inv = static_cast<float>(1.0 / sum);
  for (float& v : x) v *= inv;
}
#endif

float Silu(float g) {
  const float e = ExpNonPositiveScalar(-std::fabs(g));  // 0 for NaN
  const float d = 1.0f + e;
  const float s = (g < 0.0f ? e : 1.0f) / d;
  return g * s;
}

#ifdef FLASHLM_AVX2
namespace {
// Silu on 8 lanes: the same operations, in the same order, as Silu, so every lane is Silu's bits.
inline __m256 Silu8(__m256 g) {
  const __m256 one = _mm256_set1_ps(1.0f);
  const __m256 e = ExpNonPositive8(_mm256_or_ps(g, _mm256_set1_ps(-0.0f)));  // -|g|
  const __m256 d = _mm256_add_ps(one, e);
  const __m256 num = _mm256_blendv_ps(one, e, _mm256_cmp_ps(g, _mm256_setzero_ps(), _CMP_LT_OQ));
  return _mm256_mul_ps(g, _mm256_div_ps(num, d));
}
}  // namespace
#endif

void SwiGlu(std::span<float> gate, std::span<const float> up, bool relu) {
  CHECK_LE(gate.size(), up.size());
  const size_t size = gate.size();
  float* g = gate.data();
  const float* u = up.data();
  size_t i = 0;
#ifdef FLASHLM_AVX2
  if (relu) {
    // _mm256_max_ps(0, g) returns g when g is NaN or -0, as std::max(g, 0.0f) does.
    for (; i + 8 <= size; i += 8) {
      const __m256 a = _mm256_max_ps(_mm256_setzero_ps(), _mm256_loadu_ps(g + i));
      _mm256_storeu_ps(g + i, _mm256_mul_ps(a, _mm256_loadu_ps(u + i)));
    }
  } else {
    for (; i + 8 <= size; i += 8) {
      _mm256_storeu_ps(g + i, _mm256_mul_ps(Silu8(_mm256_loadu_ps(g + i)), _mm256_loadu_ps(u + i)));
    }
  }
#endif
  for (; i < size; ++i) g[i] = (relu ? std::max(g[i], 0.0f) : Silu(g[i])) * u[i];
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
  for (; i < n; ++i) y[i] = std::fma(a, x[i], y[i]);
}

// ---- attention over KV rows: scores q . k_i and the weighted sum of v_i ---------------------

namespace {
// Values [c, c + 8 x lanes) of a KV row as f32: f32 rows as they are, f16 rows converted
// (exactly: every f16 is an f32).
inline float KvValue(const std::byte* row, bool half, uint32_t c) {
  return half ? HalfToFloat(row + 2 * uint64_t{c}) : reinterpret_cast<const float*>(row)[c];
}

#ifdef FLASHLM_AVX2
inline __m256 KvLoad8(const std::byte* row, bool half, uint32_t c) {
  if (half) {
    return _mm256_cvtph_ps(
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 2 * uint64_t{c})));
  }
  return _mm256_loadu_ps(reinterpret_cast<const float*>(row) + c);
}

#endif

#ifdef FLASHLM_AVX512
inline __m512 KvLoad16(const std::byte* row, bool half, uint32_t c) {
  if (half) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + 2 * uint64_t{c})));
  }
  return _mm512_loadu_ps(reinterpret_cast<const float*>(row) + c);
}

// Lane r of the result = ReduceLikeRowF32(acc[r]) for r < 16, bit for bit: ReduceLikeRowF32 (as
// HorizontalSum) folds the upper half of the lanes onto the lower half four times (16 -> 8 ->
// 4 -> 2 -> 1); here each fold adds the same two lanes of every row, with the rows' halves
// gathered by shuffles into full vectors (float addition is commutative, so which operand comes
// first does not matter), and a last permute puts row r in lane r.
inline __m512 ReduceRows16(const __m512 acc[16]) {
  __m512 s1[8], s2[4], s3[2];
  for (int k = 0; k < 8; ++k) {  // lanes i + i+8: rows 2k, 2k+1 in the 256-bit halves
    const __m512 x = acc[2 * k], y = acc[2 * k + 1];
    s1[k] = _mm512_add_ps(_mm512_shuffle_f32x4(x, y, _MM_SHUFFLE(1, 0, 1, 0)),
                          _mm512_shuffle_f32x4(x, y, _MM_SHUFFLE(3, 2, 3, 2)));
  }
  for (int k = 0; k < 4; ++k) {  // lanes j + j+4: rows 4k..4k+3 in the 128-bit lanes
    const __m512 p = s1[2 * k], q = s1[2 * k + 1];
    s2[k] = _mm512_add_ps(_mm512_shuffle_f32x4(p, q, _MM_SHUFFLE(2, 0, 2, 0)),
                          _mm512_shuffle_f32x4(p, q, _MM_SHUFFLE(3, 1, 3, 1)));
  }
  for (int k = 0; k < 2; ++k) {  // 0+2, 1+3: 128-bit lane j holds rows 8k+j, 8k+4+j
    const __m512 r = s2[2 * k], s = s2[2 * k + 1];
    s3[k] = _mm512_add_ps(_mm512_shuffle_ps(r, s, _MM_SHUFFLE(1, 0, 1, 0)),
                          _mm512_shuffle_ps(r, s, _MM_SHUFFLE(3, 2, 3, 2)));
  }
  // 0+1: lane 4j+m holds row 4m+j.
  const __m512 res = _mm512_add_ps(_mm512_shuffle_ps(s3[0], s3[1], _MM_SHUFFLE(2, 0, 2, 0)),
                                   _mm512_shuffle_ps(s3[0], s3[1], _MM_SHUFFLE(3, 1, 3, 1)));
  const __m512i to_rows =
      _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  return _mm512_permutexvar_ps(to_rows, res);
}

// AttentionDotRows for up to 16 rows (`count`), n >= 16: one accumulator per row, the rows' 16-value
// chunks interleaved so that 16 FMA chains run at once.
void DotRows16(const float* q, const std::byte* rows, uint64_t stride, uint32_t count, bool half,
               uint32_t n, float scale, float* out) {
  const std::byte* row[16];
  for (uint32_t r = 0; r < 16; ++r) {  // rows past count repeat the last one (results dropped)
    row[r] = rows + uint64_t{std::min(r, count - 1)} * stride;
  }
  __m512 acc[16];
  for (int r = 0; r < 16; ++r) acc[r] = _mm512_setzero_ps();
  const uint32_t full = n / 16 * 16;
  for (uint32_t c = 0; c < full; c += 16) {
    const __m512 qv = _mm512_loadu_ps(q + c);
    for (int r = 0; r < 16; ++r) acc[r] = _mm512_fmadd_ps(KvLoad16(row[r], half, c), qv, acc[r]);
  }
  const __m512 sums = ReduceRows16(acc);
  const __mmask16 valid = static_cast<__mmask16>((1u << count) - 1);
  if (full == n) {
    _mm512_mask_storeu_ps(out, valid, _mm512_mul_ps(sums, _mm512_set1_ps(scale)));
    return;
  }
  alignas(64) float s[16];
  _mm512_store_ps(s, sums);
  for (uint32_t r = 0; r < count; ++r) {
    for (uint32_t k = full; k < n; ++k) s[r] += UnfusedProduct(q[k], KvValue(row[r], half, k));
    out[r] = s[r] * scale;
  }
}

// AxpyRowsChunks' vectors on AVX-512: 16 lanes.
struct Lanes16 {
  using V = __m512;
  static constexpr uint32_t kLanes = 16;
  static V Load(const float* p) { return _mm512_loadu_ps(p); }
  static V Set1(float a) { return _mm512_set1_ps(a); }
  static V Row(const std::byte* row, bool half, uint32_t c) { return KvLoad16(row, half, c); }
  static V Fma(V a, V x, V acc) { return _mm512_fmadd_ps(a, x, acc); }
  static void Store(float* p, V v) { _mm512_storeu_ps(p, v); }
};
#endif
#ifdef FLASHLM_AVX2
// AxpyRowsChunks' vectors on AVX2: 8 lanes.
struct Lanes8 {
  using V = __m256;
  static constexpr uint32_t kLanes = 8;
  static V Load(const float* p) { return _mm256_loadu_ps(p); }
  static V Set1(float a) { return _mm256_set1_ps(a); }
  static V Row(const std::byte* row, bool half, uint32_t c) { return KvLoad8(row, half, c); }
  static V Fma(V a, V x, V acc) { return _mm256_fmadd_ps(a, x, acc); }
  static void Store(float* p, V v) { _mm256_storeu_ps(p, v); }
};

// AttentionAxpyRows over values [c, c + L::kLanes x NC) of every row: y's values stay in NC
// registers across the rows (row by row, each y value would wait on its own store and reload).
template <class L, int NC>
void AxpyRowsChunks(const float* a, const std::byte* rows, uint64_t stride, uint32_t count,
                    bool half, uint32_t c, float* y) {
  typename L::V acc[NC];
  for (int j = 0; j < NC; ++j) acc[j] = L::Load(y + c + L::kLanes * j);
  for (uint32_t i = 0; i < count; ++i) {
    const std::byte* row = rows + uint64_t{i} * stride;
    const typename L::V av = L::Set1(a[i]);
    for (int j = 0; j < NC; ++j) acc[j] = L::Fma(av, L::Row(row, half, c + L::kLanes * j), acc[j]);
  }
  for (int j = 0; j < NC; ++j) L::Store(y + c + L::kLanes * j, acc[j]);
}

// AttentionAxpyRows over values [0, c) in registers, 8 vectors at a time and then the rest's
// whole vectors in one pass; c, the largest multiple of L::kLanes <= n, is returned.
template <class L>
uint32_t AxpyRowsInRegisters(const float* a, const std::byte* rows, uint64_t stride, uint32_t count,
                             bool half, float* y, uint32_t n) {
  constexpr uint32_t kWide = 8 * L::kLanes;
  uint32_t c = 0;
  for (; c + kWide <= n; c += kWide) AxpyRowsChunks<L, 8>(a, rows, stride, count, half, c, y);
  const uint32_t rest = (n - c) / L::kLanes;  // 0 .. 7 whole vectors: AxpyRowsChunks<L, rest>
  [&]<int... K>(std::integer_sequence<int, K...>) {
    ((rest == K + 1 ? AxpyRowsChunks<L, K + 1>(a, rows, stride, count, half, c, y) : void()), ...);
  }
  (std::make_integer_sequence<int, 7>());
  return c + (n - c) / L::kLanes * L::kLanes;
}
#endif
}  // namespace

void AttentionDotRows(const float* q, const std::byte* rows, uint64_t stride_bytes, uint32_t count,
               bool half, uint32_t n, float scale, float* out) {
#ifdef FLASHLM_AVX512
  if (n >= 16) {
    for (uint32_t i = 0; i < count; i += 16) {
      DotRows16(q, rows + uint64_t{i} * stride_bytes, stride_bytes, std::min(16u, count - i), half,
                n, scale, out + i);
    }
    return;
  }
#endif
  for (uint32_t i = 0; i < count; ++i) {
    const std::byte* row = rows + uint64_t{i} * stride_bytes;
    if (!half) {
      out[i] = DotF32(q, reinterpret_cast<const float*>(row), n) * scale;
      continue;
    }
    // As DotF32 on the row converted to f32: 16 values at a time into two 8-lane accumulators,
    // HorizontalSum, then the rest one by one.
    uint32_t c = 0;
    float sum = 0;
#ifdef FLASHLM_AVX2
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    for (; c + 16 <= n; c += 16) {
      const __m256 k0 =
          _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 2 * c)));
      const __m256 k1 =
          _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 2 * c + 16)));
      acc0 = _mm256_fmadd_ps(k0, _mm256_loadu_ps(q + c), acc0);
      acc1 = _mm256_fmadd_ps(k1, _mm256_loadu_ps(q + c + 8), acc1);
    }
    sum = HorizontalSum(_mm256_add_ps(acc0, acc1));
#endif
    for (; c < n; ++c) sum += UnfusedProduct(q[c], KvValue(row, true, c));
    out[i] = sum * scale;
  }
}

void AttentionAxpyRows(const float* a, const std::byte* rows, uint64_t stride_bytes, uint32_t count,
                bool half, float* y, uint32_t n) {
  uint32_t c = 0;
#ifdef FLASHLM_AVX512
  c = AxpyRowsInRegisters<Lanes16>(a, rows, stride_bytes, count, half, y, n);
  if (c + 8 <= n) {  // 8 more values: one 8-lane FMA per row, as AxpyF32
    AxpyRowsChunks<Lanes8, 1>(a, rows, stride_bytes, count, half, c, y);
    c += 8;
  }
#elif defined(FLASHLM_AVX2)
  c = AxpyRowsInRegisters<Lanes8>(a, rows, stride_bytes, count, half, y, n);
#endif
  // The rest: row by row, as AxpyF32 (8 lanes, then one by one; fewer than 8 values with AVX2).
  for (uint32_t i = 0; i < count && c < n; ++i) {
    const std::byte* row = rows + uint64_t{i} * stride_bytes;
    uint32_t k = c;
#ifdef FLASHLM_AVX2
    const __m256 av = _mm256_set1_ps(a[i]);
    for (; k + 8 <= n; k += 8) {
      const __m256 x =
          half ? _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 2 * k)))
               : _mm256_loadu_ps(reinterpret_cast<const float*>(row) + k);
      _mm256_storeu_ps(y + k, _mm256_fmadd_ps(av, x, _mm256_loadu_ps(y + k)));
    }
#endif
    for (; k < n; ++k) y[k] = std::fma(a[i], KvValue(row, half, k), y[k]);
  }
}

namespace {
#ifdef FLASHLM_AVX2
// The 32 values of one f16, bf16, q8_0 or q4_0 block at w, dequantised as layout::DequantizeRow
// does.
inline void LoadBlock32(DType dtype, const std::byte* w, __m256 v[4]) {
  if (dtype == DType::kF16) {
    for (int j = 0; j < 4; ++j) v[j] = LoadRow8<DType::kF16>(w, 8 * j);
    return;
  }
  if (dtype == DType::kBF16) {
    for (int j = 0; j < 4; ++j) v[j] = LoadRow8<DType::kBF16>(w, 8 * j);
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

#ifdef FLASHLM_AVX512
// q4_K super-block `blk` dequantised as layout::DequantizeRow does (x = (d * sc) * q - dmin * m,
// the product and the difference each rounded), 16 values a vector: sink(i, v) gets values
// 16i .. 16i + 15 in order. Each sub-block's 16 possible values are computed once (the same
// operations on q = 0 .. 15) and the nibbles pick from them (vpermps reads an index's low 4
// bits, so a byte's low nibble needs no mask).
template <class Sink>
__attribute__((always_inline)) inline void DequantQ4KBlock16(const std::byte* blk, Sink&& sink) {
  const float d = HalfToFloat(blk), dmin = HalfToFloat(blk + 2);
  const auto* packed = reinterpret_cast<const uint8_t*>(blk + 4);
  const std::byte* q = blk + 16;
  const __m512 iota = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
#pragma GCC unroll 4
  for (int p = 0; p < 4; ++p, q += 32) {  // sub-blocks 2p (low nibbles) and 2p + 1 (high)
    uint8_t sc, m;
    layout::ScaleMinK4(2 * p, packed, sc, m);
    const __m512 lo =
        _mm512_sub_ps(_mm512_mul_ps(_mm512_set1_ps(d * sc), iota), _mm512_set1_ps(dmin * m));
    layout::ScaleMinK4(2 * p + 1, packed, sc, m);
    const __m512 hi =
        _mm512_sub_ps(_mm512_mul_ps(_mm512_set1_ps(d * sc), iota), _mm512_set1_ps(dmin * m));
    const __m512i b0 = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q)));
    const __m512i b1 =
        _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q + 16)));
    sink(4 * p, _mm512_permutexvar_ps(b0, lo));
    sink(4 * p + 1, _mm512_permutexvar_ps(b1, lo));
    sink(4 * p + 2, _mm512_permutexvar_ps(_mm512_srli_epi32(b0, 4), hi));
    sink(4 * p + 3, _mm512_permutexvar_ps(_mm512_srli_epi32(b1, 4), hi));
  }
}

// q6_K super-block `blk` dequantised as layout::DequantizeRow does (x = (d * sc) * (q - 32), both
// products rounded), 16 values a vector: sink(i, v) gets values 16i .. 16i + 15. Each vector's 16
// values share one scale; q is a nibble of ql with two bits of qh above it. The 32 values
// 32j .. 32j + 31 of each half share their ql and qh bytes, so q - 32 is made for all 32 at
// once as bytes (a nibble from ql, bits 4-5 from qh, one bit select; 16-bit shifts are safe as
// the masks drop what crosses into a neighbouring byte), then widened 16 at a time.
template <class Sink>
__attribute__((always_inline)) inline void DequantQ6KBlock16(const std::byte* blk, Sink&& sink) {
  alignas(64) float scale[16];  // d * sc for each 16 values, as floats multiply them
  _mm512_store_ps(scale, _mm512_mul_ps(_mm512_set1_ps(HalfToFloat(blk + 208)),
                                       _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(
                                           reinterpret_cast<const __m128i*>(blk + 192))))));
  const __m256i bits45 = _mm256_set1_epi8(0x30), k32 = _mm256_set1_epi8(32);
#pragma GCC unroll 2
  for (int n = 0; n < 2; ++n) {  // halves of 128 values: ql 64 bytes, qh 32, scales 8 each
    const std::byte* ql = blk + 64 * n;
    const __m256i qh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 128 + 32 * n));
    const __m256i ql0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ql));
    const __m256i ql1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ql + 32));
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) {  // values n * 128 + 32j + l, l = 0 .. 31
      const __m256i lb = j == 0 ? ql0 : j == 1 ? ql1 : _mm256_srli_epi16(j == 2 ? ql0 : ql1, 4);
      const __m256i hb = j == 0   ? _mm256_slli_epi16(qh, 4)
                         : j == 1 ? _mm256_slli_epi16(qh, 2)
                         : j == 2 ? qh
                                  : _mm256_srli_epi16(qh, 2);
      // bits 0-3 from lb, bits 4-5 from hb (0xCA: select lb where the mask 0x0F is set)
      const __m256i q = _mm256_sub_epi8(
          _mm256_ternarylogic_epi32(_mm256_set1_epi8(0x0F), lb, _mm256_and_si256(hb, bits45), 0xCA),
          k32);
#pragma GCC unroll 2
      for (int h = 0; h < 2; ++h) {
        const __m128i q16 = h == 0 ? _mm256_castsi256_si128(q) : _mm256_extracti128_si256(q, 1);
        sink(8 * n + 2 * j + h, _mm512_mul_ps(_mm512_set1_ps(scale[8 * n + 2 * j + h]),
                                              _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q16))));
      }
    }
  }
}

// The batch down kernels' shared steps. NonzeroTokens (AxpyKChunkTokens, AxpyQ8BlockTokens):
// bit t set where ak[t] != 0 for t < NT (one masked load and compare; NEQ_UQ is
// C++'s !=, NaN included). AddTokens (the q8_0 / q4_0 ones; AxpyKTile does the same a tile at a
// time): acc[t] += ak[t] * v (one fused multiply-add) for the tokens whose bit is set; a token
// with a zero coefficient keeps its acc, as AxpyRow skips it. A row with every bit set (a dense
// batch) takes its FMAs without a mask per token. (Measured,
// bench/engine/ffn_bench.cc, 1b q8_0, 16 tokens, 1 thread: a branch per token, 258 ms a pass;
// one compare a row, 220; no mask for full rows, 181. The #pragma unrolls keep GCC 12 from
// storing the accumulators to the stack every row.)
template <int NT>
__attribute__((always_inline)) inline __mmask16 NonzeroTokens(const float* ak) {
  constexpr __mmask16 kTokens = static_cast<__mmask16>((1u << NT) - 1);
  return _mm512_mask_cmp_ps_mask(kTokens, _mm512_maskz_loadu_ps(kTokens, ak), _mm512_setzero_ps(),
                                 _CMP_NEQ_UQ);
}
template <int NT>
__attribute__((always_inline)) inline void AddTokens(__m512* acc, const float* ak, __m512 v,
                                                     __mmask16 nonzero) {
  constexpr __mmask16 kTokens = static_cast<__mmask16>((1u << NT) - 1);
  if (nonzero == kTokens) {
#pragma GCC unroll 16
    for (int t = 0; t < NT; ++t) acc[t] = _mm512_fmadd_ps(_mm512_set1_ps(ak[t]), v, acc[t]);
    return;
  }
#pragma GCC unroll 16
  for (int t = 0; t < NT; ++t) {
    const __mmask16 take = static_cast<__mmask16>(-(nonzero >> t & 1));
    acc[t] = _mm512_mask3_fmadd_ps(_mm512_set1_ps(ak[t]), v, acc[t], take);
  }
}

// Several tokens, q4_K (or, kQ6, q6_K): for each whole super-block of the slice, rows go
// kKChunkRows at a time: each row's super-block is dequantised once into an L1 buffer (rows whose
// coefficients are all zero are left out), then y is taken a tile at a time, kKTileTokens tokens
// x 64 values in registers, while the chunk's rows go by (AxpyKChunkTokens). Rows in order, zero
// coefficients skipped: each y value's fused terms as AxpyRow's, bit-identical to it. Measured
// (bench/engine/ffn_bench.cc, 1b q4_K bundles, 16 tokens, 1 thread): y in L1 and a load, FMA and
// store of it per token and row, 8 tokens a tile, 226 ms a pass; 16 tokens x 16 values a tile,
// 181 (2 threads: 122 and 109); then kKTileTokens x 64 values.
constexpr uint32_t kKChunkRows = 16;
// Tokens a tile: 6 x 4 accumulators, each row's 4 vectors and each token's coefficient loaded once
// for 24 FMAs (the 16 x 1 tiles before took 17 loads for 16). Measured between real builds
// (flashlm_ffn_bench, BM_BundleFfnRegrouped, 1b q4_K, 1 thread, 4 ABBA rounds, ms a pass, medians
// of 3): 4 tokens 47.0-48.6 -> 40.5-41.5, 16 tokens 143-147 -> 131-134, every round; 4 and 5 tokens
// a tile no faster than 6. Prefill from the 1b Q4_K_M store, every bundle pinned (`generate
// --bench-prompt-tokens 128`, 4 ABBA rounds): 1 thread 108.7-112.4 -> 120.7-127.0 tok/s, 2 threads
// 192.8-208.3 -> 213.8-220.1, every round (docs/benchmarks.md, "q4_K batch down tiles").
constexpr int kKTileTokens = 6;

// One tile of AxpyKChunkTokens: tokens [t0, t0 + TT) x the 64 values at j of the chunk's `count`
// dequantised super-blocks v[i], row i taking coefficient a[src[i] * a_stride + t]; nonzero[i]
// has bit t set where that coefficient is not zero. 4 x TT accumulators: each row's 4 vectors are
// loaded once and each coefficient broadcast once for the tile.
template <int TT>
__attribute__((always_inline)) inline void AxpyKTile(const float (*v)[layout::kKBlockValues],
                                                     const uint32_t* src, const __mmask16* nonzero,
                                                     uint32_t count, int t0, uint32_t j,
                                                     const float* a, uint64_t a_stride, float* y,
                                                     uint64_t y_stride) {
  constexpr __mmask16 kTile = static_cast<__mmask16>((1u << TT) - 1);
  __m512 acc[TT][4];
#pragma GCC unroll 16
  for (int t = 0; t < TT; ++t) {
#pragma GCC unroll 4
    for (int k = 0; k < 4; ++k) acc[t][k] = _mm512_loadu_ps(y + (t0 + t) * y_stride + j + 16 * k);
  }
  for (uint32_t i = 0; i < count; ++i) {
    const __mmask16 nz = static_cast<__mmask16>((nonzero[i] >> t0) & kTile);
    if (nz == 0) continue;
    const float* ak = a + src[i] * a_stride + t0;
    __m512 w[4];
#pragma GCC unroll 4
    for (int k = 0; k < 4; ++k) w[k] = _mm512_load_ps(v[i] + j + 16 * k);
    if (nz == kTile) {
#pragma GCC unroll 16
      for (int t = 0; t < TT; ++t) {
        const __m512 b = _mm512_set1_ps(ak[t]);
#pragma GCC unroll 4
        for (int k = 0; k < 4; ++k) acc[t][k] = _mm512_fmadd_ps(b, w[k], acc[t][k]);
      }
      continue;
    }
#pragma GCC unroll 16
    for (int t = 0; t < TT; ++t) {
      const __mmask16 take = static_cast<__mmask16>(-(nz >> t & 1));
      const __m512 b = _mm512_set1_ps(ak[t]);
#pragma GCC unroll 4
      for (int k = 0; k < 4; ++k) acc[t][k] = _mm512_mask3_fmadd_ps(b, w[k], acc[t][k], take);
    }
  }
#pragma GCC unroll 16
  for (int t = 0; t < TT; ++t) {
#pragma GCC unroll 4
    for (int k = 0; k < 4; ++k) _mm512_storeu_ps(y + (t0 + t) * y_stride + j + 16 * k, acc[t][k]);
  }
}

// The chunk's `count` dequantised super-blocks v[i] (256 floats each) into y's NT tokens (y_stride
// apart) x 256 values, row i taking coefficient a[src[i] * a_stride + t] for token t.
template <int NT>
void AxpyKChunkTokens(const float (*v)[layout::kKBlockValues], const uint32_t* src, uint32_t count,
                      const float* a, uint64_t a_stride, float* y, uint64_t y_stride) {
  constexpr int kFull = NT / kKTileTokens, kRest = NT % kKTileTokens;
  __mmask16 nonzero[kKChunkRows];
  for (uint32_t i = 0; i < count; ++i) nonzero[i] = NonzeroTokens<NT>(a + src[i] * a_stride);
  for (uint32_t j = 0; j < layout::kKBlockValues; j += 64) {
    for (int f = 0; f < kFull; ++f) {
      AxpyKTile<kKTileTokens>(v, src, nonzero, count, f * kKTileTokens, j, a, a_stride, y,
                              y_stride);
    }
    if constexpr (kRest > 0) {
      AxpyKTile<kRest>(v, src, nonzero, count, kFull * kKTileTokens, j, a, a_stride, y, y_stride);
    }
  }
}

template <bool kQ6>
void AxpyKTokens(std::span<const std::byte* const> rows, uint64_t offset, uint32_t blocks,
                 uint64_t stride, const float* a, uint64_t a_stride, uint32_t n_tokens, float* y,
                 uint64_t y_stride) {
  using ChunkTokens = void (*)(const float(*)[layout::kKBlockValues], const uint32_t*, uint32_t,
                               const float*, uint64_t, float*, uint64_t);
  static constexpr ChunkTokens kByTokens[] = {
      AxpyKChunkTokens<1>,  AxpyKChunkTokens<2>,  AxpyKChunkTokens<3>,  AxpyKChunkTokens<4>,
      AxpyKChunkTokens<5>,  AxpyKChunkTokens<6>,  AxpyKChunkTokens<7>,  AxpyKChunkTokens<8>,
      AxpyKChunkTokens<9>,  AxpyKChunkTokens<10>, AxpyKChunkTokens<11>, AxpyKChunkTokens<12>,
      AxpyKChunkTokens<13>, AxpyKChunkTokens<14>, AxpyKChunkTokens<15>, AxpyKChunkTokens<16>};
  constexpr uint32_t kBytes = kQ6 ? kQ6KBytes : kQ4KBytes;
  constexpr uint32_t kAhead = 2;  // rows' super-blocks requested ahead
  alignas(64) float v[kKChunkRows][layout::kKBlockValues];
  uint32_t src[kKChunkRows];
  for (uint32_t b = 0; b < blocks; ++b) {
    const uint64_t at = offset + uint64_t{b} * stride;
    const uint64_t yb = uint64_t{b} * layout::kKBlockValues;
    for (size_t c0 = 0; c0 < rows.size(); c0 += kKChunkRows) {
      const size_t c1 = std::min<size_t>(c0 + kKChunkRows, rows.size());
      uint32_t count = 0;
      for (size_t k = c0; k < c1; ++k) {
        if (k + kAhead < rows.size()) PrefetchBytes<kBytes>(rows[k + kAhead] + at);
        const float* ak = a + k * a_stride;
        bool any = false;
        for (uint32_t t = 0; t < n_tokens && !any; ++t) any = ak[t] != 0.0f;
        if (!any) continue;
        float* vi = v[count];
        const auto put = [&](int i, __m512 x) { _mm512_store_ps(vi + 16 * i, x); };
        if constexpr (kQ6) {
          DequantQ6KBlock16(rows[k] + at, put);
        } else {
          DequantQ4KBlock16(rows[k] + at, put);
        }
        src[count++] = static_cast<uint32_t>(k - c0);
      }
      if (count == 0) continue;
      for (uint32_t t0 = 0; t0 < n_tokens; t0 += 16) {
        const uint32_t nt = std::min(16u, n_tokens - t0);
        kByTokens[nt - 1](v, src, count, a + c0 * a_stride + t0, a_stride, y + t0 * y_stride + yb,
                          y_stride);
      }
    }
  }
}
#endif

// AxpyRows over one full 32-value block at byte `at` of every row, for NT tokens from a[.][0]:
// y (NT x 32) stays in registers while the rows go by, and each row's block at byte `next` (its
// next block; 0: none) is asked for, a whole pass over the rows ahead of use, as the AVX-512
// tiles do (PrefetchNextBlock).
template <int NT>
void AxpyBlockRows(DType dtype, std::span<const std::byte* const> rows, uint64_t at, uint64_t next,
                   const float* a, uint64_t a_stride, float* y, uint64_t y_stride) {
  const uint64_t block_bytes = layout::RowBytes(dtype, kBlock);
  __m256 acc[NT][4];
  for (int t = 0; t < NT; ++t) {
    for (int j = 0; j < 4; ++j) acc[t][j] = _mm256_loadu_ps(y + t * y_stride + 8 * j);
  }
  const size_t count = rows.size();
  for (size_t k = 0; k < count; ++k) {
    PrefetchNextBlock(rows[k], next, block_bytes);
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

#ifdef FLASHLM_AVX512
// DequantHalf16: values 0-15 (half 0) or 16-31 (half 1) of the full q8_0 (or, kQ4, q4_0) block at
// w as f32; DequantBlock32: both, v[0] and v[1]. Each value is
// d * q exactly (d the f16 scale; q4_0: q = nibble - 8, low nibbles first, as UnpackQ4 orders
// them): the values AxpyRow adds. q4_0 looks its values up in d * (-8 .. 7), 16 lanes made with
// one multiply a block (vpermps reads only an index's low 4 bits, so a byte's low nibble needs
// no mask): the same products, exact either way (an f16 times a 4-bit integer fits an f32), in
// fewer instructions than converting and scaling each value.
template <bool kQ4>
__attribute__((always_inline)) inline __m512 DequantHalf16(const std::byte* w, int half) {
  const __m512 d = _mm512_set1_ps(HalfToFloat(w));
  if constexpr (kQ4) {
    const __m512 values = _mm512_mul_ps(
        d, _mm512_setr_ps(-8, -7, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7));
    __m512i bytes = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + 2)));
    if (half != 0) bytes = _mm512_srli_epi32(bytes, 4);  // high nibbles
    return _mm512_permutexvar_ps(bytes, values);
  } else {
    const __m128i q = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w + 2 + 16 * half));
    return _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q)));
  }
}
template <bool kQ4>
__attribute__((always_inline)) inline void DequantBlock32(const std::byte* w, __m512* v) {
  v[0] = DequantHalf16<kQ4>(w, 0);  // inlined: the scale, the lookup table and q4_0's bytes
  v[1] = DequantHalf16<kQ4>(w, 1);  // are computed once for both halves
}

// One token of q8_0 / q4_0 / q4_K / q6_K goes through AxpyColumnsOneToken: the rows are swept
// kSweepRows at a time, each read front to back with y in L1, while the next sweep's rows are
// requested block by block (one sweep ahead: the first sweep of a call asks for its own rows
// about 512 bytes ahead). Bit-identical to AxpyRow. Measured (docs/benchmarks.md, "Down columns
// one sweep ahead"): 1b q8_0, 22 x 5632 columns of 2048 from DRAM, one call a layer, 1 thread:
// 8.4 ms against 17 for the 128 values of y in registers across the rows that more than 16 rows
// took before, and 12 against 16 in calls of 16 rows, against the same sweep asking for its own
// rows 16 blocks ahead. q4_K / q6_K took the same path later ("Down columns a part a thread; q4_K /
// q6_K down columns swept"), where they had kept a super-block of y in registers across every row.
constexpr int kSweepRows = 4;  // rows whose terms each y vector takes per load/store

// The block formats a sweep reads: values and bytes a block, and how far ahead (in blocks) the
// first sweep of a call asks for its own rows.

enum class SweepFormat { kQ8, kQ4, kQ4K, kQ6K };
template <SweepFormat F>
struct SweepBlock {
  static constexpr bool kSuper = F == SweepFormat::kQ4K || F == SweepFormat::kQ6K;
  static constexpr uint32_t kValues = kSuper ? layout::kKBlockValues : kBlock;
  static constexpr uint64_t kBytes = F == SweepFormat::kQ8    ? 2 + kBlock
                                     : F == SweepFormat::kQ4  ? 2 + kBlock / 2
                                     : F == SweepFormat::kQ4K ? kQ4KBytes
                                                              : kQ6KBytes;
  static constexpr uint32_t kAhead = kSuper ? 3 : 16;
};

// AxpyRows for one token over `blocks` full blocks of format F at byte `at` of R rows w[0..R-1]
// (their non-zero coefficients av[0..R-1], in row order): each block of y is loaded once, takes
// the R rows' fused terms in row order, and is stored (y stays in L1 across the sweep). It asks
// for the next sweep's rows next[0..next_count-1] a block ahead of reading them (q8_0 / q4_0:
// every other block, two at a time) and, when `first` (nothing asked for these rows before),
// for its own rows SweepBlock<F>::kAhead blocks ahead. Same terms, same order as AxpyRow:
// bit-identical.
template <int R, SweepFormat F>
void AxpyColumnsSweep(const std::byte* const* w, const float* av, uint32_t blocks, uint64_t stride,
                      float* y, bool first, const std::byte* const* next, int next_count) {
  using Block = SweepBlock<F>;
  constexpr uint64_t kBlockBytes = Block::kBytes;
  // Interleaved rows (blocks `stride` apart) where this sweep and the next each take one group's
  // rows (none skipped): they read one stream, which the hardware's prefetchers follow; asking
  // for it as well made it slower (docs/benchmarks.md, "The f32 down pass reads four streams").
  const auto one_group = [](const std::byte* const* rows, int count) {
    for (int r = 1; r < count; ++r) {
      if (rows[r] != rows[0] + r * kBlockBytes) return false;
    }
    return true;
  };
  if (stride != kBlockBytes && one_group(w, R) && one_group(next, next_count)) {
    next_count = 0;
    first = false;
  }
  __m512 a[R];
  for (int r = 0; r < R; ++r) a[r] = _mm512_set1_ps(av[r]);
  for (uint32_t b = 0; b < blocks; ++b) {
    const uint64_t at = uint64_t{b} * stride;
    if constexpr (Block::kSuper) {
      for (int r = 0; r < next_count; ++r) PrefetchBytes<kBlockBytes>(next[r] + at);
      const uint32_t ab = b + Block::kAhead;
      if (first && ab < blocks) {
        for (int r = 0; r < R; ++r) PrefetchBytes<kBlockBytes>(w[r] + uint64_t{ab} * stride);
      }
    } else if ((b & 1) == 0) {
      for (int r = 0; r < next_count; ++r) {  // the next sweep's blocks b and b + 1
        _mm_prefetch(reinterpret_cast<const char*>(next[r] + at), _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(next[r] + at + 2 * kBlockBytes - 1),
                     _MM_HINT_T0);
      }
      const uint32_t ab = b + Block::kAhead;
      if (first && ab < blocks) {
        for (int r = 0; r < R; ++r) {
          _mm_prefetch(reinterpret_cast<const char*>(w[r] + uint64_t{ab} * stride), _MM_HINT_T0);
        }
      }
    }
    float* yb = y + uint64_t{b} * Block::kValues;
    constexpr int kVectors = Block::kValues / 16;
    __m512 acc[kVectors];
#pragma GCC unroll 16
    for (int i = 0; i < kVectors; ++i) acc[i] = _mm512_loadu_ps(yb + 16 * i);
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      if constexpr (Block::kSuper) {
        const auto add = [&](int i, __m512 v) { acc[i] = _mm512_fmadd_ps(a[r], v, acc[i]); };
        if constexpr (F == SweepFormat::kQ6K) {
          DequantQ6KBlock16(w[r] + at, add);
        } else {
          DequantQ4KBlock16(w[r] + at, add);
        }
      } else {
        __m512 v[2];
        DequantBlock32<F == SweepFormat::kQ4>(w[r] + at, v);
        for (int h = 0; h < 2; ++h) acc[h] = _mm512_fmadd_ps(a[r], v[h], acc[h]);
      }
    }
#pragma GCC unroll 16
    for (int i = 0; i < kVectors; ++i) _mm512_storeu_ps(yb + 16 * i, acc[i]);
  }
}

// AxpyRows for one token of format F over `blocks` full blocks at byte `at` of every row: the
// rows with non-zero coefficients (zero ones skipped, as AxpyRow skips them), in order,
// kSweepRows at a time through AxpyColumnsSweep, each sweep told the next one's rows.
template <SweepFormat F>
void AxpyColumnsOneToken(std::span<const std::byte* const> rows, uint64_t at, uint32_t blocks,
                         uint64_t stride, const float* a, uint64_t a_stride, float* y) {
  const std::byte* w[2][kSweepRows];
  float av[2][kSweepRows];
  size_t k = 0;
  const auto gather = [&](const std::byte** ww, float* aa) {
    int r = 0;
    for (; k < rows.size() && r < kSweepRows; ++k) {
      const float ak = a[k * a_stride];
      if (ak == 0.0f) continue;
      ww[r] = rows[k] + at;
      aa[r] = ak;
      ++r;
    }
    return r;
  };
  int cur = 0;
  int r = gather(w[cur], av[cur]);
  bool first = true;
  while (r > 0) {
    const int nr = gather(w[1 - cur], av[1 - cur]);
    const std::byte* const* next = w[1 - cur];
    switch (r) {
      case 1:
        AxpyColumnsSweep<1, F>(w[cur], av[cur], blocks, stride, y, first, next, nr);
        break;
      case 2:
        AxpyColumnsSweep<2, F>(w[cur], av[cur], blocks, stride, y, first, next, nr);
        break;
      case 3:
        AxpyColumnsSweep<3, F>(w[cur], av[cur], blocks, stride, y, first, next, nr);
        break;
      default:
        AxpyColumnsSweep<kSweepRows, F>(w[cur], av[cur], blocks, stride, y, first, next, nr);
        break;
    }
    cur = 1 - cur;
    r = nr;
    first = false;
  }
}

// AxpyRows for NT tokens (NT <= 8) over one full q8_0 (or, kQ4, q4_0) block (32 values) at byte
// `at` of every row: each row's block is dequantised once for all NT tokens, and y's NT x 32
// values stay in 2 x NT zmm registers while the rows go by. Every value takes a * (d * q) fused
// into y (q4_0: q = nibble - 8, in value order as UnpackQ4 gives them), and a token whose
// coefficient is zero keeps its y, as in AxpyRow: bit-identical to it.
template <int NT, bool kQ4 = false>
void AxpyQ8BlockTokens(std::span<const std::byte* const> rows, uint64_t at, uint64_t next,
                       const float* a, uint64_t a_stride, float* y, uint64_t y_stride) {
  constexpr uint64_t kBlockBytes = kQ4 ? 2 + kBlock / 2 : 2 + kBlock;  // f16 scale, the values
  __m512 lo[NT], hi[NT];  // values 0-15 and 16-31 of each token's y
#pragma GCC unroll 16
  for (int t = 0; t < NT; ++t) {
    lo[t] = _mm512_loadu_ps(y + t * y_stride);
    hi[t] = _mm512_loadu_ps(y + t * y_stride + 16);
  }
  for (size_t k = 0; k < rows.size(); ++k) {
    PrefetchNextBlock(rows[k], next, kBlockBytes);
    const float* ak = a + k * a_stride;
    const __mmask16 nonzero = NonzeroTokens<NT>(ak);
    if (nonzero == 0) continue;
    __m512 v[2];
    DequantBlock32<kQ4>(rows[k] + at, v);
    AddTokens<NT>(lo, ak, v[0], nonzero);
    AddTokens<NT>(hi, ak, v[1], nonzero);
  }
#pragma GCC unroll 16
  for (int t = 0; t < NT; ++t) {
    _mm512_storeu_ps(y + t * y_stride, lo[t]);
    _mm512_storeu_ps(y + t * y_stride + 16, hi[t]);
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
#ifdef FLASHLM_AVX512
      const auto put = [&](int i, __m512 x) { _mm512_storeu_ps(v + 16 * i, x); };
      if (dtype == DType::kQ4_K && m == per) {
        DequantQ4KBlock16(w, put);
      } else if (dtype == DType::kQ6_K && m == per) {
        DequantQ6KBlock16(w, put);
      } else
#endif
        CHECK_OK(
            layout::DequantizeRow(dtype, ConstByteSpan(w, block_bytes), std::span<float>(v, m)));
      for (uint32_t t = 0; t < n_tokens; ++t) {
        if (a[t] != 0.0f) AxpyF32(a[t], v, y + t * y_stride + c, m);
      }
    }
    return;
  }
  // f16, bf16, q8_0, q4_0: 32 values at a time.
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

uint32_t AxpyBlockValues(DType dtype) {
  return std::max(layout::kQBlockValues, layout::BlockValues(dtype));
}

bool ReadsInterleavedRows(DType dtype) {
#ifdef FLASHLM_AVX512
  return dtype == DType::kQ8_0 || dtype == DType::kQ4_0 || dtype == DType::kQ4_K ||
         dtype == DType::kQ6_K;
#else
  (void)dtype;
  return false;
#endif
}

// Rows a batch of q8_0 / q4_0 (AVX2: and f16) sweeps block by block before it goes on to the next
// rows (AxpyRows), where a block takes one pass (AVX-512: up to 8 tokens; AVX2: up to 4): a sweep
// over a span reads one block of each of its rows and asks for each row's next block, so a span's
// blocks and the next ones it asked for stay in L1 between sweeps (128 rows x 2 blocks: at most
// 32 KiB of lines, where each q8_0 block straddles two). Every y value still takes its rows in
// order, span after span: the same bits. A dense regrouped layer sends all its 5632 positions in
// one call for a few tokens; swept whole, each block's rows had left L1 before the sweep for the
// next block came back to them. Measured (bench/engine/ffn_bench.cc, BM_BundleFfnRegrouped, 1b
// shape, 6 alternated rounds, medians of the per-round ratios, all rows at once -> 128): 4 tokens
// of q8_0 1.17x faster at 1 thread, 1.15x at 2; q4_0 1.14x and 1.02x; `serve --parallel 4` on the
// 1b q8_0 store 1.14x (4 of 4 rounds), q4_0 level. Batches of more passes keep the whole sweep:
// 16 tokens moved 0.97-1.03x with spans on AVX-512, and on AVX2 at 2 threads q4_0 lost 15%
// (docs/benchmarks.md, "Batch down sums 128 rows at a time").
constexpr size_t kBatchRowSpan = 128;

// fn(span, a_span) for `rows` `span_rows` at a time, in order; a_span: the coefficients of the
// span's first row (a, a_stride apart).
template <typename Fn>
void ForEachRowSpan(std::span<const std::byte* const> rows, const float* a, uint64_t a_stride,
                    size_t span_rows, Fn&& fn) {
  for (size_t k0 = 0; k0 < rows.size(); k0 += span_rows) {
    fn(rows.subspan(k0, std::min(span_rows, rows.size() - k0)), a + k0 * a_stride);
  }
}

void AxpyRows(DType dtype, std::span<const std::byte* const> rows, uint64_t offset, uint32_t len,
              const float* a, uint64_t a_stride, uint32_t n_tokens, float* y, uint64_t y_stride,
              uint64_t block_stride) {
  CHECK(MatMulSupports(dtype));
  const uint32_t block_values = AxpyBlockValues(dtype);
  const uint64_t natural = layout::RowBytes(dtype, block_values);
  const uint64_t stride = block_stride == 0 ? natural : block_stride;
  CHECK(stride == natural || len % block_values == 0);
  uint32_t done = 0;  // values handled by the register-blocked path
#ifdef FLASHLM_AVX512
  // One token of q8_0, q4_0, q4_K or q6_K: rows read front to back, a sweep of a few at a time.
  if (n_tokens == 1 && (dtype == DType::kQ8_0 || dtype == DType::kQ4_0)) {
    const uint32_t full = len / kBlock;
    dtype == DType::kQ4_0
        ? AxpyColumnsOneToken<SweepFormat::kQ4>(rows, offset, full, stride, a, a_stride, y)
        : AxpyColumnsOneToken<SweepFormat::kQ8>(rows, offset, full, stride, a, a_stride, y);
    done = full * kBlock;
  }
  if (n_tokens == 1 && (dtype == DType::kQ4_K || dtype == DType::kQ6_K)) {
    const uint32_t full = len / layout::kKBlockValues;
    dtype == DType::kQ6_K
        ? AxpyColumnsOneToken<SweepFormat::kQ6K>(rows, offset, full, stride, a, a_stride, y)
        : AxpyColumnsOneToken<SweepFormat::kQ4K>(rows, offset, full, stride, a, a_stride, y);
    done = full * layout::kKBlockValues;
  }
  // Several tokens of q4_K or q6_K: a super-block of every token's y in L1.
  if (n_tokens > 1 && (dtype == DType::kQ4_K || dtype == DType::kQ6_K)) {
    const uint32_t full = len / layout::kKBlockValues;
    dtype == DType::kQ6_K
        ? AxpyKTokens<true>(rows, offset, full, stride, a, a_stride, n_tokens, y, y_stride)
        : AxpyKTokens<false>(rows, offset, full, stride, a, a_stride, n_tokens, y, y_stride);
    done = full * layout::kKBlockValues;
  }
  // Several tokens of q8_0 or q4_0: a whole block, 8 tokens a pass; up to 8 tokens kBatchRowSpan
  // rows at a time (each span's rows swept block by block before the next span's). Until
  // 2026-12-07, 9-16 tokens went half a block a pass, 16 at once, which was faster on the Intel
  // Xeon of docs/benchmarks.md (1b q8_0, 16 tokens: 172 against 181 ms). On the AMD EPYC (Zen 5)
  // where the project now runs, passes of 8 are as fast or faster: 1b q8_0 prefill from the store
  // 1.09x at 1 thread, even at 2 and for q4_0 ("q8_0 / q4_0 batches of 9-16 tokens in passes of
  // 8").
  if (n_tokens > 1 && (dtype == DType::kQ8_0 || dtype == DType::kQ4_0)) {
    using BlockTokens = void (*)(std::span<const std::byte* const>, uint64_t, uint64_t,
                                 const float*, uint64_t, float*, uint64_t);
    static constexpr BlockTokens kQ8ByTokens[] = {
        AxpyQ8BlockTokens<1>, AxpyQ8BlockTokens<2>, AxpyQ8BlockTokens<3>, AxpyQ8BlockTokens<4>,
        AxpyQ8BlockTokens<5>, AxpyQ8BlockTokens<6>, AxpyQ8BlockTokens<7>, AxpyQ8BlockTokens<8>};
    static constexpr BlockTokens kQ4ByTokens[] = {
        AxpyQ8BlockTokens<1, true>, AxpyQ8BlockTokens<2, true>, AxpyQ8BlockTokens<3, true>,
        AxpyQ8BlockTokens<4, true>, AxpyQ8BlockTokens<5, true>, AxpyQ8BlockTokens<6, true>,
        AxpyQ8BlockTokens<7, true>, AxpyQ8BlockTokens<8, true>};
    const BlockTokens* kByTokens = dtype == DType::kQ4_0 ? kQ4ByTokens : kQ8ByTokens;
    const uint32_t full = len / kBlock;
    const size_t span_rows = n_tokens <= 8 ? kBatchRowSpan : rows.size();  // one pass a block
    ForEachRowSpan(rows, a, a_stride, span_rows, [&](auto span, const float* ak) {
      for (uint32_t b = 0; b < full; ++b) {
        const uint64_t at = offset + b * stride;
        // The rows' next block, asked for by the first pass over this one (0: none).
        const uint64_t next = b + 1 < full ? at + stride : 0;
        for (uint32_t t0 = 0; t0 < n_tokens; t0 += 8) {
          const uint32_t nt = std::min(8u, n_tokens - t0);
          kByTokens[nt - 1](span, at, t0 == 0 ? next : 0, ak + t0, a_stride,
                            y + t0 * y_stride + uint64_t{b} * kBlock, y_stride);
        }
      }
    });
    done = full * kBlock;
  }
#endif
#ifdef FLASHLM_AVX2
  if (done == 0 && n_tokens > 1 &&
      (dtype == DType::kF16 || dtype == DType::kQ8_0 || dtype == DType::kQ4_0)) {
    const uint32_t full = len / kBlock;
    const size_t span_rows = n_tokens <= 4 ? kBatchRowSpan : rows.size();  // one pass a block
    ForEachRowSpan(rows, a, a_stride, span_rows, [&](auto span, const float* ak) {
      for (uint32_t b = 0; b < full; ++b) {
        const uint64_t at = offset + b * stride;
        const uint64_t next = b + 1 < full ? at + stride : 0;  // asked for by the first pass
        for (uint32_t t0 = 0; t0 < n_tokens; t0 += 4) {
          const uint64_t ahead = t0 == 0 ? next : 0;
          const float* at0 = ak + t0;
          float* yb = y + t0 * y_stride + uint64_t{b} * kBlock;
          switch (std::min(4u, n_tokens - t0)) {
            case 1:
              AxpyBlockRows<1>(dtype, span, at, ahead, at0, a_stride, yb, y_stride);
              break;
            case 2:
              AxpyBlockRows<2>(dtype, span, at, ahead, at0, a_stride, yb, y_stride);
              break;
            case 3:
              AxpyBlockRows<3>(dtype, span, at, ahead, at0, a_stride, yb, y_stride);
              break;
            default:
              AxpyBlockRows<4>(dtype, span, at, ahead, at0, a_stride, yb, y_stride);
              break;
          }
        }
      }
    });
    done = full * kBlock;
  }
#endif
  if (done == len) return;
  if (stride != natural) {  // blocks apart (whole blocks): row by row, a block at a time
    for (size_t k = 0; k < rows.size(); ++k) {
      for (uint32_t v = done; v < len; v += block_values) {
        AxpyRow(dtype, rows[k] + offset + uint64_t{v / block_values} * stride, block_values,
                a + k * a_stride, n_tokens, y + v, y_stride);
      }
    }
    return;
  }
  // The rest (all of it for other dtypes or paths; else a partial last block), row by row, each
  // row's slice requested a few rows ahead.
  const uint64_t rest_offset = offset + layout::RowBytes(dtype, done);
  const uint64_t rest_bytes = layout::RowBytes(dtype, len - done);
  constexpr size_t kAhead = 4;
  const auto prefetch = [&](size_t k) {
    for (uint64_t at = 0; at < rest_bytes; at += 64) {
      __builtin_prefetch(rows[k] + rest_offset + at, 0, 2);
    }
  };
  for (size_t k = 0; k < kAhead && k < rows.size(); ++k) prefetch(k);
  for (size_t k = 0; k < rows.size(); ++k) {
    if (k + kAhead < rows.size()) prefetch(k + kAhead);
    AxpyRow(dtype, rows[k] + rest_offset, len - done, a + k * a_stride, n_tokens, y + done,
            y_stride);
  }
}

}  // namespace flashlm::engine
