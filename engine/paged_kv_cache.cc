#include "engine/paged_kv_cache.h"

#include <algorithm>
#include <cstring>
#include <limits>

#include "storage/check.h"

namespace flashlm::engine {

using layout::KvKind;

Result<layout::VCacheLayout> PagedKvCache::Layout(const layout::ModelConfig& c,
                                                  uint32_t max_positions, uint32_t max_sequences,
                                                  const KvOptions& o) {
  if (o.dtype != layout::DType::kF32 && o.dtype != layout::DType::kF16 &&
      o.dtype != layout::DType::kQ8_0) {
    return InvalidArgumentError("--kv-dtype must be f32, f16 or q8_0, not " +
                                std::string(layout::DTypeName(o.dtype)));
  }
  if (o.page_tokens == 0 || o.page_tokens > kKvPageTokensMax) {
    return InvalidArgumentError("--kv-page-tokens must be 1.." + std::to_string(kKvPageTokensMax) +
                                ", not " + std::to_string(o.page_tokens));
  }
  layout::VCacheLayout l;
  l.n_layers = c.n_layers;
  l.n_kv_heads = c.n_kv_heads;
  l.head_dim = c.head_dim;
  l.tokens_per_page = o.page_tokens;
  l.max_tokens = max_positions;
  l.max_sequences = max_sequences;
  l.dtype = o.dtype;
  l.alignment_bytes = 4096;
  if (!l.valid()) return InvalidArgumentError("KV cache: zero size");
  return l;
}

uint64_t PagedKvCache::BytesNeeded(const layout::VCacheLayout& l, uint64_t pool_bytes,
                                   bool fetch_rows) {
  return cache::KvPageCache::ResidentBytes(l, pool_bytes, fetch_rows) +
         uint64_t{l.max_sequences} * sizeof(uint32_t);
}

uint64_t PagedKvCache::BytesNeeded(const layout::VCacheLayout& l, uint64_t pool_bytes,
                                   const KvOptions& o) {
  const uint64_t bounds =
      o.select_pages ? l.pages_per_kind() * (2 * l.kv_dim() * sizeof(float) + sizeof(uint32_t)) +
                           l.kv_dim() * sizeof(float)
                     : 0;
  return cache::KvPageCache::ResidentBytes(l, pool_bytes, o.fetch_rows, o.spill_keys) +
         uint64_t{l.max_sequences} * sizeof(uint32_t) + bounds;
}

uint64_t PagedKvCache::MinimumPoolBytes(const layout::VCacheLayout& l, const KvOptions& o) {
  return cache::KvPageCache::MinimumPoolBytes(l, o.spill_keys);
}

Result<std::unique_ptr<PagedKvCache>> PagedKvCache::Create(
    const layout::ModelConfig& c, uint32_t max_positions, uint32_t max_sequences,
    const KvOptions& o, uint64_t pool_bytes, storage::BackendKind backend, bool direct) {
  std::unique_ptr<PagedKvCache> kv(new PagedKvCache());
  ASSIGN_OR_RETURN(kv->layout_, Layout(c, max_positions, max_sequences, o));
  if (o.spill_keys && !o.select_pages) {
    return InvalidArgumentError(
        "--kv-spill kv needs --kv-select pages (exact attention reads every K row every token)");
  }
  cache::KvPageCacheOptions po;
  po.layout = kv->layout_;
  po.pool_bytes = pool_bytes;
  po.spill_dir = o.spill_dir;
  po.backend = backend;
  po.direct = direct;
  po.fetch_rows = o.fetch_rows;
  po.spill_keys = o.spill_keys;
  ASSIGN_OR_RETURN(kv->pages_, cache::KvPageCache::Create(po));
  kv->lengths_.assign(max_sequences, 0);
  if (o.select_pages) {
    const uint64_t pages = kv->layout_.pages_per_kind();
    kv->key_bounds_.assign(pages * 2 * kv->layout_.kv_dim(), 0.0f);
    kv->bound_rows_.assign(pages, 0);
    kv->row_scratch_.assign(kv->layout_.kv_dim(), 0.0f);
  }
  kv->resident_bytes_ = BytesNeeded(kv->layout_, pool_bytes, o);
  return kv;
}

void PagedKvCache::SetLength(uint32_t seq, uint32_t length) {
  CHECK_LT(seq, layout_.max_sequences);
  CHECK_LE(length, layout_.max_tokens);
  if (length < lengths_[seq]) pages_->Truncate(seq, length);
  lengths_[seq] = length;
}

template <typename PutK, typename PutV>
Status PagedKvCache::WriteRows(uint32_t layer, uint32_t seq, uint32_t pos, const PutK& put_k,
                               const PutV& put_v) {
  // Writing below the length rewinds the sequence: pages past it are dropped first (the first
  // layer's write does it; the others then write at the new length).
  if (pos < lengths_[seq]) SetLength(seq, pos);
  const uint32_t P = layout_.tokens_per_page;
  const uint64_t page = pos / P, row = pos % P, row_bytes = layout_.row_bytes();
  ASSIGN_OR_RETURN(ByteSpan kp, pages_->PageForWrite(KvKind::kKey, seq, layer, page));
  RETURN_IF_ERROR(put_k(kp.subspan(row * row_bytes, row_bytes)));
  if (!key_bounds_.empty()) {
    RETURN_IF_ERROR(FoldKeyBounds(layer, seq, page, static_cast<uint32_t>(row), kp));
  }
  RETURN_IF_ERROR(
      pages_->MarkRowWritten(KvKind::kKey, seq, layer, page, static_cast<uint32_t>(row)));
  ASSIGN_OR_RETURN(ByteSpan vp, pages_->PageForWrite(KvKind::kValue, seq, layer, page));
  RETURN_IF_ERROR(put_v(vp.subspan(row * row_bytes, row_bytes)));
  return pages_->MarkValueRowWritten(seq, layer, page, static_cast<uint32_t>(row));
}

Status PagedKvCache::FoldKeyBounds(uint32_t layer, uint32_t seq, uint64_t page, uint32_t row,
                                   ConstByteSpan page_bytes) {
  const uint64_t kv_dim = layout_.kv_dim(), rb = layout_.row_bytes();
  const uint64_t b = BoundIndex(layer, seq, page);
  float* lo = key_bounds_.data() + b * 2 * kv_dim;
  float* hi = lo + kv_dim;
  // The bounds hold rows [0, bound_rows_[b]); after a rewind into this page they may hold rows
  // at and beyond `row`, which are gone: rebuilt from the rows kept (so the bounds depend only
  // on the rows the page holds, never on its history).
  uint32_t first = row;
  if (bound_rows_[b] != row) {
    std::fill(lo, lo + kv_dim, std::numeric_limits<float>::infinity());
    std::fill(hi, hi + kv_dim, -std::numeric_limits<float>::infinity());
    first = 0;
  } else if (row == 0) {
    std::fill(lo, lo + kv_dim, std::numeric_limits<float>::infinity());
    std::fill(hi, hi + kv_dim, -std::numeric_limits<float>::infinity());
  }
  for (uint32_t r = first; r <= row; ++r) {
    // The values Keys() gives attention: the stored row decoded (f16 / q8_0 rounding included).
    RETURN_IF_ERROR(
        layout::DequantizeRow(layout_.dtype, page_bytes.subspan(r * rb, rb), row_scratch_));
    for (uint64_t i = 0; i < kv_dim; ++i) {
      lo[i] = std::min(lo[i], row_scratch_[i]);
      hi[i] = std::max(hi[i], row_scratch_[i]);
    }
  }
  bound_rows_[b] = row + 1;
  return Status::Ok();
}

std::span<const float> PagedKvCache::KeyPageBounds(uint32_t layer, uint32_t seq,
                                                   uint64_t page) const {
  CHECK(!key_bounds_.empty());
  const uint64_t b = BoundIndex(layer, seq, page);
  CHECK_GT(bound_rows_[b], 0u);
  return std::span<const float>(key_bounds_.data() + b * 2 * layout_.kv_dim(),
                                2 * layout_.kv_dim());
}

Status PagedKvCache::FetchPages(uint32_t layer, uint32_t seq, uint32_t length,
                                std::span<const uint8_t> pages_needed) {
  CHECK_EQ(pages_needed.size(), CeilDiv(length, layout_.tokens_per_page));
  RETURN_IF_ERROR(pages_->FetchPages(KvKind::kValue, seq, layer, pages_needed));
  // The V pins stay when K fails: ReleaseValues (the caller's, on any error) drops them all.
  return pages_->FetchPages(KvKind::kKey, seq, layer, pages_needed);
}

Status PagedKvCache::Write(uint32_t layer, uint32_t seq, uint32_t pos, std::span<const float> k,
                           std::span<const float> v) {
  if (layer >= layout_.n_layers || seq >= layout_.max_sequences || pos >= layout_.max_tokens ||
      k.size() != layout_.kv_dim() || v.size() != layout_.kv_dim()) {
    return InvalidArgumentError("KV cache: write out of range");
  }
  const auto put_k = [&](ByteSpan out) { return layout::QuantizeRow(layout_.dtype, k, out); };
  const auto put_v = [&](ByteSpan out) { return layout::QuantizeRow(layout_.dtype, v, out); };
  return WriteRows(layer, seq, pos, put_k, put_v);
}

Status PagedKvCache::Fill(uint32_t layer, uint32_t seq, uint32_t pos, std::span<const float> k,
                          std::span<const float> v) {
  if (layer >= layout_.n_layers || seq >= layout_.max_sequences || pos >= layout_.max_tokens ||
      k.size() != layout_.kv_dim() || v.size() != layout_.kv_dim()) {
    return InvalidArgumentError("KV cache: fill out of range");
  }
  const uint32_t P = layout_.tokens_per_page;
  const uint64_t page = pos / P, row = pos % P, row_bytes = layout_.row_bytes();
  // K first: the row, then (with page selection) the page's bounds from its bytes, before a K
  // page that spills is written back to flash.
  RETURN_IF_ERROR(pages_->FillRow(
      KvKind::kKey, seq, layer, page, static_cast<uint32_t>(row), [&](ByteSpan out) {
        RETURN_IF_ERROR(
            layout::QuantizeRow(layout_.dtype, k, out.subspan(row * row_bytes, row_bytes)));
        if (key_bounds_.empty()) return Status::Ok();
        return FillKeyBounds(layer, seq, page, static_cast<uint32_t>(row), out);
      }));
  return pages_->FillValueRow(seq, layer, page, static_cast<uint32_t>(row), [&](ByteSpan out) {
    return layout::QuantizeRow(layout_.dtype, v, out.subspan(row * row_bytes, row_bytes));
  });
}

Status PagedKvCache::FillKeyBounds(uint32_t layer, uint32_t seq, uint64_t page, uint32_t row,
                                   ConstByteSpan page_bytes) {
  const uint64_t kv_dim = layout_.kv_dim(), rb = layout_.row_bytes();
  const uint64_t b = BoundIndex(layer, seq, page);
  float* lo = key_bounds_.data() + b * 2 * kv_dim;
  float* hi = lo + kv_dim;
  // Rebuilt over rows [0, max(rows folded, row + 1)): the row may fall below or beyond the rows
  // already in the bounds (a revived position of a page whose later rows that layer computed),
  // and the bounds then cover every row the page holds. Rows in that range that the layer never
  // computed (pruned positions: zeros, or stale rows of an earlier sequence) are folded too,
  // which only loosens the bound, as Write's rebuild does.
  const uint32_t rows = std::max(bound_rows_[b], row + 1);
  std::fill(lo, lo + kv_dim, std::numeric_limits<float>::infinity());
  std::fill(hi, hi + kv_dim, -std::numeric_limits<float>::infinity());
  for (uint32_t r = 0; r < rows; ++r) {
    RETURN_IF_ERROR(
        layout::DequantizeRow(layout_.dtype, page_bytes.subspan(r * rb, rb), row_scratch_));
    for (uint64_t i = 0; i < kv_dim; ++i) {
      lo[i] = std::min(lo[i], row_scratch_[i]);
      hi[i] = std::max(hi[i], row_scratch_[i]);
    }
  }
  bound_rows_[b] = rows;
  return Status::Ok();
}

Status PagedKvCache::WriteEncoded(uint32_t layer, uint32_t seq, uint32_t pos, ConstByteSpan k,
                                  ConstByteSpan v) {
  if (layer >= layout_.n_layers || seq >= layout_.max_sequences || pos >= layout_.max_tokens ||
      k.size() != layout_.row_bytes() || v.size() != layout_.row_bytes()) {
    return InvalidArgumentError("KV cache: write out of range");
  }
  const auto put_k = [&](ByteSpan out) {
    std::memcpy(out.data(), k.data(), k.size());
    return Status::Ok();
  };
  const auto put_v = [&](ByteSpan out) {
    std::memcpy(out.data(), v.data(), v.size());
    return Status::Ok();
  };
  return WriteRows(layer, seq, pos, put_k, put_v);
}

KvRows PagedKvCache::Rows(KvKind kind, uint32_t layer, uint32_t seq, uint32_t first,
                          uint32_t count) const {
  CHECK_LE(uint64_t{first} + count, layout_.max_tokens);
  const uint32_t P = layout_.tokens_per_page;
  const uint32_t row = first % P;
  const std::byte* page = pages_->PageData(kind, seq, layer, first / P);
  return KvRows{page + uint64_t{row} * layout_.row_bytes(), layout_.row_bytes(),
                std::min(count, P - row), layout_.dtype};
}

KvRows PagedKvCache::Keys(uint32_t layer, uint32_t seq, uint32_t first, uint32_t count) const {
  return Rows(KvKind::kKey, layer, seq, first, count);
}

KvRows PagedKvCache::Values(uint32_t layer, uint32_t seq, uint32_t first, uint32_t count) const {
  return Rows(KvKind::kValue, layer, seq, first, count);
}

Status PagedKvCache::FetchValues(uint32_t layer, uint32_t seq, uint32_t length) {
  const uint64_t pages = CeilDiv(length, layout_.tokens_per_page);
  RETURN_IF_ERROR(pages_->FetchValues(seq, layer, 0, pages));
  if (!pages_->spill_keys()) return Status::Ok();
  // Exact attention (e.g. a prefill) over a cache whose K spills reads every K page back too.
  // The scratch mask is every page: FetchPages of all of them.
  return pages_->FetchKeys(seq, layer, 0, pages);
}

Status PagedKvCache::FetchValuePositions(uint32_t layer, uint32_t seq, uint32_t length,
                                         std::span<const uint8_t> needed) {
  CHECK_EQ(needed.size(), length);
  return pages_->FetchValues(seq, layer, 0, CeilDiv(length, layout_.tokens_per_page), needed);
}

}  // namespace flashlm::engine
