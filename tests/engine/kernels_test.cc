#include "engine/kernels.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <span>
#include <vector>

namespace flashlm::engine {
namespace {

using layout::DType;

struct Case {
  DType dtype;
  uint32_t rows, cols, tokens, threads;
};

std::vector<std::byte> MakeMatrix(DType dtype, uint32_t rows, uint32_t cols, std::mt19937& rng) {
  std::normal_distribution<float> nd(0.0f, 1.0f);
  const uint64_t rb = layout::RowBytes(dtype, cols);
  std::vector<std::byte> bytes(rows * rb);
  std::vector<float> row(cols);
  for (uint32_t r = 0; r < rows; ++r) {
    for (float& v : row) v = nd(rng);
    EXPECT_TRUE(layout::QuantizeRow(dtype, row, ByteSpan(bytes.data() + r * rb, rb)).ok());
  }
  return bytes;
}

class MatMulTest : public ::testing::TestWithParam<Case> {};

TEST_P(MatMulTest, MatchesScalarReference) {
  const Case c = GetParam();
  std::mt19937 rng(c.rows * 131 + c.cols * 7 + c.tokens);
  std::vector<std::byte> bytes = MakeMatrix(c.dtype, c.rows, c.cols, rng);
  MatrixView w{c.dtype, c.rows, c.cols, bytes};
  std::uniform_real_distribution<float> ud(-2.0f, 2.0f);
  std::vector<float> x(uint64_t{c.tokens} * c.cols);
  for (float& v : x) v = ud(rng);
  std::vector<float> y(uint64_t{c.tokens} * c.rows, -1234.0f);
  std::vector<std::byte> scratch(MatMulScratchBytes(c.cols, c.tokens) + 64);
  ThreadPool pool(c.threads);
  MatMul(w, x, c.tokens, y, scratch, pool);
  const bool quantized_x =
      c.dtype != DType::kF32 && c.dtype != DType::kF16 && c.dtype != DType::kBF16;
  for (uint32_t t = 0; t < c.tokens; ++t) {
    std::span<const float> xt(x.data() + uint64_t{t} * c.cols, c.cols);
    double xnorm = 0;
    for (float v : xt) xnorm += std::fabs(v);
    for (uint32_t r = 0; r < c.rows; ++r) {
      const double ref = ReferenceDot(w, r, xt);
      // f32/f16: only summation order differs. q8: activations are rounded to 1/254 of each
      // block's max, so the error is bounded by the row's magnitude times that step.
      const double tol =
          quantized_x ? 0.02 * xnorm / std::sqrt(double(c.cols)) + 1e-3 : 1e-4 * xnorm + 1e-4;
      ASSERT_NEAR(y[uint64_t{t} * c.rows + r], ref, tol)
          << DTypeName(c.dtype) << " row " << r << " token " << t;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    AllDtypes, MatMulTest,
    ::testing::Values(Case{DType::kF32, 1, 1, 1, 1}, Case{DType::kF32, 37, 13, 1, 2},
                      Case{DType::kF32, 64, 172, 5, 2}, Case{DType::kF32, 130, 257, 9, 3},
                      Case{DType::kF16, 1, 7, 1, 1}, Case{DType::kF16, 37, 13, 3, 2},
                      Case{DType::kF16, 64, 172, 5, 2}, Case{DType::kF16, 130, 257, 9, 3},
                      Case{DType::kQ8_0, 1, 32, 1, 1}, Case{DType::kQ8_0, 37, 13, 2, 2},
                      Case{DType::kQ8_0, 64, 172, 5, 2}, Case{DType::kQ8_0, 130, 257, 9, 3},
                      Case{DType::kQ8_0, 100, 768, 4, 2}, Case{DType::kQ4_0, 1, 32, 1, 1},
                      Case{DType::kQ4_0, 37, 13, 2, 2}, Case{DType::kQ4_0, 64, 172, 5, 2},
                      Case{DType::kQ4_0, 130, 257, 9, 3},
                      // q4_K / q6_K: whole super-blocks, a partial one (300 = 256 + 44, so the
                      // last activation block is partial too), a row shorter than one, and the
                      // 110m model's width; token counts that exercise 1-4 token groups.
                      Case{DType::kQ4_K, 1, 256, 1, 1}, Case{DType::kQ4_K, 37, 13, 2, 2},
                      Case{DType::kQ4_K, 64, 300, 5, 2}, Case{DType::kQ4_K, 130, 768, 9, 3},
                      Case{DType::kQ4_K, 33, 1000, 3, 1}, Case{DType::kQ6_K, 1, 256, 1, 1},
                      Case{DType::kQ6_K, 37, 13, 2, 2}, Case{DType::kQ6_K, 64, 300, 5, 2},
                      Case{DType::kQ6_K, 130, 768, 9, 3}, Case{DType::kQ6_K, 33, 1000, 3, 1},
                      // Prefill tiles (f32: 4 rows x 6 tokens; q8_0 / q4_0: 4 x 4 over block
                      // pairs): token groups full and partial (6, 7, 13), rows not a multiple
                      // of 4, an odd number of blocks (257 -> 9), and a matrix larger than one
                      // weight panel (400 x 257 f32 = 411 KB), on 1-3 threads.
                      Case{DType::kF32, 5, 31, 6, 2}, Case{DType::kF32, 203, 300, 7, 1},
                      Case{DType::kF32, 400, 257, 13, 3}, Case{DType::kF32, 66, 2048, 12, 2},
                      // f16 through the same tiles, in 1024-column chunks past 1024 columns.
                      Case{DType::kF16, 5, 31, 6, 2}, Case{DType::kF16, 203, 300, 7, 1},
                      Case{DType::kF16, 66, 2061, 12, 2},
                      // bf16 likewise (widened as loaded), decode and prefill.
                      Case{DType::kBF16, 1, 7, 1, 1}, Case{DType::kBF16, 37, 13, 3, 2},
                      Case{DType::kBF16, 130, 257, 1, 3}, Case{DType::kBF16, 203, 300, 7, 1},
                      Case{DType::kBF16, 66, 2061, 12, 2}, Case{DType::kQ8_0, 9, 64, 6, 2},
                      Case{DType::kQ8_0, 203, 257, 7, 1}, Case{DType::kQ8_0, 1100, 300, 13, 3},
                      Case{DType::kQ8_0, 66, 2048, 8, 2}, Case{DType::kQ4_0, 9, 64, 6, 2},
                      Case{DType::kQ4_0, 203, 257, 7, 1}, Case{DType::kQ4_0, 1100, 300, 13, 3},
                      Case{DType::kQ4_0, 66, 2048, 8, 2},
                      // q8_0 / q4_0 decode through the 512-bit tile, odd and even block counts.
                      Case{DType::kQ8_0, 45, 257, 1, 3}, Case{DType::kQ8_0, 70, 2048, 1, 2},
                      Case{DType::kQ4_0, 45, 257, 1, 3}, Case{DType::kQ4_0, 70, 2048, 1, 2},
                      // q4_0 in 16-row strips (512-bit VNNI): rows short of a strip and not a
                      // multiple of 16, tokens in passes of 8 full and partial (8, 9, 17), and
                      // more blocks than one packed chunk of 32 (2144 cols = 67 blocks, 3
                      // chunks; 1056 = 33 blocks, a chunk of one), decode and prefill, 1-3 threads.
                      Case{DType::kQ4_0, 15, 2144, 1, 1}, Case{DType::kQ4_0, 17, 2144, 9, 2},
                      Case{DType::kQ4_0, 49, 1056, 17, 3}, Case{DType::kQ4_0, 3, 96, 8, 1},
                      Case{DType::kQ4_0, 100, 1024, 16, 2}, Case{DType::kQ4_0, 33, 33, 3, 3},
                      // q4_K in 16-row strips: partial strips, token passes of 4 full and
                      // partial, a partial last super-block (300, 1000), decode and prefill.
                      Case{DType::kQ4_K, 15, 512, 1, 1}, Case{DType::kQ4_K, 17, 300, 9, 2},
                      Case{DType::kQ4_K, 49, 2048, 6, 3}, Case{DType::kQ4_K, 40, 1000, 1, 2},
                      // q6_K likewise (the strips' 6-bit values, two scales per block).
                      Case{DType::kQ6_K, 15, 512, 1, 1}, Case{DType::kQ6_K, 17, 300, 9, 2},
                      Case{DType::kQ6_K, 49, 2048, 6, 3}, Case{DType::kQ6_K, 40, 1000, 1, 2},
                      Case{DType::kQ6_K, 16, 160, 5, 1},
                      // Without AVX-512, batches take the rows in panels of about 256 KiB: q8_0 /
                      // q4_0 / q4_K rows of 2048 columns (2176 / 1152 / 1152 bytes) give 120 / 224
                      // / 224-row panels, so one thread has several, token groups of 4, 4 and 2
                      // (the 2-token row tiles) and rows past the last whole panel.
                      Case{DType::kQ8_0, 500, 2048, 10, 1}, Case{DType::kQ4_0, 500, 2048, 10, 1},
                      Case{DType::kQ4_K, 500, 2048, 10, 2}));

TEST(MatMulTest, Q8ExactOnRepresentableActivations) {
  // Activations that are integers times a power-of-two scale quantise exactly, so the int8 path
  // must agree with the scalar reference to f32 rounding.
  std::mt19937 rng(5);
  const uint32_t rows = 9, cols = 96;
  std::vector<std::byte> bytes = MakeMatrix(DType::kQ8_0, rows, cols, rng);
  MatrixView w{DType::kQ8_0, rows, cols, bytes};
  std::vector<float> x(cols);
  for (uint32_t i = 0; i < cols; ++i) x[i] = (static_cast<int>(i % 255) - 127) / 64.0f;
  for (uint32_t b = 0; b < cols / 32; ++b) x[b * 32] = 127 / 64.0f;  // block max = 127 steps
  std::vector<float> y(rows);
  std::vector<std::byte> scratch(MatMulScratchBytes(cols, 1));
  ThreadPool pool(1);
  MatMul(w, x, 1, y, scratch, pool);
  for (uint32_t r = 0; r < rows; ++r) EXPECT_NEAR(y[r], ReferenceDot(w, r, x), 1e-3) << r;
}

// The batch (prefill) tiles of q8_0 and q4_0 against the scalar reference on activations that
// quantise exactly: the int8 block products, including the offsets folded into VNNI's unsigned x
// signed products, must be exact, for 1-9 tokens (tile groups and remainders) and an odd number
// of blocks.
TEST(MatMulTest, BlockTilesExactOnRepresentableActivations) {
  for (DType dtype : {DType::kQ8_0, DType::kQ4_0}) {
    std::mt19937 rng(7);
    const uint32_t rows = 11, cols = 160;  // 5 blocks
    std::vector<std::byte> bytes = MakeMatrix(dtype, rows, cols, rng);
    MatrixView w{dtype, rows, cols, bytes};
    for (uint32_t n = 1; n <= 9; ++n) {
      std::vector<float> x(uint64_t{n} * cols);
      for (uint32_t t = 0; t < n; ++t) {
        for (uint32_t i = 0; i < cols; ++i) {
          x[t * cols + i] = (static_cast<int>((i * 7 + t * 13) % 255) - 127) / 64.0f;
        }
        for (uint32_t b = 0; b < cols / 32; ++b) x[t * cols + b * 32] = -127 / 64.0f;
      }
      std::vector<float> y(uint64_t{n} * rows);
      std::vector<std::byte> scratch(MatMulScratchBytes(cols, n));
      ThreadPool pool(2);
      MatMul(w, x, n, y, scratch, pool);
      for (uint32_t t = 0; t < n; ++t) {
        std::span<const float> xt(x.data() + uint64_t{t} * cols, cols);
        for (uint32_t r = 0; r < rows; ++r) {
          EXPECT_NEAR(y[t * rows + r], ReferenceDot(w, r, xt), 1e-3)
              << DTypeName(dtype) << " tokens " << n << " token " << t << " row " << r;
        }
      }
    }
  }
}

// f32: a token's outputs are bit-identical whether it is multiplied alone (decode) or inside a
// batch of any size at any position (prefill tiles, their token and row remainders, several
// weight panels, 1-3 threads). Prefill followed by decode relies on it (a restored prompt cache
// gives the same logits as a full run). q8_0, q4_0, q4_K and q6_K too wherever they go through
// strips (decode and prefill share the strip code: 512-bit VNNI, and AVX2 without it).
// With AMX (q8_0 batches of 4 tokens or more, where the CPU has it), both with and without it.
TEST(MatMulTest, BatchBitIdenticalToOneTokenAtATime) {
  std::vector<DType> dtypes = {DType::kF32, DType::kF16, DType::kBF16};
  for (DType dtype : {DType::kQ8_0, DType::kQ4_0, DType::kQ4_K, DType::kQ6_K}) {
    if (CanInterleaveStrips(dtype, 16, 256)) dtypes.push_back(dtype);
  }
  for (DType dtype : dtypes)
    for (uint32_t cols : {16u, 61u, 257u, 768u, 2144u, 2061u}) {  // f32 / f16: 1024-column chunks
      std::mt19937 rng(cols);
      const uint32_t rows = cols == 768 ? 301 : 403;
      std::vector<std::byte> bytes = MakeMatrix(dtype, rows, cols, rng);
      MatrixView w{dtype, rows, cols, bytes};
      std::normal_distribution<float> nd(0.0f, 1.0f);
      const uint32_t n = 37;
      std::vector<float> x(uint64_t{n} * cols);
      for (float& v : x) v = nd(rng);
      std::vector<std::byte> scratch(MatMulScratchBytes(cols, n));
      std::vector<float> single(uint64_t{n} * rows);
      ThreadPool one(1);
      for (uint32_t t = 0; t < n; ++t) {
        MatMul(w, std::span<const float>(x).subspan(uint64_t{t} * cols, cols), 1,
               std::span<float>(single).subspan(uint64_t{t} * rows, rows), scratch, one);
      }
      for (auto [threads, amx] :
           {std::pair{1u, true}, std::pair{2u, true}, std::pair{3u, true}, std::pair{2u, false}}) {
        if (!amx && !SetAmx(true)) continue;  // no AMX here: the runs above were without it
        SetAmx(amx);
        ThreadPool pool(threads);
        for (uint32_t batch : {2u, 5u, 6u, 7u, 14u, 16u, 37u}) {
          std::vector<float> y(uint64_t{n} * rows);
          for (uint32_t t0 = 0; t0 < n; t0 += batch) {
            const uint32_t m = std::min(batch, n - t0);
            MatMul(w, std::span<const float>(x).subspan(uint64_t{t0} * cols, uint64_t{m} * cols), m,
                   std::span<float>(y).subspan(uint64_t{t0} * rows, uint64_t{m} * rows), scratch,
                   pool);
          }
          for (size_t i = 0; i < y.size(); ++i) {
            ASSERT_EQ(std::memcmp(&y[i], &single[i], sizeof(float)), 0)
                << DTypeName(dtype) << " cols " << cols << " threads " << threads << " amx " << amx
                << " batch " << batch << " token " << i / rows << " row " << i % rows << ": "
                << y[i] << " vs " << single[i];
          }
        }
        SetAmx(true);
      }
    }
}

// MatMulRows over a row range that starts and ends inside a 16-row strip (as the bundle FFN asks
// for 1-2 rows) gives bit-identical values to the full MatMul for those rows, and writes no other
// row; q4_0's strips put each row in a lane of its own.
TEST(MatMulTest, RowRangeBitIdenticalToFullMatMul) {
  for (DType dtype : {DType::kQ8_0, DType::kQ4_0, DType::kQ4_K, DType::kQ6_K}) {
    std::mt19937 rng(11);
    const uint32_t rows = 45, cols = 1100, n = 5;
    std::vector<std::byte> bytes = MakeMatrix(dtype, rows, cols, rng);
    MatrixView w{dtype, rows, cols, bytes};
    std::normal_distribution<float> nd(0.0f, 1.0f);
    std::vector<float> x(uint64_t{n} * cols);
    for (float& v : x) v = nd(rng);
    std::vector<std::byte> scratch(MatMulScratchBytes(cols, n));
    ThreadPool pool(2);
    for (uint32_t tokens : {1u, n}) {
      std::vector<float> full(uint64_t{tokens} * rows);
      MatMul(w, std::span<const float>(x).first(uint64_t{tokens} * cols), tokens, full, scratch,
             pool);
      QuantizeActivations(x, cols, tokens, scratch);
      for (auto [b, e] : {std::pair{3u, 5u}, std::pair{7u, 30u}, std::pair{44u, 45u}}) {
        std::vector<float> y(uint64_t{tokens} * rows, -7.0f);
        MatMulRows(w, x, tokens, scratch, b, e, y);
        for (uint32_t t = 0; t < tokens; ++t) {
          for (uint32_t r = 0; r < rows; ++r) {
            const float got = y[uint64_t{t} * rows + r];
            if (r < b || r >= e) {
              ASSERT_EQ(got, -7.0f) << DTypeName(dtype) << " row " << r << " written";
            } else {
              const float want = full[uint64_t{t} * rows + r];
              ASSERT_EQ(std::memcmp(&got, &want, sizeof(float)), 0)
                  << DTypeName(dtype) << " rows [" << b << ", " << e << ") token " << t << " row "
                  << r << ": " << got << " vs " << want;
            }
          }
        }
      }
    }
  }
}

// The byte of `strips` (a matrix InterleaveStrips rewrote) that holds byte `o` of row r's row-major
// bytes, by the layout kernels.h documents.
uint64_t StripsOffset(DType dtype, uint32_t cols, uint32_t r, uint64_t o) {
  const uint64_t rb = layout::RowBytes(dtype, cols);
  const uint64_t strip = uint64_t{r / 16} * 16 * rb;
  const uint32_t i = r % 16;
  if (dtype == DType::kF32) {  // groups of 2 rows, 1 KiB pieces of them
    const uint64_t group = uint64_t{r / 2} * 2 * rb;
    return group + (o / 1024 * 2 + r % 2) * 1024 + o % 1024;
  }
  if (dtype == DType::kQ4_0 || dtype == DType::kQ8_0) {
    const uint64_t block = dtype == DType::kQ4_0 ? 18 : 34, vectors = (block - 2) / 4;
    const uint64_t b = o / block, in = o % block;  // block b, byte `in` of it
    const uint64_t pair = strip + (b / 2) * 32 * block;
    if (in < 2) return pair + 128 * vectors + 32 * (b % 2) + 2 * i + in;
    const uint64_t q = in - 2;  // value byte q = 4k + m: vector k, lane i, byte m
    return pair + 64 * vectors * (b % 2) + 64 * (q / 4) + 4 * i + q % 4;
  }
  const uint64_t block = dtype == DType::kQ4_K ? 144 : 210, groups = block / 16, tail = block % 16;
  const uint64_t nsb = rb / block, j = o / block, in = o % block;
  if (in < 16 * groups)
    return strip + j * groups * 256 + 256 * (in / 16) + 64 * (in % 16 / 4) + 4 * i + in % 4;
  return strip + nsb * groups * 256 + (j * 16 + i) * tail + (in - 16 * groups);
}

// Matrices interleaved in 16-row strips (how a loaded GGUF's f32, q4_0, q4_K and q6_K matrices are
// kept): every byte lands where the layout kernels.h documents says, and MatMul / MatMulRows over
// the strips are bit-identical to MatMul over the row-major matrix, for one token (decode) and
// batches, 1-3 threads, row ranges that start on a strip and end anywhere.
class StripsTest : public ::testing::TestWithParam<DType> {};

TEST_P(StripsTest, BitIdenticalToRowMajor) {
  const DType dtype = GetParam();
  EXPECT_FALSE(CanInterleaveStrips(dtype, 40, 256));        // rows not a multiple of 16
  EXPECT_FALSE(CanInterleaveStrips(DType::kQ4_0, 32, 96));  // an odd number of q4_0 blocks
  EXPECT_FALSE(CanInterleaveStrips(DType::kQ8_0, 32, 96));  // and of q8_0 blocks
  EXPECT_FALSE(CanInterleaveStrips(DType::kF32, 32, 720));  // f32 columns not a multiple of 256
  EXPECT_FALSE(CanInterleaveStrips(DType::kF16, 32, 64));   // no strips for f16
  if (!CanInterleaveStrips(dtype, 16, 256)) {
    GTEST_SKIP() << "this build's MatMul has no interleaved strips for " << DTypeName(dtype)
                 << " (f32 needs AVX-512, q4_0 / q8_0 / q4_K / q6_K AVX2)";
  }
  // q4_K / q6_K widths include ones that end part way through a super-block (64, 800).
  // f32 widths are whole 256-column pieces.
  std::vector<std::pair<uint32_t, uint32_t>> shapes = {{160, 2048}, {32, 5632}};
  if (dtype == DType::kF32) {
    shapes.insert(shapes.end(), {{16, 256}, {64, 1280}, {32, 768}});
  } else {
    shapes.insert(shapes.end(), {{16, 64}, {48, 128}});
  }
  if (dtype == DType::kQ4_K || dtype == DType::kQ6_K)
    shapes.insert(shapes.end(), {{16, 800}, {32, 768}});
  for (auto [rows, cols] : shapes) {
    SCOPED_TRACE(std::string(DTypeName(dtype)) + " " + std::to_string(rows) + " x " +
                 std::to_string(cols));
    std::mt19937 rng(rows + cols);
    const std::vector<std::byte> plain = MakeMatrix(dtype, rows, cols, rng);
    std::vector<std::byte> strips = plain;
    InterleaveStrips(dtype, rows, cols, strips);
    const uint64_t rb = layout::RowBytes(dtype, cols);
    std::vector<bool> seen(strips.size());
    for (uint32_t r = 0; r < rows; ++r) {
      for (uint64_t o = 0; o < rb; ++o) {
        const uint64_t at = StripsOffset(dtype, cols, r, o);
        ASSERT_LT(at, strips.size()) << "row " << r << " byte " << o;
        ASSERT_FALSE(seen[at]) << "row " << r << " byte " << o << " lands on a taken byte";
        seen[at] = true;
        ASSERT_EQ(strips[at], plain[r * rb + o]) << "row " << r << " byte " << o;
      }
    }
    const MatrixView w{dtype, rows, cols, plain};
    MatrixView ws{dtype, rows, cols, strips};
    ws.strips = true;
    std::normal_distribution<float> nd(0.0f, 1.0f);
    const uint32_t max_tokens = 17;
    std::vector<float> x(uint64_t{max_tokens} * cols);
    for (float& v : x) v = nd(rng);
    std::vector<std::byte> scratch(MatMulScratchBytes(cols, max_tokens));
    for (uint32_t tokens : {1u, 3u, 9u, 17u}) {
      const std::span<const float> xt = std::span<const float>(x).first(uint64_t{tokens} * cols);
      std::vector<float> want(uint64_t{tokens} * rows);
      ThreadPool one(1);
      MatMul(w, xt, tokens, want, scratch, one);
      for (uint32_t threads : {1u, 2u, 3u}) {
        ThreadPool pool(threads);
        std::vector<float> got(want.size(), -7.0f);
        MatMul(ws, xt, tokens, got, scratch, pool);
        ASSERT_EQ(std::memcmp(got.data(), want.data(), want.size() * sizeof(float)), 0)
            << rows << " x " << cols << ", " << tokens << " tokens, " << threads << " threads";
      }
      QuantizeActivations(xt, cols, tokens, scratch);
      for (auto [b, e] : {std::pair{0u, 16u}, std::pair{16u, rows}, std::pair{0u, rows - 3}}) {
        if (b >= e) continue;
        std::vector<float> got(want.size(), -7.0f);
        MatMulRows(ws, xt, tokens, scratch, b, e, got);
        for (uint32_t t = 0; t < tokens; ++t) {
          for (uint32_t r = 0; r < rows; ++r) {
            const float g = got[uint64_t{t} * rows + r];
            if (r < b || r >= e) {
              ASSERT_EQ(g, -7.0f) << "row " << r << " written";
            } else {
              ASSERT_EQ(std::memcmp(&g, &want[uint64_t{t} * rows + r], sizeof(float)), 0)
                  << rows << " x " << cols << " rows [" << b << ", " << e << ") token " << t
                  << " row " << r;
            }
          }
        }
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(InterleavedDtypes, StripsTest,
                         ::testing::Values(DType::kF32, DType::kQ8_0, DType::kQ4_0, DType::kQ4_K,
                                           DType::kQ6_K),
                         [](const ::testing::TestParamInfo<DType>& i) {
                           return std::string(DTypeName(i.param));
                         });

// MatMulShared gives each matrix exactly what MatMul gives it alone: mixed dtypes (a Q4_K_M
// layer's q4_K and q6_K next to f32 and q4_0), row counts that are not multiples of 16 (the
// matrices meet inside one chunk), row-major and in strips, one token and a batch, 1-3 threads.
TEST(KernelsTest, MatMulSharedEqualsMatMulPerMatrix) {
  const uint32_t cols = 512;
  struct Spec {
    DType dtype;
    uint32_t rows;
  };
  for (const auto& specs :
       {std::vector<Spec>{{DType::kQ4_K, 64}, {DType::kQ6_K, 32}, {DType::kQ4_K, 48}},
        std::vector<Spec>{
            {DType::kF32, 37}, {DType::kQ4_0, 24}, {DType::kQ8_0, 16}, {DType::kBF16, 5}},
        std::vector<Spec>{{DType::kQ8_0, 200}, {DType::kQ8_0, 200}}}) {
    std::mt19937 rng(static_cast<uint32_t>(specs.size()) * 7 + specs[0].rows);
    std::vector<std::vector<std::byte>> bytes;
    std::vector<MatrixView> views;
    for (const Spec& sp : specs) {
      bytes.push_back(MakeMatrix(sp.dtype, sp.rows, cols, rng));
      views.push_back(KeepInStrips(MatrixView{sp.dtype, sp.rows, cols, bytes.back()},
                                   ByteSpan(bytes.back().data(), bytes.back().size())));
    }
    std::vector<const MatrixView*> ws;
    for (const MatrixView& v : views) ws.push_back(&v);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    for (uint32_t n : {1u, 7u}) {
      std::vector<float> x(uint64_t{n} * cols);
      for (float& v : x) v = nd(rng);
      std::vector<std::byte> scratch(MatMulScratchBytes(cols, n));
      for (uint32_t threads : {1u, 2u, 3u}) {
        ThreadPool pool(threads);
        std::vector<std::vector<float>> alone(specs.size()), shared(specs.size());
        std::vector<std::span<float>> out;
        for (size_t m = 0; m < specs.size(); ++m) {
          alone[m].assign(uint64_t{n} * specs[m].rows, 0.0f);
          shared[m].assign(uint64_t{n} * specs[m].rows, -1.0f);
          MatMul(views[m], x, n, alone[m], scratch, pool);
          out.push_back(shared[m]);
        }
        MatMulShared(ws, x, n, out, scratch, pool);
        for (size_t m = 0; m < specs.size(); ++m) {
          ASSERT_EQ(0,
                    std::memcmp(alone[m].data(), shared[m].data(), alone[m].size() * sizeof(float)))
              << DTypeName(specs[m].dtype) << " matrix " << m << ", " << n << " tokens, " << threads
              << " threads";
        }
      }
    }
  }
}

// DotRows: rows anywhere in memory (here every other row of a matrix, in a shuffled order), each
// result bit-identical to MatMul's for that row, for one token and for batches (q8_0 goes through
// 4-row tiles for batches and single rows for one token on AVX-512 VNNI; the rest row by row).
TEST(KernelsTest, DotRowsBitIdenticalToMatMul) {
  for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16, DType::kQ8_0, DType::kQ4_0,
                      DType::kQ4_K, DType::kQ6_K}) {
    std::mt19937 rng(12);
    const uint32_t rows = 41, cols = 1100;  // 21 rows picked: strips of 16 and 5
    std::vector<std::byte> bytes = MakeMatrix(dtype, rows, cols, rng);
    MatrixView w{dtype, rows, cols, bytes};
    std::normal_distribution<float> nd(0.0f, 1.0f);
    std::vector<uint32_t> picked;
    for (uint32_t r = 0; r < rows; r += 2) picked.push_back(r);
    std::shuffle(picked.begin(), picked.end(), rng);
    std::vector<const std::byte*> pointers;
    for (uint32_t r : picked) pointers.push_back(w.row(r).data());
    ThreadPool pool(2);
    for (uint32_t tokens : {1u, 2u, 5u, 9u, 17u}) {
      std::vector<float> x(uint64_t{tokens} * cols);
      for (float& v : x) v = nd(rng);
      std::vector<std::byte> scratch(MatMulScratchBytes(cols, tokens));
      std::vector<float> full(uint64_t{tokens} * rows);
      MatMul(w, x, tokens, full, scratch, pool);
      QuantizeActivations(x, cols, tokens, scratch);
      for (uint32_t count : {uint32_t(picked.size()), 3u, 1u}) {
        std::vector<float> out(uint64_t{count} * tokens + 1, -7.0f);
        DotRows(dtype, cols, std::span<const std::byte* const>(pointers).first(count), x, tokens,
                scratch, out.data());
        ASSERT_EQ(out.back(), -7.0f) << DTypeName(dtype) << ": wrote past the rows";
        for (uint32_t k = 0; k < count; ++k) {
          for (uint32_t t = 0; t < tokens; ++t) {
            const float got = out[uint64_t{k} * tokens + t];
            const float want = full[uint64_t{t} * rows + picked[k]];
            ASSERT_EQ(std::memcmp(&got, &want, sizeof(float)), 0)
                << DTypeName(dtype) << " " << tokens << " tokens, row " << picked[k] << " token "
                << t << ": " << got << " vs " << want;
          }
        }
      }
    }
  }
}

TEST(ElementwiseTest, RmsNormSoftmaxSwiGlu) {
  std::vector<float> x = {1, -2, 3, 0.5f}, g = {1, 2, 0.5f, 1}, out(4);
  RmsNorm(x, g, 1e-5f, out);
  const float ms = (1 + 4 + 9 + 0.25f) / 4;
  for (int i = 0; i < 4; ++i) EXPECT_NEAR(out[i], g[i] * x[i] / std::sqrt(ms + 1e-5f), 1e-5);
  std::vector<float> s = {1, 2, 3};
  Softmax(s);
  EXPECT_NEAR(s[0] + s[1] + s[2], 1.0f, 1e-6);
  EXPECT_NEAR(s[2] / s[1], std::exp(1.0f), 1e-4);
  // Lengths around the 8- and 16-lane widths; values spread down to where exp underflows, -inf (a
  // masked position) weighs exactly 0; each weight within 3e-7 relative of exp's.
  std::mt19937 rng(5);
  for (uint32_t len : {1u, 7u, 8u, 9u, 15u, 16u, 17u, 33u, 1000u}) {
    std::vector<float> v(len);
    std::uniform_real_distribution<float> u(-120.0f, 8.0f);
    for (float& e : v) e = u(rng);
    if (len > 2) v[1] = -std::numeric_limits<float>::infinity();
    float mx = v[0];
    for (float e : v) mx = std::max(mx, e);
    // The reference from the same float differences x - max (their rounding is not Softmax's).
    double sum = 0;
    for (float e : v) sum += std::exp(double(e - mx));
    std::vector<float> got = v;
    Softmax(got);
    for (uint32_t i = 0; i < len; ++i) {
      const double want = std::exp(double(v[i] - mx)) / sum;
      EXPECT_NEAR(got[i], want, 3e-7 * want + 1e-44) << "len " << len << " i " << i;
    }
    if (len > 2) {
      EXPECT_EQ(got[1], 0.0f);
    }
  }
  std::vector<float> gate = {-1, 0, 2}, up = {3, 4, 5};
  std::vector<float> relu = gate;
  SwiGlu(gate, up, false);
  EXPECT_NEAR(gate[0], -1.0f / (1 + std::exp(1.0f)) * 3, 1e-5);
  EXPECT_NEAR(gate[2], 2.0f / (1 + std::exp(-2.0f)) * 5, 1e-5);
  SwiGlu(relu, up, true);
  EXPECT_EQ(relu[0], 0.0f);
  EXPECT_EQ(relu[2], 10.0f);
  std::vector<float> a(19), b(19), y(19, 1.0f);
  for (int i = 0; i < 19; ++i) a[i] = i, b[i] = 19 - i;
  double ref = 0;
  for (int i = 0; i < 19; ++i) ref += a[i] * b[i];
  EXPECT_FLOAT_EQ(DotF32(a.data(), b.data(), 19), ref);
  AxpyF32(2.0f, a.data(), y.data(), 19);
  for (int i = 0; i < 19; ++i) EXPECT_EQ(y[i], 1 + 2 * a[i]);
}

// Silu within a few ulps of g / (1 + e^-g) in double, over the range where it is not 0 or g to
// the float's precision, and its limits beyond.
TEST(ElementwiseTest, SiluFollowsTheFormula) {
  std::mt19937 rng(11);
  std::vector<float> gs = {0.0f,   -0.0f, 1e-30f, -1e-30f, 1e-6f,  0.5f,   -0.5f,   86.9f,
                           -86.9f, 87.0f, -87.0f, 87.1f,   -87.1f, -95.0f, -102.9f, 100.0f};
  std::uniform_real_distribution<float> wide(-90.0f, 90.0f);
  std::normal_distribution<float> near(0.0f, 3.0f);
  for (int i = 0; i < 20000; ++i) gs.push_back(i % 2 ? wide(rng) : near(rng));
  for (float g : gs) {
    const double want = double{g} / (1.0 + std::exp(-double{g}));
    // 1.2e-6 relative is about 10 ulps; below -87 the exact value is under 1e-35 in size.
    EXPECT_NEAR(Silu(g), want, 1.2e-6 * std::fabs(want) + 1e-35) << g;
  }
  EXPECT_EQ(Silu(-110.0f), 0.0f);  // e^-110 is below the smallest denormal
  EXPECT_TRUE(std::signbit(Silu(-110.0f)));
  EXPECT_EQ(Silu(1e6f), 1e6f);
  EXPECT_EQ(Silu(std::numeric_limits<float>::infinity()), std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(Silu(std::nanf(""))));
  EXPECT_TRUE(std::signbit(Silu(-0.0f)));
}

// SwiGlu's SIMD lanes and its scalar tail give each element Silu(g) x up (or relu) to the bit, at
// every place in spans of every length: a neuron's h is the same alone as with its layer's.
TEST(ElementwiseTest, SwiGluIsSilusBitsAtEveryPlace) {
  std::mt19937 rng(12);
  std::vector<float> gs = {0.0f,
                           -0.0f,
                           87.0f,
                           -87.0f,
                           -86.99f,
                           -87.01f,
                           1e-40f,
                           -1e-40f,
                           -88.0f,
                           88.0f,
                           std::numeric_limits<float>::infinity(),
                           -std::numeric_limits<float>::infinity(),
                           std::nanf(""),
                           std::numeric_limits<float>::max(),
                           -std::numeric_limits<float>::max()};
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::uniform_real_distribution<float> wide(-110.0f, 110.0f);
  while (gs.size() < 3000) gs.push_back(gs.size() % 3 ? nd(rng) * 4 : wide(rng));
  std::vector<float> up(gs.size());
  for (float& u : up) u = nd(rng);
  auto bits = [](float v) {
    uint32_t b;
    std::memcpy(&b, &v, sizeof(b));
    return b;
  };
  for (bool relu : {false, true}) {
    for (uint32_t len = 1; len <= 40; ++len) {
      for (uint32_t start = 0; start + len <= gs.size(); start += 37) {
        std::vector<float> g(gs.begin() + start, gs.begin() + start + len);
        SwiGlu(g, std::span<const float>(up.data() + start, len), relu);
        for (uint32_t i = 0; i < len; ++i) {
          const float gv = gs[start + i];
          const float want = (relu ? std::max(gv, 0.0f) : Silu(gv)) * up[start + i];
          ASSERT_EQ(bits(g[i]), bits(want))
              << "relu " << relu << " len " << len << " i " << i << " g " << gv;
        }
      }
    }
  }
}

// AxpyRow against DequantizeRow + a double reference, for every dtype, with a partial last block,
// a slice starting at a block boundary inside the row, several tokens and a zero coefficient;
// bit for bit against fma where the dtype's path fuses every term.
TEST(KernelsTest, AxpyRowMatchesDequantizeRow) {
  for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16, DType::kQ8_0, DType::kQ4_0,
                      DType::kQ4_K, DType::kQ6_K}) {
    std::mt19937 rng(static_cast<uint32_t>(dtype) + 11);
    // 4 full blocks + 6 values; for q4_K / q6_K 2 full super-blocks + 6 values.
    const uint32_t per = std::max(32u, layout::BlockValues(dtype));
    const uint32_t cols = 4 * 32 + 6 + (per > 32 ? 2 * per - 4 * 32 : 0);
    std::vector<std::byte> row = MakeMatrix(dtype, 1, cols, rng);
    std::vector<float> v(cols);
    ASSERT_TRUE(layout::DequantizeRow(dtype, row, v).ok());
    const uint32_t skip = per;  // starts at the second block
    const uint32_t len = cols - skip;
    const float a[3] = {0.75f, 0.0f, -2.5f};
    const uint64_t stride = len + 5;
    std::vector<float> y(3 * stride);
    for (size_t i = 0; i < y.size(); ++i) y[i] = 0.01f * static_cast<float>(i);
    const std::vector<float> y0 = y;
    AxpyRow(dtype, row.data() + layout::RowBytes(dtype, skip), len, a, 3, y.data(), stride);
    for (uint32_t t = 0; t < 3; ++t) {
      for (uint32_t i = 0; i < stride; ++i) {
        const double want =
            i < len ? double(y0[t * stride + i]) + double(a[t]) * v[skip + i] : y0[t * stride + i];
        ASSERT_NEAR(y[t * stride + i], want, 1e-5 * (1 + std::fabs(want)))
            << DTypeName(dtype) << " token " << t << " value " << i;
        // f32, q4_K and q6_K fuse every term into y: exactly fma(a, DequantizeRow's value, y).
        if (i < len && a[t] != 0.0f &&
            (dtype == DType::kF32 || dtype == DType::kQ4_K || dtype == DType::kQ6_K)) {
          const float exact = std::fma(a[t], v[skip + i], y0[t * stride + i]);
          ASSERT_EQ(std::memcmp(&y[t * stride + i], &exact, sizeof(float)), 0)
              << DTypeName(dtype) << " token " << t << " value " << i << ": " << y[t * stride + i]
              << " vs " << exact;
        }
      }
    }
  }
}

// AxpyRows is bit-identical to AxpyRow called row after row, for every dtype, 1 to 17 tokens
// (register tiles of 4 or 8 tokens and their remainders), a partial last block, an offset into
// the rows, and coefficients that are zero for some tokens or for every token of a row.
TEST(KernelsTest, AxpyRowsEqualsAxpyRowRowByRow) {
  for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16, DType::kQ8_0, DType::kQ4_0,
                      DType::kQ4_K, DType::kQ6_K}) {
    std::mt19937 rng(static_cast<uint32_t>(dtype) + 29);
    const uint32_t per = std::max(32u, layout::BlockValues(dtype));
    const uint32_t cols = 3 * per + 6;
    // One token of q8_0 / q4_0 / q4_K / q6_K reads the rows front to back, 4 at a time (13 rows:
    // a last sweep of one; row 4's zero coefficient is skipped); several tokens keep a block of
    // y in registers across the rows (37); q8_0 / q4_0 batches of one pass (AVX-512: up to 8
    // tokens, AVX2: 4) go 128 rows at a time (300: two spans and a part).
    for (uint32_t kRows : {13u, 37u, 300u}) {
      std::vector<std::byte> m = MakeMatrix(dtype, kRows, cols, rng);
      const uint64_t rb = layout::RowBytes(dtype, cols);
      std::vector<const std::byte*> rows;
      for (uint32_t k = 0; k < kRows; ++k) rows.push_back(m.data() + (kRows - 1 - k) * rb);
      const uint64_t offset = layout::RowBytes(dtype, per);  // from the second block on
      const uint32_t len = cols - per;
      std::normal_distribution<float> nd(0.0f, 1.0f);
      for (uint32_t n = 1; n <= 17; ++n) {
        const uint64_t a_stride = n + 3, y_stride = len + 7;
        std::vector<float> a(kRows * a_stride);
        for (uint32_t k = 0; k < kRows; ++k) {
          for (uint32_t t = 0; t < n; ++t) {
            // Row 4 all zeros, every third row some zeros, the rest none (the kernels take a row
            // whose every coefficient is non-zero without a test per token).
            a[k * a_stride + t] = (k == 4 || (k % 3 == 0 && (k + t) % 5 == 0)) ? 0.0f : nd(rng);
          }
        }
        std::vector<float> y(n * y_stride);
        for (float& v : y) v = nd(rng);
        std::vector<float> want = y;
        for (uint32_t k = 0; k < kRows; ++k) {
          AxpyRow(dtype, rows[k] + offset, len, a.data() + k * a_stride, n, want.data(), y_stride);
        }
        AxpyRows(dtype, rows, offset, len, a.data(), a_stride, n, y.data(), y_stride);
        for (size_t i = 0; i < y.size(); ++i) {
          ASSERT_EQ(std::memcmp(&y[i], &want[i], sizeof(float)), 0)
              << DTypeName(dtype) << " rows " << kRows << " tokens " << n << " value " << i << ": "
              << y[i] << " vs " << want[i];
        }
      }
    }
  }
}

// AxpyRows over rows interleaved block by block, 4 rows a group (DownLayout's regrouped down
// columns: block b of row k at its group's start + (b * m + k % 4) block sizes, m the group's rows,
// fewer in a last partial group), each run of equal stride in one call, from the second block on:
// bit-identical to AxpyRow row by row over the same rows laid out whole. One token (the sweep, a
// zero coefficient inside a group), 2-17 tokens (register tiles), f16 (block by block).
TEST(KernelsTest, AxpyRowsReadsRowsInterleavedBlockByBlock) {
  for (DType dtype : {DType::kQ8_0, DType::kQ4_0, DType::kQ4_K, DType::kQ6_K, DType::kF16}) {
    std::mt19937 rng(static_cast<uint32_t>(dtype) + 41);
    const uint32_t per = std::max(32u, layout::BlockValues(dtype));
    const uint32_t cols = 3 * per;
    const uint64_t bb = layout::RowBytes(dtype, per), rb = layout::RowBytes(dtype, cols);
    for (uint32_t kRows : {13u, 37u, 40u}) {
      std::vector<std::byte> m = MakeMatrix(dtype, kRows, cols, rng);
      std::vector<std::byte> il(m.size());
      std::vector<const std::byte*> rows(kRows);
      const uint32_t full = kRows / 4 * 4;
      for (uint32_t k = 0; k < kRows; ++k) {
        const uint32_t g0 = k / 4 * 4, members = std::min(4u, kRows - g0);
        rows[k] = il.data() + g0 * rb + (k - g0) * bb;
        for (uint32_t b = 0; b < 3; ++b) {
          std::memcpy(il.data() + g0 * rb + (b * members + k - g0) * bb, m.data() + k * rb + b * bb,
                      bb);
        }
      }
      std::normal_distribution<float> nd(0.0f, 1.0f);
      for (uint32_t n : {1u, 2u, 3u, 9u, 17u}) {
        const uint64_t a_stride = n + 1, y_stride = 2 * per + 5;
        std::vector<float> a(kRows * a_stride);
        for (uint32_t k = 0; k < kRows; ++k) {
          for (uint32_t t = 0; t < n; ++t) a[k * a_stride + t] = k == 5 ? 0.0f : nd(rng);
        }
        std::vector<float> y(n * y_stride);
        for (float& v : y) v = nd(rng);
        std::vector<float> want = y;
        for (uint32_t k = 0; k < kRows; ++k) {
          AxpyRow(dtype, m.data() + k * rb + bb, 2 * per, a.data() + k * a_stride, n, want.data(),
                  y_stride);
        }
        const std::span<const std::byte* const> all(rows);
        AxpyRows(dtype, all.first(full), 4 * bb, 2 * per, a.data(), a_stride, n, y.data(), y_stride,
                 4 * bb);
        if (full < kRows) {
          const uint64_t stride = (kRows - full) * bb;
          AxpyRows(dtype, all.subspan(full), stride, 2 * per, a.data() + full * a_stride, a_stride,
                   n, y.data(), y_stride, stride);
        }
        for (size_t i = 0; i < y.size(); ++i) {
          ASSERT_EQ(std::memcmp(&y[i], &want[i], sizeof(float)), 0)
              << DTypeName(dtype) << " rows " << kRows << " tokens " << n << " value " << i << ": "
              << y[i] << " vs " << want[i];
        }
      }
    }
  }
}

// KV rows for the attention kernels: `count` rows of n values, `stride` values apart (the other
// heads of a row sit in between), f32 or f16 bytes, and each row as f32 (what f16 converts to).
struct AttentionRows {
  std::vector<std::byte> bytes;
  std::vector<std::vector<float>> as_f32;
  uint64_t stride_bytes = 0;
};
AttentionRows MakeAttentionRows(bool f16, uint32_t count, uint32_t n, uint32_t stride,
                                std::mt19937& rng) {
  std::normal_distribution<float> nd(0.0f, 1.0f);
  AttentionRows r;
  const uint32_t width = f16 ? 2 : 4;
  r.stride_bytes = uint64_t{stride} * width;
  r.bytes.resize(count * r.stride_bytes);
  for (uint32_t i = 0; i < count; ++i) {
    std::vector<float> row(stride);
    for (float& v : row) v = nd(rng);
    std::byte* at = r.bytes.data() + i * r.stride_bytes;
    if (f16) {
      EXPECT_TRUE(layout::QuantizeRow(DType::kF16, row, ByteSpan(at, r.stride_bytes)).ok());
      EXPECT_TRUE(
          layout::DequantizeRow(DType::kF16, ConstByteSpan(at, r.stride_bytes), row).ok());
    } else {
      std::memcpy(at, row.data(), r.stride_bytes);
    }
    r.as_f32.emplace_back(row.begin(), row.begin() + n);
  }
  return r;
}

// AttentionDotRows is DotF32 row by row times the scale, bit for bit, for f32 and f16 rows: head
// sizes below, at and between multiples of 16 (the scalar tail), runs shorter than, equal to and
// longer than the 16-row groups; nothing past `count` is written. And DotF32 is a dot product
// (against double, to f32 rounding).
TEST(KernelsTest, AttentionDotRowsBitIdenticalToDotF32) {
  std::mt19937 rng(41);
  for (bool f16 : {false, true}) {
    for (uint32_t n : {4u, 8u, 16u, 20u, 48u, 64u, 100u, 128u, 136u}) {
      for (uint32_t count : {1u, 5u, 15u, 16u, 17u, 33u, 40u}) {
        const uint32_t stride = 3 * n + 5;
        const AttentionRows rows = MakeAttentionRows(f16, count, n, stride, rng);
        std::vector<float> q(n);
        std::normal_distribution<float> nd(0.0f, 1.0f);
        for (float& v : q) v = nd(rng);
        const float scale = 1.0f / std::sqrt(static_cast<float>(n));
        std::vector<float> out(count + 3, 7.0f);
        AttentionDotRows(q.data(), rows.bytes.data(), rows.stride_bytes, count, f16, n, scale,
                         out.data());
        for (uint32_t i = 0; i < count; ++i) {
          const float want = DotF32(q.data(), rows.as_f32[i].data(), n) * scale;
          ASSERT_EQ(std::memcmp(&out[i], &want, sizeof(float)), 0)
              << (f16 ? "f16" : "f32") << " n " << n << " count " << count << " row " << i
              << ": " << out[i] << " vs " << want;
          double exact = 0, magnitude = 0;
          for (uint32_t j = 0; j < n; ++j) {
            exact += double{q[j]} * rows.as_f32[i][j];
            magnitude += std::fabs(double{q[j]} * rows.as_f32[i][j]);
          }
          ASSERT_NEAR(out[i], exact * scale, 1e-6 * magnitude * scale + 1e-7);
        }
        for (uint32_t i = count; i < count + 3; ++i) ASSERT_EQ(out[i], 7.0f) << "written past count";
      }
    }
  }
}

// AttentionAxpyRows is AxpyF32 row after row, bit for bit, for f32 and f16 rows: head sizes with
// and without the register-blocked chunks (16 to 128 values on AVX-512, 8 to 64 on AVX2, every
// count of vectors), an 8-value rest and a scalar tail; zero weights among the rows; nothing past
// n is written.
TEST(KernelsTest, AttentionAxpyRowsBitIdenticalToAxpyF32) {
  std::mt19937 rng(43);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (bool f16 : {false, true}) {
    for (uint32_t n :
         {3u, 8u, 16u, 24u, 32u, 40u, 48u, 56u, 64u, 100u, 128u, 136u, 200u, 240u, 264u}) {
      for (uint32_t count : {1u, 7u, 16u, 33u}) {
        const AttentionRows rows = MakeAttentionRows(f16, count, n, 2 * n + 3, rng);
        std::vector<float> a(count);
        for (uint32_t i = 0; i < count; ++i) a[i] = i % 6 == 2 ? 0.0f : nd(rng);
        std::vector<float> y(n + 2);
        for (float& v : y) v = nd(rng);
        std::vector<float> want = y;
        for (uint32_t i = 0; i < count; ++i) AxpyF32(a[i], rows.as_f32[i].data(), want.data(), n);
        AttentionAxpyRows(a.data(), rows.bytes.data(), rows.stride_bytes, count, f16, y.data(), n);
        for (uint32_t j = 0; j < n + 2; ++j) {
          ASSERT_EQ(std::memcmp(&y[j], &want[j], sizeof(float)), 0)
              << (f16 ? "f16" : "f32") << " n " << n << " count " << count << " value " << j
              << ": " << y[j] << " vs " << want[j];
        }
      }
    }
  }
}

// QuantizeActivations writes the layout kernels.h states, value for value as the scalar rule
// (scale = max |x| / 127 per block of 32, q = nearbyint(x / scale), the sums of q and of its two
// halves, scale x the sum), for full blocks (the SIMD path), a partial last block (padded with
// zeros), an all-zero block and ties at .5 (rounded to even).
TEST(KernelsTest, QuantizeActivationsFollowsTheScalarRule) {
  std::mt19937 rng(47);
  std::normal_distribution<float> nd(0.0f, 3.0f);
  for (uint32_t cols : {32u, 96u, 100u, 7u}) {
    const uint32_t tokens = 3, nb = (cols + 31) / 32;
    std::vector<float> x(uint64_t{cols} * tokens);
    for (float& v : x) v = nd(rng);
    for (uint32_t j = 0; j < std::min(cols, 32u); ++j) x[cols + j] = 0.0f;  // token 1, block 0
    // Token 2, block 0: max 127, so the scale is 1 and values k + 0.5 tie.
    if (cols >= 32) {
      for (uint32_t j = 0; j < 32; ++j) x[2 * cols + j] = j == 0 ? 127.0f : (j % 9) - 4.5f;
    }
    std::vector<std::byte> scratch(MatMulScratchBytes(cols, tokens));
    QuantizeActivations(x, cols, tokens, scratch);
    const uint64_t per_token = scratch.size() / tokens;
    for (uint32_t t = 0; t < tokens; ++t) {
      const std::byte* base = scratch.data() + t * per_token;
      const auto* q = reinterpret_cast<const int8_t*>(base);
      const auto* d = reinterpret_cast<const float*>(base + nb * 32);
      const float* sum = d + nb;
      const auto* int_sum = reinterpret_cast<const int32_t*>(sum + nb);
      for (uint32_t b = 0; b < nb; ++b) {
        float amax = 0;
        for (uint32_t j = b * 32; j < std::min(cols, b * 32 + 32); ++j) {
          amax = std::max(amax, std::fabs(x[t * cols + j]));
        }
        const float scale = amax / 127.0f;
        const float inv = scale != 0.0f ? 1.0f / scale : 0.0f;
        int32_t half[2] = {0, 0};
        for (uint32_t j = 0; j < 32; ++j) {
          const uint32_t c = b * 32 + j;
          const int want = c < cols ? static_cast<int>(std::nearbyint(x[t * cols + c] * inv)) : 0;
          ASSERT_EQ(q[c], want) << "cols " << cols << " token " << t << " value " << c;
          half[j / 16] += want;
        }
        ASSERT_EQ(d[b], scale);
        ASSERT_EQ(sum[b], scale * static_cast<float>(half[0] + half[1]));
        ASSERT_EQ(int_sum[b], half[0] + half[1]);
        ASSERT_EQ(int_sum[nb + 2 * b], half[0]);
        ASSERT_EQ(int_sum[nb + 2 * b + 1], half[1]);
      }
    }
    if (cols >= 32) {  // the ties round to even: -3.5 -> -4, -2.5 -> -2, -1.5 -> -2, -4.5 -> -4
      const auto* q = reinterpret_cast<const int8_t*>(scratch.data() + 2 * per_token);
      EXPECT_EQ(q[1], -4);
      EXPECT_EQ(q[2], -2);
      EXPECT_EQ(q[3], -2);
      EXPECT_EQ(q[9], -4);
    }
  }
}

}  // namespace
}  // namespace flashlm::engine
