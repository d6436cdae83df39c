// BundleFfnKernel: one layer's FFN computed from neuron bundles (layout/bundle_layout.h) instead
// of gate/up/down matrices, a batch of bundles at a time: any set of positions, contiguous or
// scattered, each bundle wherever it sits in DRAM (a cache slot, a streaming buffer).
//
// For position p holding neuron i: g = gate_i . x, u = up_i . x, h = act(g) * u, and
// out += h * down_i (the down column). The products reuse the engine's kernels: gate and up rows
// go through DotRows (q8 activations for block dtypes, bit-identical to MatMul's products; for
// one q8_0 token adjacent bundles are read front to back, see Accumulate); the down column is
// dequantised and accumulated in one pass (AxpyRows, bit-identical to AxpyRow bundle after
// bundle: for a batch of tokens a block of the outputs stays in registers across the bundles; one
// q8_0 / q4_0 token reads each column of a group front to back with the outputs in L1).
// Determinism: every out[t][r] sums its terms in the order the positions are accumulated (batches
// come in increasing position order), whatever the batching, the thread count of the down pass or
// which bundles came from DRAM or flash, so results do not depend on the memory budget (only on
// the store and on which positions are computed). Threads: gate/up are split over positions, the
// down pass over output rows (32-value blocks); for one token the two overlap (a unit of bundles'
// down columns are added, per output part in position order, as soon as its h is ready: see
// Accumulate). Everything is sized at Create; Begin/Accumulate allocate nothing. Not
// thread-safe: one owner.
#ifndef FLASHLM_ENGINE_BUNDLE_FFN_H_
#define FLASHLM_ENGINE_BUNDLE_FFN_H_

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "engine/arena.h"
#include "engine/kernels.h"
#include "engine/thread_pool.h"
#include "layout/bundle_layout.h"
#include "storage/status.h"

namespace flashlm::engine {

// How a layer's regrouped down columns are laid out for a pass over `threads` threads: the
// output cut into `parts` equal runs of whole blocks (the largest count <= threads that divides
// the output's blocks; 1 if none, or if the output ends in a partial block), and each position's
// part p stored in run p, the positions back to back: run after run, so each thread reads one
// stream front to back. (Halves of columns laid back to back instead, one thread a half, ran no
// faster at 2 threads than 1: each core's prefetchers fetched the other half too.
// docs/benchmarks.md, "Down columns a part a thread".) Bit-identical whatever the count: each
// output value takes the same terms in the same order.
//
// Within a part, the positions go in groups of `group` (4 where this build's kernels read
// interleaved rows, ReadsInterleavedRows, and the output is whole blocks; else 1): a group's
// parts are interleaved block by block (block b of its i-th member at the group's start + (b *
// members + i) * block_bytes; a last group may have fewer members), so that one token's sweep
// over a group's 4 columns reads one stream (docs/benchmarks.md, "The f32 down pass reads four
// streams").
struct DownLayout {
  uint32_t parts = 1;
  uint32_t part_rows = 0;   // outputs a part
  uint64_t part_bytes = 0;  // one position's part: RowBytes(dtype, part_rows)
  uint32_t group = 1;       // positions interleaved block by block
  uint32_t block_rows = 0;  // outputs a block (32; 256 for q4_K / q6_K)
  uint64_t block_bytes = 0;

