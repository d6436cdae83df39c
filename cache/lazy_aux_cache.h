// LazyAuxCache: the LazyLLM aux cache (engine/transformer.h, TransformerOptions::lazy) — what a
// pruned prompt token leaves behind so that a later pass can revive it without recomputing the
// layers it has already been through.
//
// The question it answers: if layer 2 pruned tokens 2, 4, 8 and layer 3 later needs them, where
// does layer 3's input for them come from? From here. A token pruned at the end of layer l (its
// layers 0..l computed, its K and V written into the KV cache for those layers) stores ONE
// hidden state: its residual stream after layer l, i.e. exactly layer l+1's input (dim floats).
// Nothing else is kept: its K/V for layers 0..l are already in the KV cache, and layers beyond
// l+1 are derived from this state when they are needed. Per position the cache records how many
// layers have been computed (`computed_layers`, n_layers = complete): the KV cache of layer j
// holds the position iff j < computed_layers(pos), and attention over layer j skips the others.
//
// Revival (the Transformer decides when; see there): a token whose next uncomputed layer is
// l+1 and which the attention at layer l ranks among the kept ones is taken back into the pass
// from its stored state and computed through layer l+1 onward with the rest; if a later pruning
// layer drops it again, its state is stored again (one slot per position, overwritten). So each
// layer of each token is computed at most once, and only the missing ones.
//
// Memory: one slot of dim f32 per position of the context of each sequence (slot = (sequence,
// position), so storing, reviving and rewinding never search or allocate) plus a 4-byte layer
// count per slot: BytesNeeded = max_sequences x (max_positions x (dim x 4 + 4) + 4), allocated at
// Create, charged against the budget by the forward pass's BytesNeeded (a server with several
// sequences pays it per sequence). held_bytes() is the part in use (pruned tokens x dim x 4).
// Sequences are independent: what one prunes, holds or revives is its own. The one-argument
// (pos) forms are sequence 0's. Not thread-safe for writes; const reads may run concurrently
// between writes.
#ifndef FLASHLM_CACHE_LAZY_AUX_CACHE_H_
#define FLASHLM_CACHE_LAZY_AUX_CACHE_H_

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "storage/status.h"

namespace flashlm::cache {

class LazyAuxCache {
 public:
  // DRAM Create allocates for these sizes.
  static uint64_t BytesNeeded(uint32_t dim, uint32_t max_positions, uint32_t max_sequences = 1);
  // Every position starts complete (computed_layers == n_layers). Errors: InvalidArgument (zero
  // sizes), ResourceExhausted.
  static Result<std::unique_ptr<LazyAuxCache>> Create(uint32_t n_layers, uint32_t dim,
                                                      uint32_t max_positions,
                                                      uint32_t max_sequences = 1);

  uint32_t n_layers() const { return n_layers_; }
  uint32_t dim() const { return dim_; }
  uint32_t max_positions() const { return max_positions_; }  // per sequence
  uint32_t max_sequences() const { return max_sequences_; }
  // Layers computed for `pos` of `seq` (its K/V exist in layers [0, computed_layers)).
  uint32_t computed_layers(uint32_t seq, uint32_t pos) const { return layers_[Slot(seq, pos)]; }
  bool present(uint32_t layer, uint32_t seq, uint32_t pos) const {
    return layer < layers_[Slot(seq, pos)];
  }
  uint32_t computed_layers(uint32_t pos) const { return computed_layers(0, pos); }
  bool present(uint32_t layer, uint32_t pos) const { return present(layer, 0, pos); }
  // Positions held pruned now (computed_layers < n_layers), over every sequence.
  uint32_t held() const { return held_; }

  // `pos` is (re)computed from layer 0 on by a pass: complete, any held state dropped (a
  // rewind), not counted as a revival.
  void Reset(uint32_t seq, uint32_t pos);
  // `pos` was computed through layer layers_done - 1 and is not computed further now:
  // `hidden` (dim floats) is layer layers_done's input. Precondition: 0 < layers_done < n_layers.
  void Prune(uint32_t seq, uint32_t pos, uint32_t layers_done, std::span<const float> hidden);
  // The state stored for a held position (valid until its next Prune/Reset/Revive).
  std::span<const float> hidden(uint32_t seq, uint32_t pos) const;
  // `pos` is taken back into a pass (its state read with hidden() first): counted as complete
  // from here (the pass computes the rest or prunes it again).
  void Revive(uint32_t seq, uint32_t pos);
  // Every position of `seq` from `pos` on is (re)computed from layer 0 or no longer part of the
  // sequence (a pass starting at `pos`, a rewind, a slot handed to a new request): complete, held
  // states dropped. Costs the span up to the highest position `seq` ever held, not the context.
  void ResetFrom(uint32_t seq, uint32_t pos);
  void Reset(uint32_t pos) { Reset(0, pos); }
  void Prune(uint32_t pos, uint32_t layers_done, std::span<const float> hidden) {
    Prune(0, pos, layers_done, hidden);
  }
  std::span<const float> hidden(uint32_t pos) const { return hidden(0, pos); }
  void Revive(uint32_t pos) { Revive(0, pos); }

  uint64_t held_bytes() const { return uint64_t{held_} * dim_ * sizeof(float); }
  uint64_t peak_held_bytes() const { return uint64_t{peak_held_} * dim_ * sizeof(float); }
  uint64_t resident_bytes() const { return BytesNeeded(dim_, max_positions_, max_sequences_); }
  uint64_t prunes() const { return prunes_; }      // Prune calls so far
  uint64_t revivals() const { return revivals_; }  // Revive calls so far
  void ResetStats();                               // counters and peak (to what is held now)

 private:
  LazyAuxCache() = default;
  uint64_t Slot(uint32_t seq, uint32_t pos) const { return uint64_t{seq} * max_positions_ + pos; }
  uint32_t n_layers_ = 0, dim_ = 0, max_positions_ = 0, max_sequences_ = 0;
  std::vector<float> hidden_;     // max_sequences x max_positions x dim
  std::vector<uint32_t> layers_;  // max_sequences x max_positions
  std::vector<uint32_t> end_;     // [seq] 1 + the highest position held since its last ResetFrom
  uint32_t held_ = 0, peak_held_ = 0;
  uint64_t prunes_ = 0, revivals_ = 0;
};

}  // namespace flashlm::cache

#endif  // FLASHLM_CACHE_LAZY_AUX_CACHE_H_
