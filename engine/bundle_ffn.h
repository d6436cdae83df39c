// BundleFfnKernel: one layer's FFN computed from neuron bundles (layout/bundle_layout.h) instead
// of gate/up/down matrices, a chunk of bundle positions at a time.
//
// For position p holding neuron i: g = gate_i . x, u = up_i . x, h = act(g) * u, and
// out += h * down_i (the down column). The products reuse the engine's kernels: gate and up are
// rows of a 1- or 2-row MatrixView through MatMulRows (q8 activations for block dtypes, exactly
// as MatMul does); the down column is dequantised and accumulated in one pass (AxpyRow).
// Determinism: every out[t][r] sums its terms in position order 0..hidden-1 whatever the chunking,
// the thread count of the down pass or which bundles came from DRAM or flash, so results do not
// depend on the memory budget (only on the store). Threads: gate/up are split over positions, the
// down pass over output rows (32-value blocks). Everything is sized at Create; Begin/Accumulate
// allocate nothing. Not thread-safe: one owner.
#ifndef FLASHLM_ENGINE_BUNDLE_FFN_H_
#define FLASHLM_ENGINE_BUNDLE_FFN_H_

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "engine/kernels.h"
#include "engine/thread_pool.h"
#include "layout/bundle_layout.h"
#include "storage/status.h"

namespace flashlm::engine {

class BundleFfnKernel {
 public:
  // `geometry` of every layer's bundles (one dtype and kind per store), `hidden` neurons per
  // layer, at most `max_batch` tokens per Begin and `chunk_max` positions per Accumulate.
  // Errors: NotSupported (a dtype MatMul lacks), InvalidArgument (zero sizes).
  static Result<std::unique_ptr<BundleFfnKernel>> Create(const layout::BundleGeometry& geometry,
                                                         uint32_t hidden, uint32_t max_batch,
                                                         uint32_t chunk_max, bool relu,
                                                         ThreadPool& pool);

  // DRAM the kernel holds (scratch), for the residency plan.
  static uint64_t ScratchBytes(const layout::BundleGeometry& geometry, uint32_t hidden,
                               uint32_t max_batch, uint32_t chunk_max, uint32_t threads);

  // Starts a layer: x (n x dim) is the normed input; out (n x dim) is zeroed and then
  // accumulated into. For kGateSeparate bundles `dense_gate` (hidden x dim, neuron order) is the
  // layer's gate matrix and `permutation` (position -> neuron, empty = identity) maps bundles to
  // its rows; both must stay valid until the layer's last Accumulate.
  void Begin(std::span<const float> x, uint32_t n, std::span<float> out,
             const MatrixView* dense_gate, std::span<const uint32_t> permutation);

  // Accumulates the bundles at positions [first, first + count) (count <= chunk_max), found at
  // base + k * spacing_bytes for k < count. Chunks must come in increasing position order.
  void Accumulate(const std::byte* base, uint64_t spacing_bytes, uint32_t first, uint32_t count);

  const layout::BundleGeometry& geometry() const { return g_; }
  uint32_t chunk_max() const { return chunk_max_; }

 private:
  BundleFfnKernel(ThreadPool& pool) : pool_(pool) {}

  ThreadPool& pool_;
  layout::BundleGeometry g_;
  uint32_t hidden_ = 0, max_batch_ = 0, chunk_max_ = 0;
  bool relu_ = false;
  // Current layer.
  std::span<const float> x_;
  uint32_t n_ = 0;
  std::span<float> out_;
  std::span<const uint32_t> perm_;
  bool separate_ = false;
  std::vector<float> h_;             // chunk_max x max_batch: h per position, token-minor
  std::vector<float> gate_all_;      // max_batch x hidden (kGateSeparate only)
  std::vector<float> tile_;          // threads x 2 x max_batch: gate/up products
  std::unique_ptr<std::byte[]> qx_;  // q8 activations, 64-byte aligned inside
  ByteSpan qx_span_;
};

}  // namespace flashlm::engine

#endif  // FLASHLM_ENGINE_BUNDLE_FFN_H_