  static DownLayout For(const layout::BundleGeometry& g, uint32_t threads);
  // Bytes `count` positions' down columns take: count * RowBytes(dtype, dim).
  uint64_t Bytes(uint32_t count) const { return uint64_t{parts} * count * part_bytes; }
  // Bytes from a position's part p to its part p + 1, for `count` positions.
  uint64_t PartStride(uint32_t count) const { return uint64_t{count} * part_bytes; }
  // Bytes from one block of position k's part to its next (AxpyRows' block_stride), for `count`
  // positions: 0 (back to back) where group is 1, else its group's members * block_bytes.
  uint64_t BlockStride(uint32_t count, uint32_t k) const;
  // Where output row r (a block boundary) of position k's part starts, from where the part
  // starts (Place's return + p * PartStride(count)).
  uint64_t RowOffset(uint32_t count, uint32_t k, uint32_t r) const;
  // Copies position k's down column (`column`, RowBytes(dtype, dim) bytes) into its parts in the
  // region at `base` laid out for `count` positions; returns where its part 0 starts.
  const std::byte* Place(std::byte* base, uint32_t count, uint32_t k,
                         const std::byte* column) const;
};

// A layer's first `count` positions (a dense FFN's pinned bundles, NeuronSource's
// regroup_pinned) with their parts regrouped: the gate rows (absent for [up | down] bundles) and
// the up rows as matrices, positions [0, up.rows) in `gate` / `up` (in strips where KeepInStrips
// puts them: a multiple of 16 rows) and the rest in `gate_tail` / `up_tail` (row-major), and the
// down columns as `down_layout` places them: down[k] is where position k's part 0 starts, its
// part p p * down_layout.PartStride(count) bytes on (blocks down_layout.BlockStride apart where
// they are interleaved). A dense pass reads each matrix, and each thread its part of the down
// columns, as one stream instead of 16 rows at a time.
struct RegroupedBundles {
  MatrixView gate, up;                     // positions [0, up.rows)
  MatrixView gate_tail, up_tail;           // positions [up.rows, count())
  std::span<const std::byte* const> down;  // [count()]
  DownLayout down_layout;
  uint32_t count() const { return static_cast<uint32_t>(down.size()); }
};

// The view of `count` positions' parts regrouped as RegroupedBundles describes: gate (empty
// for [up | down] bundles) and up hold their rows in position order (count x part_bytes each,
// writable) and are rewritten into strips for their first count / 16 * 16 rows where this build
// reads them so (KeepInStrips); down[k] is position k's part 0 as `down_layout` placed it
// (DownLayout::Place). Load time only.
RegroupedBundles Regroup(const layout::BundleGeometry& g, uint32_t count, ByteSpan gate,
                         ByteSpan up, std::span<const std::byte* const> down,
                         const DownLayout& down_layout);

class BundleFfnKernel {
 public:
  // `geometry` of every layer's bundles (one dtype and kind per store), `hidden` neurons per
  // layer, at most `max_batch` tokens per Begin and `chunk_max` positions per Accumulate.
  // Errors: NotSupported (a dtype MatMul lacks), InvalidArgument (zero sizes).
  static Result<std::unique_ptr<BundleFfnKernel>> Create(const layout::BundleGeometry& geometry,
                                                         uint32_t hidden, uint32_t max_batch,
                                                         uint32_t chunk_max, bool relu,
                                                         ThreadPool& pool);

  // DRAM the kernel holds (its scratch arena), for the residency plan.
  static uint64_t ScratchBytes(const layout::BundleGeometry& geometry, uint32_t hidden,
                               uint32_t max_batch, uint32_t chunk_max, uint32_t threads);
  uint64_t resident_bytes() const { return arena_.size_bytes(); }

  // Starts a layer: x (n x dim) is the normed input; out (n x dim) is zeroed and then
  // accumulated into. `permutation` (position -> neuron, empty = identity) must stay valid until
  // the layer's last Accumulate. For kGateSeparate bundles `dense_gate` (hidden x dim, neuron
  // order) is the layer's gate matrix: it is multiplied here, so it need not outlive Begin.
  // `capture` (n x hidden f32, neuron order; empty = off): zeroed, then every accumulated
  // neuron's h = act(gate x) * (up x) is written there too (what an FfnObserver sees);
  // `gate_capture` (same shape) likewise receives the pre-activation gate x of every accumulated
  // neuron (with a dense gate: of every neuron, at Begin). Ends any mask (set_mask).
  void Begin(std::span<const float> x, uint32_t n, std::span<float> out,
             const MatrixView* dense_gate, std::span<const uint32_t> permutation,
             std::span<float> capture = {}, std::span<float> gate_capture = {});
  // From now until the next Begin, a neuron adds nothing to a token whose |act(gate x)| <= cut
  // (its h is 0): the threshold sparsity's rule, per token, so that a batch computes what its
  // tokens one at a time would. cut < 0: no mask.
  void set_mask(float cut) { mask_cut_ = cut; }
  // From now until the next Begin, a neuron adds nothing to a token t whose score
  // scores[t * hidden + neuron] is not above `cut` (the predictor sparsity's rule, per token;
  // `scores` is n x hidden in neuron order and must stay valid until the layer's last
  // Accumulate). Every neuron computed for a token that is not masked is counted
  // (predicted_stats()), and whether it fires: for ReLU gate x > 0, else |h| > fire_cut.
  void set_score_mask(std::span<const float> scores, float cut, float fire_cut);
  // (token, neuron) pairs computed under a score mask since Create, and those of them that fire.
  struct PredictedStats {
    uint64_t computed = 0, fired = 0;
  };
  PredictedStats predicted_stats() const;
  void ResetPredictedStats() { std::fill(predicted_counts_.begin(), predicted_counts_.end(), 0); }

