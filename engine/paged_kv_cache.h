// PagedKvCache: the KvCache of a budgeted session. Rows live in pages of P positions (K and V
// apart, token-major, layout/vcache_layout.h) in the DRAM pool of a cache::KvPageCache, in f32,
// f16 or q8_0; V pages spill to a file on flash when the pool is smaller than the context needs
// (checksummed, read back through a storage::ReadBackend; see cache/kv_page_cache.h).
//
// Keys()/Values() return at most the rest of one page. With f32 rows every value is stored
// exactly, and attention reads them through KvDot/KvAxpy = DotF32/AxpyF32 in position order, so
// an f32 paged cache gives bit-identical results to FlatKvCache whatever the page size, the pool
// or the spilling. f16 rounds each value to nearest-even half precision (relative error <=
// 2^-11); q8_0 stores blocks of 32 values as an f16 scale d = max|x|/127 and round(x/d) int8
// (absolute error <= d/2 per value, plus the scale's rounding).
// Memory: everything is allocated by Create (BytesNeeded); Write/Keys/Values/FetchValues/
// SetLength allocate nothing. Threading as KvCache.
#ifndef FLASHLM_ENGINE_PAGED_KV_CACHE_H_
#define FLASHLM_ENGINE_PAGED_KV_CACHE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "cache/kv_page_cache.h"
#include "engine/kv_cache.h"
#include "layout/dtype.h"
#include "layout/model_config.h"
#include "storage/read_backend.h"
#include "storage/status.h"

namespace flashlm::engine {

// The KV cache's own flags (--kv-page-tokens, --kv-dtype, --kv-budget, --kv-dir).
struct KvOptions {
  bool paged = false;                         // false: FlatKvCache (f32, everything in DRAM)
  uint32_t page_tokens = 16;                  // P
  layout::DType dtype = layout::DType::kF32;  // f32, f16 or q8_0
  // The pool's share of the budget; 0: the session's plan decides (everything when it fits).
  uint64_t pool_bytes = 0;
  std::string spill_dir;  // empty: $TMPDIR or /tmp
  // --kv-fetch: how top-N attention reads V that is on flash. false (pages): every page holding a
  // kept position, whole (and cached); true (rows): only the kept rows (cache/kv_page_cache.h).
  bool fetch_rows = false;
  // --kv-select pages: keep per-page K bounds (min and max per channel, f32) in DRAM for page
  // selection (engine/attention_pages.h); 2 x kv_dim x 4 bytes per page of K.
  bool select_pages = false;
  // --kv-select shared: page selection with one choice per (token, layer) for every head.
  bool select_shared = false;
  // --kv-spill kv: K pages spill to flash too (needs select_pages: exact attention reads every K
  // row every token; cache/kv_page_cache.h).
  bool spill_keys = false;
};

// Largest --kv-page-tokens accepted.
inline constexpr uint32_t kKvPageTokensMax = 4096;

class PagedKvCache final : public KvCache {
 public:
  // The page layout of these sizes. Errors: InvalidArgument (zero sizes, a dtype other than
  // f32/f16/q8_0, page_tokens beyond kKvPageTokensMax).
  static Result<layout::VCacheLayout> Layout(const layout::ModelConfig& config,
                                             uint32_t max_positions, uint32_t max_sequences,
                                             const KvOptions& options);
  // DRAM Create allocates for a pool of `pool_bytes` (and per-row checksums with fetch_rows).
  static uint64_t BytesNeeded(const layout::VCacheLayout& layout, uint64_t pool_bytes,
                              bool fetch_rows = false);
  // The same for every option (K bounds with select_pages, the K-spill pool).
  static uint64_t BytesNeeded(const layout::VCacheLayout& layout, uint64_t pool_bytes,
                              const KvOptions& options);
  // The smallest pool for these options (cache::KvPageCache::MinimumPoolBytes).
  static uint64_t MinimumPoolBytes(const layout::VCacheLayout& layout, const KvOptions& options);
  // Errors: Layout's, KvPageCache::Create's.
  static Result<std::unique_ptr<PagedKvCache>> Create(const layout::ModelConfig& config,
                                                      uint32_t max_positions,
                                                      uint32_t max_sequences,
                                                      const KvOptions& options, uint64_t pool_bytes,
                                                      storage::BackendKind backend, bool direct);

