// Element types of tensors in checkpoints and stores, and the block-quantised formats.
//
// Block formats (GGML-compatible bytes, so GGUF tensors copy through unchanged):
//   q8_0: blocks of 32 values: f16 scale d, then 32 int8 q;  x = d * q.            34 bytes
//   q4_0: blocks of 32 values: f16 scale d, then 16 bytes of nibbles; value j of the block is the
//         low nibble of byte j (j < 16) or the high nibble of byte j-16, x = d * (nibble - 8).  18 bytes
//   q4_K: super-blocks of 256 values (GGML block_q4_K): f16 d, f16 dmin, 12 bytes holding eight
//         6-bit scales sc and eight 6-bit mins m (one pair per sub-block of 32), 128 bytes of
//         nibbles; sub-blocks 2i and 2i+1 share bytes [32i, 32i+32) (low nibble, high nibble).
//         x = d * sc * q - dmin * m.                                                 144 bytes
//   q6_K: super-blocks of 256 values (GGML block_q6_K): 128 bytes of low 4 bits, 64 bytes of high
//         2 bits, 16 int8 scales (one per 16 values), f16 d. x = d * sc * (q - 32).  210 bytes
// A row whose length does not divide into blocks is stored as ceil(n / BlockValues) blocks, the
// tail zero-padded: RowBytes() accounts for that. QuantizeRow's q4_K / q6_K quantisers are this
// project's own (one pass, no search): same bytes format as GGML's, not the same bytes as
// llama-quantize would write. Stateless, thread-safe.
#ifndef FLASHLM_LAYOUT_DTYPE_H_
#define FLASHLM_LAYOUT_DTYPE_H_

#include <cstdint>
#include <optional>
#include <span>
#include <string_view>

#include "storage/bytes.h"
#include "storage/status.h"

namespace flashlm::layout {

// Values are stable: they are written into store catalogs.
enum class DType : uint8_t {
  kF32 = 0,
  kF16 = 1,
  kBF16 = 2,
  kQ8_0 = 3,
  kQ4_0 = 4,
  kQ4_K = 5,
  kQ6_K = 6,
};

inline constexpr uint32_t kQBlockValues = 32;   // values per q8_0 / q4_0 block
inline constexpr uint32_t kKBlockValues = 256;  // values per q4_K / q6_K super-block

// Values per block: 32 (q8_0, q4_0), 256 (q4_K, q6_K), 1 for the element types. A slice of a row
// that starts at a multiple of this is itself a row of the dtype (RowBytes of the prefix away).
uint32_t BlockValues(DType t);

// "f32", "f16", "bf16", "q8_0", "q4_0", "q4_K", "q6_K".
std::string_view DTypeName(DType t);
// Parses the names above. Errors: InvalidArgument naming the unknown string.
Result<DType> ParseDType(std::string_view name);

// Bytes that one row of `n_values` elements takes in `t` (block formats round up to whole blocks).
uint64_t RowBytes(DType t, uint64_t n_values);

// Converts one row of `t` to f32. `src` holds RowBytes(t, out.size()) bytes.
// Errors: InvalidArgument when src is too short.
Status DequantizeRow(DType t, ConstByteSpan src, std::span<float> out);

// Converts one f32 row into `t` (any dtype). `dst` holds RowBytes(t, src.size()).
// Errors: InvalidArgument when dst is too short.
Status QuantizeRow(DType t, std::span<const float> src, ByteSpan dst);

float F16ToF32(uint16_t h);
uint16_t F32ToF16(float f);  // round to nearest even
float BF16ToF32(uint16_t h);
uint16_t F32ToBF16(float f);  // round to nearest even

// Sub-block j's (0..7) 6-bit scale and min from a q4_K super-block's 12 packed bytes `q` (bytes
// 4..15 of the block): GGML's layout. The one unpacking every q4_K reader shares.
inline void ScaleMinK4(int j, const uint8_t* q, uint8_t& sc, uint8_t& m) {
  if (j < 4) {
    sc = q[j] & 63;
    m = q[j + 4] & 63;
  } else {
    sc = (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4);
    m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

}  // namespace flashlm::layout

#endif  // FLASHLM_LAYOUT_DTYPE_H_