  // Accumulates the bundles bundles[k] at positions positions[k] (k < positions.size() <=
  // chunk_max; each bundle geometry().bundle_bytes long). Positions increase within and across
  // the calls of a layer.
  void Accumulate(std::span<const uint32_t> positions, std::span<const std::byte* const> bundles);
  // Accumulates positions [0, b.count()), regrouped: what Accumulate over the same bundles at those
  // positions computes, bit for bit (the matrices' products are DotRows', the down terms go in
  // position order). Gate and up go through MatMulRows up to kUnitStrips strips a call, split
  // over the threads; the down columns through one AxpyRows call a thread, each on a piece of the
  // outputs (a part of b.down_layout where the parts are as many as the threads). The first call
  // of a layer (CHECKed); count <= hidden.
  void AccumulateRegrouped(const RegroupedBundles& b);
  // After Begin with a dense gate (kGateSeparate): writes to `out` (at least hidden entries), in
  // increasing order, the positions whose neuron has |act(gate x)| > cut for at least one of the
  // batch's tokens, and returns how many. With cut = 0 under ReLU: the neurons whose gate output
  // is positive (those that fire).
  uint32_t FiringPositions(std::span<uint32_t> out, float cut = 0.0f) const;

  const layout::BundleGeometry& geometry() const { return g_; }
  uint32_t chunk_max() const { return chunk_max_; }