  uint32_t max_sequences() const override { return layout_.max_sequences; }
  uint32_t max_positions() const override { return layout_.max_tokens; }
  uint32_t kv_dim() const override { return static_cast<uint32_t>(layout_.kv_dim()); }
  uint32_t length(uint32_t seq) const override { return lengths_[seq]; }
  void SetLength(uint32_t seq, uint32_t length) override;
  // Errors: InvalidArgument (out of range), and reading back a spilled page it writes into
  // (Corruption, IoError), spilling a filled page (IoError).
  Status Write(uint32_t layer, uint32_t seq, uint32_t pos, std::span<const float> k,
               std::span<const float> v) override;
  // The row goes into its page wherever the page is (resident, on flash, or not yet written at
  // all: a page of a layer that computed none of its positions has no slot and no flash copy),
  // and a page not being filled is written back to flash at once (KvPageCache::FillRow), K pages
  // too with spill_keys. With select_pages the K page's bounds are rebuilt to cover the row and
  // every row below the page's highest row written. Errors: as Write.
  Status Fill(uint32_t layer, uint32_t seq, uint32_t pos, std::span<const float> k,
              std::span<const float> v) override;
  layout::DType dtype() const override { return layout_.dtype; }
  Status WriteEncoded(uint32_t layer, uint32_t seq, uint32_t pos, ConstByteSpan k,
                      ConstByteSpan v) override;
  KvRows Keys(uint32_t layer, uint32_t seq, uint32_t first, uint32_t count) const override;
  KvRows Values(uint32_t layer, uint32_t seq, uint32_t first, uint32_t count) const override;
  Status FetchValues(uint32_t layer, uint32_t seq, uint32_t length) override;
  Status FetchValuePositions(uint32_t layer, uint32_t seq, uint32_t length,
                             std::span<const uint8_t> needed) override;
  void ReleaseValues() override { pages_->ReleaseFetched(); }
  uint32_t bound_page_tokens() const override {
    return key_bounds_.empty() ? 0 : layout_.tokens_per_page;
  }
  std::span<const float> KeyPageBounds(uint32_t layer, uint32_t seq, uint64_t page) const override;
  Status FetchPages(uint32_t layer, uint32_t seq, uint32_t length,
                    std::span<const uint8_t> pages_needed) override;
  bool spills() const override { return pages_->spills(); }
  bool spills_keys() const override { return pages_->spills() && pages_->spill_keys(); }
  uint64_t resident_bytes() const override { return resident_bytes_; }

  const cache::KvPageCache& pages() const { return *pages_; }
  cache::KvPageCache& pages() { return *pages_; }

 private:
  PagedKvCache() = default;
  // Write's and WriteEncoded's common part: `put` stores one row into the bytes it is given.
  template <typename PutK, typename PutV>
  Status WriteRows(uint32_t layer, uint32_t seq, uint32_t pos, const PutK& put_k,
                   const PutV& put_v);
  KvRows Rows(layout::KvKind kind, uint32_t layer, uint32_t seq, uint32_t first,
              uint32_t count) const;

  // Index of page (seq, layer, page) in key_bounds_ / bound_rows_.
  uint64_t BoundIndex(uint32_t layer, uint32_t seq, uint64_t page) const {
    return (uint64_t{seq} * layout_.n_layers + layer) * layout_.pages_per_seq() + page;
  }
  // Folds the K row just stored at row `row` of `page_bytes` into the page's bounds (recomputing
  // them from rows [0, row) first when a rewind left rows beyond it in them).
  Status FoldKeyBounds(uint32_t layer, uint32_t seq, uint64_t page, uint32_t row,
                       ConstByteSpan page_bytes);
  // Fill's: rebuilds the page's bounds over its rows [0, max(rows folded, row + 1)).
  Status FillKeyBounds(uint32_t layer, uint32_t seq, uint64_t page, uint32_t row,
                       ConstByteSpan page_bytes);

  layout::VCacheLayout layout_;
  std::unique_ptr<cache::KvPageCache> pages_;
  std::vector<float> key_bounds_;     // select_pages: [seq x layer x page][min | max][kv_dim]
  std::vector<uint32_t> bound_rows_;  // select_pages: [seq x layer x page] rows folded in
  std::vector<float> row_scratch_;    // select_pages: kv_dim, one decoded K row
  std::vector<uint32_t> lengths_;  // [max_sequences]
  uint64_t resident_bytes_ = 0;
};

}  // namespace flashlm::engine

#endif  // FLASHLM_ENGINE_PAGED_KV_CACHE_H_
