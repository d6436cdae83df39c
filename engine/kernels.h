// Kernels of the forward pass: matrix-vector and small matrix-matrix products over weight
// matrices in f32, f16, bf16, q8_0, q4_0, q4_K and q6_K, plus the element-wise pieces (RMSNorm,
// softmax, SwiGLU).
//
// Weights are read through MatrixView (bytes in the matrix's own dtype, rows back to back,
// RowBytes(dtype, cols) per row; block formats zero-pad the last block of each row).
// For q8_0, q4_0, q4_K and q6_K, the activations are first quantised to q8 blocks (one f32 scale
// per 32 values) and the products are int8 dot products, as llama.cpp does (which quantises
// activations against q4_K / q6_K in blocks of 256; ours stay at 32, one block per q4_K
// sub-block and per pair of q6_K sub-blocks, so every block product is scaled in f32). q4_K's
// min term uses each activation block's precomputed sum. Each product has an AVX2
// path (with AVX-VNNI / AVX512-VNNI on 256-bit vectors when the compiler targets it) and a
// portable scalar fallback; all use the same block arithmetic, so results differ only in f32
// summation order.
//
// Batches (prefill) of f32, f16 and bf16 go through a blocked GEMM instead: weight panels of
// about 640 KiB (kept in L2 while every token passes), 1024-column chunks, and register tiles
// (AVX-512: 4 rows x 6 tokens on zmm; AVX2: 2 rows x 3 tokens, each sum two ymm halves). f32
// results are bit-identical to the one-token path for every token, batch size, position in the
// batch and thread count (the tile reduces exactly as the single row does). A loaded checkpoint's
// f32 matrices are kept in strips (AVX-512 builds, widths a multiple of 256; InterleaveStrips):
// rows 2 at a time in 256-column pieces, so that one token's decode reads one stream and each 1 KiB
// of activations serves two rows from L1, each row summing as a row-major row does (the same bits).
// q8_0 and q4_0 with AVX512-VNNI (prefill and decode) work on strips of 16 rows, one zmm lane per
// row: each block of the 16 rows is transposed in registers (4 value bytes per lane; q4_0's
// nibbles as they are, q8_0's bytes + 128), so vpdpbusd multiplies 16 rows by 4 broadcast
// activation bytes and the f32 scaling runs once per block for 16 rows. Prefill packs 32 blocks
// of a strip at a time (18 KiB on the stack, reused by every token 8 at a time); decode uses each
// transposed block at once and prefetches ahead. Each row accumulates its blocks in order with
// one FMA per block (f32(block dot) x (dw x dx)), so results do not depend on the batch, the row
// range asked for, or the thread count either. q8_0 batches on a CPU with AMX-INT8 take the block
// dots of each whole group of 16 tokens from tile multiplies (16 tokens x 16 rows x one block a
// tile op) and then the same f32 steps, so the same results (SetAmx). A matrix kept interleaved
// in strips (InterleaveStrips, as a loaded checkpoint's are) is read with vector loads instead of
// transposes, with the same lanes and operations, so the same results.
// AVX2 builds without 512-bit VNNI take q4_0, q8_0, q4_K and q6_K the same way 8 rows a ymm
// (vpmaddubsw, or vpdpbusd with AVX-VNNI; each half of a 16-row interleaved strip, both at once
// in decode, or 8 row-major rows transposed), so there too their results do not depend on the
// batch, the rows asked for or the thread count.
// q4_K with AVX512-VNNI takes the same 16-row strips (decode and prefill, tokens 4 at a time),
// its 32-byte quarters transposed as q4_0's blocks and its 6-bit scales and mins unpacked per
// lane; batch-independent likewise. q6_K too: per half super-block its low-bit and high-bit
// bytes are transposed and combined into 6-bit values, each 16-value half of a block with its
// own int32 accumulator (its own scale). Interleaved q4_K / q6_K strips are read likewise.
//
// All functions are thread-compatible; MatMul uses the pool and must be called from its owner.
// Nothing here allocates: callers pass scratch sized at start-up.
#ifndef FLASHLM_ENGINE_KERNELS_H_
#define FLASHLM_ENGINE_KERNELS_H_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <span>

#include "engine/thread_pool.h"
#include "layout/dtype.h"
#include "storage/bytes.h"

