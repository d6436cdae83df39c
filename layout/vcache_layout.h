// V-cache page layout: how the value cache is laid out when it spills to flash (KCache-style
// offloading of V while K stays in DRAM). Defined here for the KV issue; the cache that uses it
// comes later. Pure arithmetic on plain values; thread-safe.
//
// The V cache of one sequence is cut into pages. A page holds `tokens_per_page` consecutive
// tokens of one (layer, kv_head) pair, token-major: token t's head_dim values are one row of
// RowBytes(dtype, head_dim) bytes, rows back to back, so fetching the top-N tokens' V rows of a
// head touches only the pages holding them and a page is one aligned read. Each page is padded
// to `alignment_bytes` (page_stride_bytes). Pages are ordered
//   page(layer, kv_head, page_index) at
//   ((layer * n_kv_heads + kv_head) * pages_per_head + page_index) * page_stride_bytes
// within a V-cache file sized for max_tokens, where pages_per_head = ceil(max_tokens / N).
// Token t of (layer, head) lives in page t / N at row t % N. A page written to flash carries an
// XXH3-64 checksum kept in DRAM by the cache (pages are rewritten, so not in the store catalog).
#ifndef FLASHLM_LAYOUT_VCACHE_LAYOUT_H_
#define FLASHLM_LAYOUT_VCACHE_LAYOUT_H_

#include <cstdint>

#include "layout/dtype.h"
#include "storage/bytes.h"

namespace flashlm::layout {

struct VCacheLayout {
  uint32_t n_layers = 0;
  uint32_t n_kv_heads = 0;
  uint32_t head_dim = 0;
  uint32_t tokens_per_page = 0;  // N
  uint32_t max_tokens = 0;       // capacity per sequence
  DType dtype = DType::kF16;
  uint64_t alignment_bytes = 4096;

  uint64_t row_bytes() const { return RowBytes(dtype, head_dim); }
  uint64_t page_bytes() const { return uint64_t{tokens_per_page} * row_bytes(); }
  uint64_t page_stride_bytes() const { return AlignUp(page_bytes(), alignment_bytes); }
  uint64_t pages_per_head() const {
    return CeilDiv(max_tokens, tokens_per_page);
  }
  uint64_t total_bytes() const {
    return uint64_t{n_layers} * n_kv_heads * pages_per_head() * page_stride_bytes();
  }
  // Preconditions: layer < n_layers, kv_head < n_kv_heads, page_index < pages_per_head().
  uint64_t PageOffset(uint32_t layer, uint32_t kv_head, uint64_t page_index) const {
    return ((uint64_t{layer} * n_kv_heads + kv_head) * pages_per_head() + page_index) *
           page_stride_bytes();
  }
  // Byte offset of token `token`'s V row of (layer, kv_head) in the file.
  uint64_t RowOffset(uint32_t layer, uint32_t kv_head, uint64_t token) const {
    return PageOffset(layer, kv_head, token / tokens_per_page) +
           (token % tokens_per_page) * row_bytes();
  }
  // True when every field is usable (non-zero sizes, power-of-two alignment).
  bool valid() const {
    return n_layers && n_kv_heads && head_dim && tokens_per_page && max_tokens &&
           IsPowerOfTwo(alignment_bytes);
  }
};

}  // namespace flashlm::layout

#endif  // FLASHLM_LAYOUT_VCACHE_LAYOUT_H_
