// KV-cache page layout: how the paged KV cache (cache/kv_page_cache.h) cuts K and V into pages,
// in DRAM and in its spill file on flash. Pure arithmetic on plain values; thread-safe.
//
// The K (and separately the V) cache of one (sequence, layer) is cut into pages of
// `tokens_per_page` = P consecutive positions, token-major: position t's K (or V) for every KV
// head is one row of kv_dim = n_kv_heads x head_dim values in `dtype` (RowBytes(dtype, kv_dim)
// bytes: head h's values at h x head_dim within the row, q8_0 blocks of 32 running across
// heads), rows back to back. Fetching the top-N positions' V rows touches only the pages holding
// them; a page is padded to `alignment_bytes` (page_stride_bytes) so a page is one aligned
// O_DIRECT read, and a single row is an aligned read of the alignment-sized span around it.
// In the spill file, sized for max_sequences x n_layers x max_tokens positions of each kind
// spilled (V always; K too in the K-spill mode), pages are ordered
//   page(kind, seq, layer, i) at
//   (((kind_slot * max_sequences + seq) * n_layers + layer) * pages_per_seq + i) * stride
// where kind_slot is 0 for V and 1 for K, and pages_per_seq = ceil(max_tokens / P). Position t
// of (seq, layer) is row t % P of page t / P. Pages are rewritten while a sequence runs, so
// their XXH3-64 checksums live in the cache's DRAM page table, not in a store catalog.
#ifndef FLASHLM_LAYOUT_VCACHE_LAYOUT_H_
#define FLASHLM_LAYOUT_VCACHE_LAYOUT_H_

#include <cstdint>

#include "layout/dtype.h"
#include "storage/bytes.h"

namespace flashlm::layout {

enum class KvKind : uint8_t { kValue = 0, kKey = 1 };

struct VCacheLayout {
  uint32_t n_layers = 0;
  uint32_t n_kv_heads = 0;
  uint32_t head_dim = 0;
  uint32_t tokens_per_page = 0;  // P
  uint32_t max_tokens = 0;       // capacity per sequence
  uint32_t max_sequences = 1;
  DType dtype = DType::kF16;
  uint64_t alignment_bytes = 4096;

  uint64_t kv_dim() const { return uint64_t{n_kv_heads} * head_dim; }
  uint64_t row_bytes() const { return RowBytes(dtype, kv_dim()); }
  uint64_t page_bytes() const { return uint64_t{tokens_per_page} * row_bytes(); }
  uint64_t page_stride_bytes() const { return AlignUp(page_bytes(), alignment_bytes); }
  uint64_t pages_per_seq() const { return CeilDiv(max_tokens, tokens_per_page); }
  // Pages of one kind over every (sequence, layer).
  uint64_t pages_per_kind() const { return uint64_t{max_sequences} * n_layers * pages_per_seq(); }
  // A dense index of page (kind, seq, layer, i) in [0, kinds x pages_per_kind()).
  // Preconditions: seq < max_sequences, layer < n_layers, page_index < pages_per_seq().
  uint64_t PageIndex(KvKind kind, uint32_t seq, uint32_t layer, uint64_t page_index) const {
    return ((uint64_t{static_cast<uint8_t>(kind)} * max_sequences + seq) * n_layers + layer) *
               pages_per_seq() +
           page_index;
  }
  // Byte offset of a page in the spill file (kinds: 1 for V only, 2 for V and K).
  uint64_t PageOffset(KvKind kind, uint32_t seq, uint32_t layer, uint64_t page_index) const {
    return PageIndex(kind, seq, layer, page_index) * page_stride_bytes();
  }
  uint64_t FileBytes(uint32_t kinds) const {
    return kinds * pages_per_kind() * page_stride_bytes();
  }
  // Byte offset of position `token`'s row of (kind, seq, layer) in the file.
  uint64_t RowOffset(KvKind kind, uint32_t seq, uint32_t layer, uint64_t token) const {
    return PageOffset(kind, seq, layer, token / tokens_per_page) +
           (token % tokens_per_page) * row_bytes();
  }
  // True when every field is usable (non-zero sizes, power-of-two alignment).
  bool valid() const {
    return n_layers && n_kv_heads && head_dim && tokens_per_page && max_tokens && max_sequences &&
           IsPowerOfTwo(alignment_bytes);
  }
};

}  // namespace flashlm::layout

#endif  // FLASHLM_LAYOUT_VCACHE_LAYOUT_H_