namespace flashlm::engine {

// A weight matrix {rows = out_features, cols = in_features} in its own dtype.
// `bytes` holds rows * RowBytes(dtype, cols) bytes; the view is valid while the owner keeps it
// (see WeightStore: until the layer is released).
struct MatrixView {
  layout::DType dtype = layout::DType::kF32;
  uint32_t rows = 0;
  uint32_t cols = 0;
  ConstByteSpan bytes;
  // q8_0, q4_0, q4_K, q6_K: the rows are interleaved 16 at a time (InterleaveStrips), as MatMul's
  // strip kernels read them (512-bit VNNI, and AVX2 without it); f32: in groups of 2
  // rows by 256-column pieces. row(r) is then not row r, and only MatMul / MatMulRows (row ranges
  // starting on a multiple of 16) may read the bytes. Set by whoever interleaved them.
  bool strips = false;
  uint64_t row_bytes() const { return layout::RowBytes(dtype, cols); }
  ConstByteSpan row(uint32_t r) const { return bytes.subspan(r * row_bytes(), row_bytes()); }
};

// Whether this build's MatMul reads a matrix of this dtype and shape interleaved in 16-row
// strips (rows a multiple of 16; 512-bit VNNI kernels: q8_0 and q4_0 with an even number of
// 32-value blocks a row, q4_K and q6_K of any width; AVX2 without them: the same; AVX-512: f32
// with a multiple of 256 columns).
bool CanInterleaveStrips(layout::DType dtype, uint32_t rows, uint32_t cols);

// Rewrites a row-major matrix (rows x cols, `bytes` its rows * RowBytes bytes) in place into
// 16-row strips; strip s keeps the byte range its rows had (16 * RowBytes from 16s * RowBytes),
// and within it lane i of every 64-byte vector belongs to row 16s + i:
// - q4_0 / q8_0: each pair of blocks (b, b + 1) is 576 / 1088 bytes: block b's 4 / 8 vectors
//   (vector k's 4-byte lane i = row i's nibble / value bytes 4k .. 4k + 3 of block b), block
//   b + 1's, then block b's 16 f16 scales (row order) and block b + 1's. (A q8_0 block's 8
//   vectors are also the operand layout of an AMX tile multiply.)
// - q4_K / q6_K (super-blocks of B = 144 / 210 bytes, nsb a row): super-block j's B / 16 groups
//   of 16 bytes come first, 256 bytes a group and 16 * (B / 16) * 16 bytes a super-block, from
//   j * 16 * (B / 16) * 16 on: group g's vector k has row i's bytes 16g + 4k .. 16g + 4k + 3 of
//   the super-block in lane i. Then the bytes past the last whole group (q6_K: each row's f16
//   d, B % 16 = 2 bytes), super-block by super-block, row order: 16 * (B % 16) bytes each.
// - f32: each 16-row strip is 8 groups of 2 rows (2 * RowBytes each, in row order); group g
//   holds its rows' columns [256k, 256k + 256) for k = 0, 1, ... in turn, 1 KiB a row in row
//   order: row i's column c at float (c / 256) * 512 + 256i + c % 256 of the group.
// So a decode step reads each strip front to back with vector loads and no transposes.
// Precondition (CHECKed): CanInterleaveStrips. Allocates one strip's bytes (load time only).
// The view that reads the result sets `strips`.
void InterleaveStrips(layout::DType dtype, uint32_t rows, uint32_t cols, ByteSpan bytes);

// `view` over `bytes` (its row-major bytes, writable) rewritten into strips when this build reads
// its dtype and shape so (CanInterleaveStrips), with `strips` set; otherwise `view` unchanged.
// For matrices that only MatMul will read, at load time: every loader of resident matrices
// (DramWeightStore, a store's pinned attention layers and classifier) goes through it.
MatrixView KeepInStrips(const MatrixView& view, ByteSpan bytes);

// Whether q8_0 batches (each whole group of 16 tokens) may take their block products from Intel
// AMX tile multiplies, where the CPU has AMX-INT8 and Linux grants the process the tile state
// (asked once). Results are bit-identical either way; tests and benchmarks turn it off to compare
// the paths, and FLASHLM_AMX=0 in the environment turns it off for the whole process. Returns
// whether AMX is used from now on. Thread-safe; allowed by default.
bool SetAmx(bool allowed);

// True for dtypes MatMul handles (f32, f16, bf16, q8_0, q4_0, q4_K, q6_K).
bool MatMulSupports(layout::DType dtype);

// Bytes of scratch MatMul needs to quantise `n_tokens` activation rows of `cols` values.
uint64_t MatMulScratchBytes(uint32_t cols, uint32_t n_tokens);

// y[t][r] = sum_c W[r][c] * x[t][c] for t < n_tokens, r < rows. x is n_tokens x cols (f32,
// row-major), y is n_tokens x w.rows. `scratch` holds MatMulScratchBytes(cols, n_tokens) bytes,
// 64-byte aligned. Preconditions (CHECKed): MatMulSupports(w.dtype), sizes as stated.
void MatMul(const MatrixView& w, std::span<const float> x, uint32_t n_tokens, std::span<float> y,
            ByteSpan scratch, ThreadPool& pool);

// MatMul of up to kMaxSharedMatrices matrices with the same columns against the same x (q, k and
// v; gate and up): y[m] as MatMul(*w[m], x, n_tokens, y[m], ...) gives it, bit for bit, with x
// quantised once and one ParallelFor over all the matrices' rows, so the threads meet once
// instead of once a matrix.
inline constexpr uint32_t kMaxSharedMatrices = 4;
void MatMulShared(std::span<const MatrixView* const> w, std::span<const float> x, uint32_t n_tokens,
                  std::span<const std::span<float>> y, ByteSpan scratch, ThreadPool& pool);

// Same as MatMul, restricted to rows [row_begin, row_end) of W, single-threaded; y is n_tokens x
// w.rows and only those rows are written. Used by MatMul per thread, and by sparse FFN paths.
void MatMulRows(const MatrixView& w, std::span<const float> x, uint32_t n_tokens,
                ConstByteSpan quantized_x, uint32_t row_begin, uint32_t row_end,
                std::span<float> y);

// out[k * n_tokens + t] = (row k) . (token t) for k < rows.size(), t < n_tokens, where row k is
// `cols` values of `dtype` at rows[k] (RowBytes(dtype, cols) bytes, anywhere in memory: the gate
// and up rows of neuron bundles). x and quantized_x as for MatMulRows. Every result is
// bit-identical to MatMulRows's for a matrix holding that row (any batch, any row range). Rows go
// in the given order; q8_0, q4_0, q4_K and q6_K rows 16 at a time as one strip of MatMul's strip
// kernels (one lane a row; a single row would fill all 16 lanes with itself); other dtypes row
// by row through MatMulRows. `ahead` (optional): memory the caller reads next (the next bundles),
// prefetched into L2 in step with the strip kernels' reads so that it arrives while they compute
// (rows taken row by row ignore it). Precondition (CHECKed): MatMulSupports(dtype).
// Single-threaded, allocates nothing.
void DotRows(layout::DType dtype, uint32_t cols, std::span<const std::byte* const> rows,
             std::span<const float> x, uint32_t n_tokens, ConstByteSpan quantized_x, float* out,
             ConstByteSpan ahead = {});

// Quantises n_tokens rows of x (cols each) into the q8 scratch layout that MatMulRows expects
// for block dtypes (per token: ceil(cols/32) blocks of 32 int8, then the f32 scales, then per
// block the scale times the sum of its int8 values, then per block the int32 sum of its int8
// values, then per block the int32 sums of its two halves of 16).
void QuantizeActivations(std::span<const float> x, uint32_t cols, uint32_t n_tokens,
                         ByteSpan scratch);

// Scalar reference: one dot product of row r of W with x (dequantising W to f32 exactly).
// Tests use it; it is independent of the SIMD and q8 activation paths.
double ReferenceDot(const MatrixView& w, uint32_t r, std::span<const float> x);

// out = x * w / rms(x), rms = sqrt(mean(x^2) + eps).
void RmsNorm(std::span<const float> x, std::span<const float> w, float eps, std::span<float> out);
// In-place softmax. With AVX2 or AVX-512, e^(x - max) by a degree-7 polynomial (within 3e-7
// relative of exp, denormals below e^-87, 0 below -103) summed in 8 or 16 float lanes; without,
// std::exp summed in double. -inf weighs exactly 0.
void Softmax(std::span<float> x);
// silu(g) = g / (1 + e^-g), as g x sigmoid(g) with the sigmoid taken from e^-|g| (1 / (1 + e) for
// g >= 0, e / (1 + e) below), e^-|g| by the softmax's polynomial (within 3e-7 relative of exp;
// 0 below -103). Within a few ulps of the exact value; SwiGlu's SIMD lanes give its bits exactly.
float Silu(float g);
// x[i] = act(x[i]) * up[i], act = Silu or relu. Each element's result depends on its own gate
// and up values alone (not on its place in the span or the span's length): the same bits whether
// a neuron's h is computed alone or with a layer's.
void SwiGlu(std::span<float> gate, std::span<const float> up, bool relu);
// |act(g)|, computed as SwiGlu computes act: what the threshold sparsity compares to its cut.
inline float ActivationMagnitude(float g, bool relu) {
  return relu ? std::max(g, 0.0f) : std::fabs(Silu(g));
}
// Dot product of two f32 vectors (SIMD).
float DotF32(const float* a, const float* b, uint32_t n);
// y += a * x.
void AxpyF32(float a, const float* x, float* y, uint32_t n);
// Attention over a run of `count` KV rows (row i at rows + i * stride_bytes, n values, f32 or,
// with `f16`, IEEE half). AttentionDotRows: out[i] = DotF32(q, x_i, n) * scale, bit for bit, where
// x_i is row i as f32 (f16 converts exactly). AttentionAxpyRows: for i = 0, 1, ... count - 1 in
// turn, AxpyF32(a[i], x_i, y, n), bit for bit (every y value takes the same fused terms in the
// same order). On AVX-512 the dot products run 16 rows at a time (16 independent FMA chains,
// one transposed reduction that adds the same lanes as DotF32's), otherwise row by row; y stays
// in registers across the rows, up to 128 values (AVX-512) or 64 (AVX2) at a time.
// Single-threaded, allocates nothing.
void AttentionDotRows(const float* q, const std::byte* rows, uint64_t stride_bytes, uint32_t count,
                      bool f16, uint32_t n, float scale, float* out);
void AttentionAxpyRows(const float* a, const std::byte* rows, uint64_t stride_bytes,
                       uint32_t count, bool f16, float* y, uint32_t n);
// y[t][0..len) += a[t] * v[0..len) for t < n_tokens, where v is `len` values of one weight row
// stored in `dtype` at `w` (RowBytes(dtype, len) bytes; for block dtypes the slice starts at a
// multiple of layout::BlockValues(dtype) — 256 for q4_K / q6_K — and a partial last block is
// zero-padded). y's rows are y_stride floats apart.
// Tokens with a[t] == 0 are skipped (exact for finite weights). Each value is dequantised exactly
// as layout::DequantizeRow does (no q8 rounding of a or y). The neuron-bundle FFN uses it for down
// columns.
// Precondition (CHECKed): MatMulSupports(dtype). Single-threaded, allocates nothing.
void AxpyRow(layout::DType dtype, const std::byte* w, uint32_t len, const float* a,
             uint32_t n_tokens, float* y, uint64_t y_stride);

// For k = 0, 1, ... rows.size() - 1 in turn: AxpyRow(dtype, rows[k] + offset, len,
// a + k * a_stride, n_tokens, y, y_stride). Bit-identical to those calls (every y value takes the
// same fused terms in the same order, zero coefficients skipped alike). The neuron-bundle FFN's
// down pass. On AVX-512: one token of q8_0 / q4_0 / q4_K / q6_K reads the rows front to back, a
// few at a time, y in L1, while it asks for the next few rows' bytes (so hand it every row of a
// pass in one call rather than in pieces). Several tokens of q8_0 / q4_0 keep 16 values of up to
// 16 tokens (9 or more) or 32 values of up to 8 in registers across the rows; q4_K / q6_K
// dequantise a super-block of 16 rows at a time into L1 and add it to y 64 values of up to 6
// tokens at a time, in registers. Other cases (f32, f16; AVX2) go row by row, each row's slice
// prefetched a few rows ahead, or (AVX2) 4 tokens at a time a block at a time. The block tiles
// (AVX-512 and AVX2) ask for each row's next block during their first pass over a block.
// `block_stride` (0: the blocks of a row back to back) is the bytes from one block of a row (32
// values; 256 for q4_K / q6_K) to its next, where rows are interleaved block by block
// (DownLayout): block b of row k is then at rows[k] + offset + b * block_stride, and len must
// be whole blocks. One token's sweep over a whole group of interleaved rows, followed by
// another, asks for nothing ahead (the hardware follows the single stream).
// Precondition (CHECKed): MatMulSupports(dtype). Single-threaded, allocates nothing.
// AxpyBlockValues(dtype): the values in one block of a row as AxpyRows counts them (32 for q8_0,
// q4_0 and the element types, 256 for q4_K / q6_K): `block_stride` steps over these, and a
// caller cutting rows into pieces for AxpyRows cuts them at multiples of it.
uint32_t AxpyBlockValues(layout::DType dtype);
// ReadsInterleavedRows(dtype): whether this build's register kernels take interleaved rows of
// `dtype` (AVX-512: q8_0, q4_0, q4_K, q6_K); other builds and dtypes read them a block at a time.
bool ReadsInterleavedRows(layout::DType dtype);
void AxpyRows(layout::DType dtype, std::span<const std::byte* const> rows, uint64_t offset,
              uint32_t len, const float* a, uint64_t a_stride, uint32_t n_tokens, float* y,
              uint64_t y_stride, uint64_t block_stride = 0);

}  // namespace flashlm::engine

#endif  // FLASHLM_ENGINE_KERNELS_H_
