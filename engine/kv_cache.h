// KvCache: where attention keeps the keys and values it has computed, addressed by (layer,
// sequence, position).
//
// The forward pass (engine/transformer.h) writes one row of K and one of V (kv_dim floats each:
// n_kv_heads heads of head_dim, K after RoPE) per token, layer and sequence, and reads them back
// as runs of rows: Keys()/Values() return the rows from a position on that sit contiguously (a
// flat cache returns all of them at once; a paged one would return one page). Positions
// [0, length(seq)) hold valid rows; writing at a position below the length rewinds the sequence
// (what follows is dropped). One cache serves several sequences at once (a server batches decode
// steps of different requests into one forward pass).
//
// Rows are stored in a dtype of the cache's choice (f32, f16, q8_0: a q8_0 row is kv_dim values
// in blocks of 32 running across heads); KvDot / KvAxpy below read one head of a row in any of
// them, and for f32 they are exactly DotF32 / AxpyF32 (an f32 cache is bit-identical whatever its
// paging); for f16 they are DotF32 / AxpyF32 on the row converted to f32.
//
// Implementations: FlatKvCache, f32 rows in DRAM, one contiguous block per (sequence, layer),
// sized for max_sequences x max_positions at Create; and PagedKvCache (engine/paged_kv_cache.h):
// pages in a budgeted pool, V pages spilled to flash. Before attention over a layer reads V rows
// the forward pass calls FetchValues for each sequence (the pages a run reads must be resident:
// a paged cache reads spilled ones back here), and ReleaseValues after; page selection calls
// FetchPages instead (K and V of the pages it chose).
// Nothing allocates after Create.
// Not thread-safe: the forward pass's owner thread writes and fetches; its pool threads read
// (Keys/Values) between those calls.
#ifndef FLASHLM_ENGINE_KV_CACHE_H_
#define FLASHLM_ENGINE_KV_CACHE_H_

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "layout/dtype.h"
#include "layout/model_config.h"
#include "storage/aligned_buffer.h"
#include "storage/status.h"

