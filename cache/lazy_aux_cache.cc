#include "cache/lazy_aux_cache.h"

#include <algorithm>
#include <new>

#include "storage/check.h"

namespace flashlm::cache {

uint64_t LazyAuxCache::BytesNeeded(uint32_t dim, uint32_t max_positions, uint32_t max_sequences) {
  return uint64_t{max_sequences} *
         (uint64_t{max_positions} * (uint64_t{dim} * sizeof(float) + sizeof(uint32_t)) +
          sizeof(uint32_t));
}

Result<std::unique_ptr<LazyAuxCache>> LazyAuxCache::Create(uint32_t n_layers, uint32_t dim,
                                                           uint32_t max_positions,
                                                           uint32_t max_sequences) {
  if (n_layers == 0 || dim == 0 || max_positions == 0 || max_sequences == 0) {
    return InvalidArgumentError("lazy aux cache: zero layers, dim, positions or sequences");
  }
  std::unique_ptr<LazyAuxCache> c(new LazyAuxCache());
  c->n_layers_ = n_layers;
  c->dim_ = dim;
  c->max_positions_ = max_positions;
  c->max_sequences_ = max_sequences;
  const uint64_t slots = uint64_t{max_sequences} * max_positions;
  try {
    c->hidden_.assign(slots * dim, 0.0f);
    c->layers_.assign(slots, n_layers);
    c->end_.assign(max_sequences, 0);
  } catch (const std::bad_alloc&) {
    return ResourceExhaustedError("lazy aux cache: cannot allocate " +
                                  std::to_string(BytesNeeded(dim, max_positions, max_sequences)) +
                                  " bytes");
  }
  return c;
}

void LazyAuxCache::Reset(uint32_t seq, uint32_t pos) {
  const uint64_t s = Slot(seq, pos);
  if (layers_[s] < n_layers_) --held_;
  layers_[s] = n_layers_;
}

void LazyAuxCache::ResetFrom(uint32_t seq, uint32_t pos) {
  for (uint32_t p = pos; p < end_[seq]; ++p) Reset(seq, p);
  end_[seq] = std::min(end_[seq], pos);
}

void LazyAuxCache::Prune(uint32_t seq, uint32_t pos, uint32_t layers_done,
                         std::span<const float> hidden) {
  const uint64_t s = Slot(seq, pos);
  CHECK_GT(layers_done, 0u);
  CHECK_LT(layers_done, n_layers_);
  CHECK_EQ(hidden.size(), dim_);
  if (layers_[s] == n_layers_) ++held_;
  peak_held_ = std::max(peak_held_, held_);
  layers_[s] = layers_done;
  end_[seq] = std::max(end_[seq], pos + 1);
  std::copy(hidden.begin(), hidden.end(), hidden_.begin() + s * dim_);
  ++prunes_;
}

std::span<const float> LazyAuxCache::hidden(uint32_t seq, uint32_t pos) const {
  return std::span<const float>(hidden_.data() + Slot(seq, pos) * dim_, dim_);
}

void LazyAuxCache::Revive(uint32_t seq, uint32_t pos) {
  const uint64_t s = Slot(seq, pos);
  CHECK_LT(layers_[s], n_layers_);
  --held_;
  layers_[s] = n_layers_;
  ++revivals_;
}

void LazyAuxCache::ResetStats() {
  prunes_ = revivals_ = 0;
  peak_held_ = held_;
}

}  // namespace flashlm::cache