 private:
  // Gate/up rows multiplied per DotRows call: 4 (two bundles of [gate | up], four of up alone),
  // or for the dtypes DotRows takes 16 rows at a time (q8_0, q4_0, q4_K, q6_K: one lane of a
  // strip a row) 16, so that no lane is computed for nothing.
  static constexpr uint32_t kGroupRows = 4;
  static constexpr uint32_t kStripGroupRows = 16;
  // Strips a regrouped unit of work takes for one token (fewer for more tokens): one MatMulRows
  // call a strip cost about 12% more than calls over a thread's whole range, 8 strips at a time
  // 1-3% (1b q8_0 gate and up, 1 and 2 threads, a lab loop outside the repository).
  static constexpr uint32_t kUnitStrips = 8;
  static uint32_t GroupRows(layout::DType dtype);
  BundleFfnKernel(ThreadPool& pool) : pool_(pool) {}
  // Floats in each thread's tile of gate/up products (ComputeGroup: a group's rows, token-minor;
  // RegroupedChunk: a unit's gate rows and up rows, token-major; room for 16 rows of
  // max(max_batch, kUnitStrips) tokens in each half): whole cache lines, so that
  // threads never write the same line (one token's tile is 4 floats; two threads sharing its
  // line passed it between their cores at every bundle, and phase 1 at 2 threads ran no faster
  // than at 1).
  static uint64_t TileStride(uint32_t max_batch);
  // Whether `next` starts right after `bundle` ends (within kAdjacentGap bytes: resident
  // bundles, a merged read), so that reading both is one stream.
  bool Adjacent(const std::byte* bundle, const std::byte* next) const;
  // Whether each of `bundles` is Adjacent to the one before it (one stream front to back).
  bool Chained(std::span<const std::byte* const> bundles) const;
  struct Layout {
    ArenaLayout arena;
    uint64_t h = 0, gate_all = 0, tile = 0, qx = 0;
  };
  // Whether every h is plainly act(gate) * up: gate and up in the bundle, no mask, no capture.
  // Then ComputeGroup and RegroupedChunk take many values' h in one SwiGlu call (elementwise, so
  // each value is what Activation gives it, bit for bit); otherwise a call to Activation a value.
  bool PlainActivation() const;
  // h for token t of `neuron`, from its gate output gv and up output uv: act(gv) * uv, or 0 where
  // a mask drops it (gv recorded in gate_capture_ first, score-mask counts to *computed / *fired).
  float Activation(uint32_t t, uint64_t neuron, float gv, float uv, uint64_t* computed,
                   uint64_t* fired);
  // AccumulateRegrouped's part for rows [row0, row0 + m) of `gate` / `up` (row0 a multiple of 16
  // where they are in strips; m * n <= chunk_max * max_batch: h_ holds n floats a position
  // here), positions first + [0, m).
  void RegroupedChunk(const MatrixView& gate, const MatrixView& up, uint32_t row0, uint32_t m,
                      uint32_t first, const RegroupedBundles& b);
  // Under a score mask: whether token t's `neuron` is masked; if not, counts it and whether it
  // fires (`positive`: its gate output was > 0; `h` its activation).
  bool ScoreMasked(uint32_t t, uint64_t neuron, bool positive, float h, uint64_t* computed,
                   uint64_t* fired) const {
    if (score_mask_.empty()) return false;
    if (!(score_mask_[uint64_t{t} * hidden_ + neuron] > score_cut_)) return true;
    ++*computed;
    *fired += relu_ ? positive : std::fabs(h) > fire_cut_;
    return false;
  }
  static Layout MakeLayout(const layout::BundleGeometry& g, uint32_t hidden, uint32_t max_batch,
                           uint32_t chunk_max, uint32_t threads);
  // h of the group of bundles from index k0 (GroupRows(dtype) rows of gate/up, fewer at `end`)
  // for every token, into h_, on pool thread `th` (its tile); the next group's bundles are
  // prefetched. Score-mask counts go to *computed / *fired.
  void ComputeGroup(std::span<const uint32_t> positions, std::span<const std::byte* const> bundles,
                    uint64_t k0, uint64_t end, uint32_t th, uint64_t* computed, uint64_t* fired);
  // out[., r0..r1) += h * down for bundles k0 .. k0 + m - 1, in that order (AxpyRows).
  void AccumulateDown(std::span<const std::byte* const> bundles, uint64_t k0, uint32_t m,
                      uint32_t r0, uint32_t r1);

  ThreadPool& pool_;
  layout::BundleGeometry g_;
  uint32_t hidden_ = 0, max_batch_ = 0, chunk_max_ = 0;
  bool relu_ = false;
  // Current layer.
  std::span<const float> x_;
  uint32_t n_ = 0;
  std::span<float> out_;
  std::span<const uint32_t> perm_;
  std::span<float> capture_;
  std::span<float> gate_capture_;
  float mask_cut_ = -1.0f;
  std::span<const float> score_mask_;  // n x hidden (empty: none)
  float score_cut_ = 0, fire_cut_ = 0;
  // Per pool thread, padded to a cache line: [8 * th] computed, [8 * th + 1] fired.
  std::vector<uint64_t> predicted_counts_;
  bool separate_ = false;
  Arena arena_;
  std::span<float> h_;         // chunk_max x max_batch: h per bundle of a batch, token-minor
  std::span<float> gate_all_;  // max_batch x hidden (kGateSeparate only)
  std::span<float> tile_;      // threads x TileStride(max_batch): gate/up products
  bool accumulated_ = false;   // since Begin
  ByteSpan qx_span_;           // q8 activations (MatMulScratchBytes(dim, max_batch))
  // One token's schedule (Accumulate): the next unit of bundles whose h is unclaimed, whether
  // each unit's h is ready (sized at Create for units of one group), and per output part (one a
  // pool thread) a lock and the next unit it adds.
  struct alignas(64) DownPart {
    std::atomic<uint32_t> next{0};
    std::atomic<bool> busy{false};
  };
  alignas(64) std::atomic<uint32_t> next_unit_{0};
  std::unique_ptr<std::atomic<uint32_t>[]> ready_;
  std::unique_ptr<DownPart[]> down_parts_;
};

}  // namespace flashlm::engine

#endif  // FLASHLM_ENGINE_BUNDLE_FFN_H_