namespace flashlm::engine {

// A run of consecutive positions' rows: row i (position first + i) is at data + i * stride_bytes,
// kv_dim values in `dtype` (head h at values h * head_dim). Valid until the next write, fetch or
// release of the same sequence.
struct KvRows {
  const std::byte* data = nullptr;
  uint64_t stride_bytes = 0;
  uint32_t count = 0;
  layout::DType dtype = layout::DType::kF32;
};

// q . x and y += a * x, where x is values [offset, offset + n) of row i of `rows` (n <= 32 - offset
// % 32 is not required: q8_0 blocks are crossed as needed). For f32 exactly DotF32(q, x, n) and
// AxpyF32(a, x, y, n).
float KvDot(const float* q, const KvRows& rows, uint32_t i, uint32_t offset, uint32_t n);
void KvAxpy(float a, const KvRows& rows, uint32_t i, uint32_t offset, float* y, uint32_t n);
// A whole run at once (attention's inner loops): scores[i] = KvDot(q, rows, i, offset, n) * scale
// for every i < rows.count, and y += a[i] * (row i) for i = 0, 1, ... rows.count - 1 in turn as
// KvAxpy does, both bit for bit with the per-row calls. f32 and f16 rows take the SIMD run
// kernels (engine/kernels.h AttentionDotRows / AttentionAxpyRows), q8_0 rows go row by row.
void KvDotRun(const float* q, const KvRows& rows, uint32_t offset, uint32_t n, float scale,
              float* scores);
void KvAxpyRun(const float* a, const KvRows& rows, uint32_t offset, float* y, uint32_t n);

// An upper bound of q . k over every k with lo[j] <= k[j] <= hi[j] (j < n), as KvDot computes it
// in f32: sum_j max(q_j lo_j, q_j hi_j), which bounds the exact dot product, plus the rounding
// either side may make: any f32 sum of n products is within gamma_(n+1) = (n+1) 2^-24 / (1 -
// (n+1) 2^-24) of the exact one times sum_j |q_j k_j| <= M = sum_j max(|q_j lo_j|, |q_j hi_j|)
// (Higham, "Accuracy and Stability of Numerical Algorithms", 3.1), so (n + 4) 2^-23 M covers both
// the dot product's and the bound's own error. Page selection (engine/attention_pages.h) ranks
// pages by it; it never changes a score. Allocates nothing; thread-safe.
float KeyPageBound(const float* q, const float* lo, const float* hi, uint32_t n);

class KvCache;
// Benchmarks only (generate --bench-fill-kv): writes positions [0, positions) of `seq` in every
// layer of `kv` with synthetic K and V rows (normal(0, 1) values from `seed`), as if a prompt of
// that length had been prefilled, so decode at a long context can be measured where prefilling
// it would take too long. The rows are not a model's: attention over them is meaningless for
// output quality (and page selection's choices are not a real text's). Allocates two kv_dim rows.
// Errors: the cache's Write (InvalidArgument beyond max_positions, IoError spilling).
Status FillSyntheticKv(KvCache& kv, uint32_t n_layers, uint32_t seq, uint32_t positions,
                       uint64_t seed);

class KvCache {
 public:
  virtual ~KvCache() = default;
  virtual uint32_t max_sequences() const = 0;
  virtual uint32_t max_positions() const = 0;  // per sequence
  virtual uint32_t kv_dim() const = 0;
  // Positions of `seq` holding rows: [0, length). Precondition: seq < max_sequences().
  virtual uint32_t length(uint32_t seq) const = 0;
  // Sets the length of `seq` (rows at and beyond it are dropped). Precondition: length <=
  // max_positions(); rows below it must have been written.
  virtual void SetLength(uint32_t seq, uint32_t length) = 0;
  // Stores K and V of the token at `pos` of `seq` in `layer` (kv_dim floats each).
  // Errors: InvalidArgument (out of range). Allocates nothing.
  virtual Status Write(uint32_t layer, uint32_t seq, uint32_t pos, std::span<const float> k,
                       std::span<const float> v) = 0;
  // As Write, for a position below the sequence's length that `layer` never computed (LazyLLM
  // revival, engine/transformer.h LazyOptions): stores the row without rewinding the sequence
  // (Write below the length may drop what follows; Fill never does). Precondition: the row of
  // (layer, seq, pos) was not written since the position was last (re)computed from layer 0.
  // Errors: as Write. Allocates nothing. Default: Write (a cache whose Write never rewinds).
  virtual Status Fill(uint32_t layer, uint32_t seq, uint32_t pos, std::span<const float> k,
                      std::span<const float> v) {
    return Write(layer, seq, pos, k, v);
  }
  // The dtype rows are stored in (what Keys/Values return).
  virtual layout::DType dtype() const = 0;
  // As Write, but K and V arrive already encoded in dtype() (layout::RowBytes(dtype(), kv_dim)
  // bytes each) and are stored as they are: restores rows read out through Keys/Values bit for
  // bit (engine/prompt_cache.h). Errors: InvalidArgument (out of range, wrong sizes), Write's.
  virtual Status WriteEncoded(uint32_t layer, uint32_t seq, uint32_t pos, ConstByteSpan k,
                              ConstByteSpan v) = 0;
  // The contiguous run of K (V) rows of (layer, seq) from position `first` on, at most `count`
  // rows and at least one. Precondition: first + count <= max_positions().
  virtual KvRows Keys(uint32_t layer, uint32_t seq, uint32_t first, uint32_t count) const = 0;
  virtual KvRows Values(uint32_t layer, uint32_t seq, uint32_t first, uint32_t count) const = 0;
  // Makes the V rows [0, length) of (layer, seq) readable by Values() until ReleaseValues()
  // (a paged cache reads spilled pages back here; others have nothing to do).
  // Errors: Corruption (a spilled page fails its checksum), IoError, ResourceExhausted.
  virtual Status FetchValues(uint32_t layer, uint32_t seq, uint32_t length) {
    (void)layer, (void)seq, (void)length;
    return Status::Ok();
  }
  // As FetchValues, but only the V rows at positions p < length with needed[p] != 0 need be
  // readable (a paged cache fetches the pages holding them). needed.size() == length.
  virtual Status FetchValuePositions(uint32_t layer, uint32_t seq, uint32_t length,
                                     std::span<const uint8_t> needed) {
    (void)needed;
    return FetchValues(layer, seq, length);
  }
  virtual void ReleaseValues() {}
  // Page selection (--kv-select pages, engine/attention_pages.h). The positions per page of a
  // cache that keeps per-page K bounds (0: it keeps none, the default).
  virtual uint32_t bound_page_tokens() const { return 0; }
  // The bounds of the K rows of page `page` (positions [page x P, page x P + P)) of (layer, seq):
  // 2 x kv_dim f32, the per-channel minimum then maximum over the rows written there, of the
  // values Keys() returns (after the dtype's rounding). Valid until the next write of that
  // (layer, seq). Precondition: bound_page_tokens() != 0 and a row of the page was written.
  virtual std::span<const float> KeyPageBounds(uint32_t layer, uint32_t seq, uint64_t page) const {
    (void)layer, (void)seq, (void)page;
    return {};
  }
  // Makes the K and V rows of the pages i with pages_needed[i] != 0 (positions below `length`)
  // readable by Keys()/Values() until ReleaseValues() (a cache whose K pages spill reads them
  // back here too). pages_needed.size() == ceil(length / bound_page_tokens()). Default: every V
  // row, as FetchValues. Errors: FetchValues'.
  virtual Status FetchPages(uint32_t layer, uint32_t seq, uint32_t length,
                            std::span<const uint8_t> pages_needed) {
    (void)pages_needed;
    return FetchValues(layer, seq, length);
  }
  // Whether V rows may have to be read from flash (FetchValues does I/O).
  virtual bool spills() const { return false; }
  // Whether K rows may be on flash too: Keys() then reads only pages made resident by FetchPages
  // (or FetchValues) since the last ReleaseValues.
  virtual bool spills_keys() const { return false; }
  // DRAM the cache holds.
  virtual uint64_t resident_bytes() const = 0;
};

class FlatKvCache final : public KvCache {
 public:
  // DRAM a cache of these sizes holds (what Create allocates).
  static uint64_t BytesNeeded(const layout::ModelConfig& config, uint32_t max_positions,
                              uint32_t max_sequences);
  // Errors: InvalidArgument (zero sizes), ResourceExhausted.
  static Result<std::unique_ptr<FlatKvCache>> Create(const layout::ModelConfig& config,
                                                     uint32_t max_positions,
                                                     uint32_t max_sequences);

  uint32_t max_sequences() const override { return max_sequences_; }
  uint32_t max_positions() const override { return max_positions_; }
  uint32_t kv_dim() const override { return kv_dim_; }
  uint32_t length(uint32_t seq) const override { return lengths_[seq]; }
  void SetLength(uint32_t seq, uint32_t length) override;
  Status Write(uint32_t layer, uint32_t seq, uint32_t pos, std::span<const float> k,
               std::span<const float> v) override;
  layout::DType dtype() const override { return layout::DType::kF32; }
  Status WriteEncoded(uint32_t layer, uint32_t seq, uint32_t pos, ConstByteSpan k,
                      ConstByteSpan v) override;
  KvRows Keys(uint32_t layer, uint32_t seq, uint32_t first, uint32_t count) const override;
  KvRows Values(uint32_t layer, uint32_t seq, uint32_t first, uint32_t count) const override;
  uint64_t resident_bytes() const override { return memory_.size_bytes(); }

 private:
  FlatKvCache() = default;
  // Offset in floats of (K or V, seq, layer, pos).
  uint64_t Offset(bool value, uint32_t layer, uint32_t seq, uint32_t pos) const;

  uint32_t n_layers_ = 0, kv_dim_ = 0, max_positions_ = 0, max_sequences_ = 0;
  storage::AlignedBuffer memory_;  // [K, V] x max_sequences x n_layers x max_positions x kv_dim f32
  std::vector<uint32_t> lengths_;  // [max_sequences]
};

}  // namespace flashlm::engine

#endif  // FLASHLM_ENGINE_KV_CACHE_H_
