// flashlm_ffn_bench: the FFN of a 1b-shaped model (22 layers, dim 2048, 5632 neurons) with every
// weight in DRAM, computed three ways over the same number of bytes:
// - Dense: gate, up and down as matrices (kept in strips, as a GGUF's are loaded), gate and up in
//   one MatMulShared, SwiGlu, then down's MatMul a layer: what `generate` runs on a GGUF.
// - Bundles: BundleFfnKernel over gate-up-down bundles, adjacent in one buffer on huge pages
//   (resident bundles' layout), in calls of 256 positions: what a store runs over bundles in DRAM
//   as they are read (pinned ones in a sparse mode, cached ones). BundlesSparse computes every
//   10th neuron only (a sparse set's scattered bundles).
// - BundlesRegrouped: the same bundles with their parts regrouped (gate and up rows as matrices
//   in strips, the down columns back to back) through AccumulateRegrouped: what a store runs
//   with every bundle pinned in dense mode.
// Arguments: threads, tokens a pass, dtype (0 q8_0, 1 q4_0, 2 q4_K). One iteration is one pass
// over the 22 layers; its bytes_per_second counts the weight bytes that pass reads. The weights
// are random (a speed measurement only: tests/engine/bundle_ffn_test.cc checks the kernel
// against the matrices). Run (medians of 5, as in docs/benchmarks.md):
//   build/bench/flashlm_ffn_bench --benchmark_repetitions=5 --benchmark_report_aggregates_only
#include <benchmark/benchmark.h>

#include <cstring>
#include <memory>
#include <random>
#include <vector>

#include "bench/engine/huge_buffer.h"
#include "engine/bundle_ffn.h"
#include "engine/kernels.h"
#include "engine/thread_pool.h"
#include "engine/transformer.h"
#include "layout/bundle_layout.h"
#include "layout/dtype.h"
#include "storage/check.h"

namespace flashlm::engine {
namespace {

constexpr uint32_t kLayers = 22, kDim = 2048, kHidden = 5632, kChunk = 256;
// The kernels are made as the engine makes them: for the Transformer's default batch (the
// tokens a Forward call may carry), whatever the tokens a pass. Their chunks of positions and
// gate / up units follow from it (BundleFfnKernel::AccumulateRegrouped): sized for one token a
// pass they were 256 positions, 44 thread meetings a layer where the engine has 2.
const uint32_t kMaxBatch = TransformerOptions{}.max_batch;
// The dtypes benchmarked (the third argument indexes them): a q8_0 store, a q4_0 one, and the
// q4_K bundles of a repacked Q4_K_M model.
constexpr layout::DType kDTypes[] = {layout::DType::kQ8_0, layout::DType::kQ4_0,
                                     layout::DType::kQ4_K};

// Fills `n_rows` rows of `cols` values in `dtype` at `out`: one row of uniform values in
// [-1, 1) quantised once, then rotated by a random number of blocks for each row (different
// bytes without a quantiser call per row).
void FillRows(layout::DType dtype, std::byte* out, uint64_t n_rows, uint32_t cols,
              std::mt19937& rng) {
  const uint64_t row_bytes = layout::RowBytes(dtype, cols);
  std::vector<float> row(cols);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  for (float& v : row) v = u(rng);
  std::vector<std::byte> q(row_bytes);
  CHECK_OK(layout::QuantizeRow(dtype, row, ByteSpan(q.data(), row_bytes)));
  const uint64_t block = layout::RowBytes(dtype, layout::BlockValues(dtype));
  const uint64_t blocks = row_bytes / block;
  std::uniform_int_distribution<uint64_t> shift(0, blocks - 1);
  for (uint64_t r = 0; r < n_rows; ++r) {
    const uint64_t s = shift(rng);
    for (uint64_t b = 0; b < blocks; ++b) {
      std::memcpy(out + r * row_bytes + b * block, q.data() + ((b + s) % blocks) * block, block);
    }
  }
}

// The dense model: per layer gate and up (hidden x dim) and down (dim x hidden), in strips.
struct DenseFfn {
  explicit DenseFfn(layout::DType dtype) {
    std::mt19937 rng(1);
    const uint64_t gate_bytes = kHidden * layout::RowBytes(dtype, kDim);
    const uint64_t down_bytes = kDim * layout::RowBytes(dtype, kHidden);
    per_layer = 2 * gate_bytes + down_bytes;
    buffer = std::make_unique<HugeBuffer>(kLayers * per_layer);
    for (uint32_t l = 0; l < kLayers; ++l) {
      std::byte* base = buffer->data + l * per_layer;
      FillRows(dtype, base, 2 * kHidden, kDim, rng);
      FillRows(dtype, base + 2 * gate_bytes, kDim, kHidden, rng);
      const auto keep = [&](std::byte* p, uint32_t rows, uint32_t cols, uint64_t n) {
        return KeepInStrips(MatrixView{dtype, rows, cols, ConstByteSpan(p, n)}, ByteSpan(p, n));
      };
      gate.push_back(keep(base, kHidden, kDim, gate_bytes));
      up.push_back(keep(base + gate_bytes, kHidden, kDim, gate_bytes));
      down.push_back(keep(base + 2 * gate_bytes, kDim, kHidden, down_bytes));
    }
  }
  std::unique_ptr<HugeBuffer> buffer;
  uint64_t per_layer = 0;
  std::vector<MatrixView> gate, up, down;
};

// The same FFN as gate-up-down bundles, every layer's back to back.
struct BundleFfn {
  explicit BundleFfn(layout::DType dtype)
      : geometry(layout::BundleGeometry::Make(layout::BundleKind::kGateUpDown, dtype, kDim, 64)) {
    std::mt19937 rng(2);
    buffer = std::make_unique<HugeBuffer>(uint64_t{kLayers} * kHidden * geometry.stride_bytes);
    // Each layer's bundles from 3 x hidden rows of dim values (gate, up, down column).
    std::vector<std::byte> parts(3 * kHidden * geometry.part_bytes);
    for (uint32_t l = 0; l < kLayers; ++l) {
      FillRows(dtype, parts.data(), 3 * kHidden, kDim, rng);
      for (uint64_t i = 0; i < kHidden; ++i) {
        std::memcpy(buffer->data + (uint64_t{l} * kHidden + i) * geometry.stride_bytes,
                    parts.data() + 3 * i * geometry.part_bytes, 3 * geometry.part_bytes);
      }
    }
  }
  layout::BundleGeometry geometry;
  std::unique_ptr<HugeBuffer> buffer;
};

// One model of each kind at a time (the last dtype asked for): 0.8-0.9 GB each.
template <typename Model>
const Model& Held(layout::DType dtype) {
  static std::unique_ptr<Model> m;
  static layout::DType held;
  if (!m || held != dtype) {
    m.reset();
    m = std::make_unique<Model>(dtype);
    held = dtype;
  }
  return *m;
}

// Floats on 64-byte boundaries, as the engine's arena gives its kernels (threads that split a
// row's outputs then never write the same cache line).
template <typename T>
struct CacheLineAllocator {
  using value_type = T;
  CacheLineAllocator() = default;
  template <typename U>
  CacheLineAllocator(const CacheLineAllocator<U>&) {}
  T* allocate(size_t n) {
    return static_cast<T*>(::operator new (n * sizeof(T), std::align_val_t{64}));
  }
  void deallocate(T* p, size_t) { ::operator delete (p, std::align_val_t{64}); }
  bool operator==(const CacheLineAllocator&) const { return true; }
};
using Floats = std::vector<float, CacheLineAllocator<float>>;

Floats Input(uint32_t n) {
  std::mt19937 rng(3);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  Floats x(uint64_t{n} * kDim);
  for (float& v : x) v = nd(rng);
  return x;
}

void BM_DenseFfn(benchmark::State& state) {
  const uint32_t threads = static_cast<uint32_t>(state.range(0));
  const uint32_t n = static_cast<uint32_t>(state.range(1));
  const DenseFfn& d = Held<DenseFfn>(kDTypes[state.range(2)]);
  ThreadPool pool(threads);
  const Floats x = Input(n);
  Floats g(uint64_t{n} * kHidden), u(g.size()), out(uint64_t{n} * kDim);
  std::vector<std::byte> scratch(MatMulScratchBytes(kHidden, n));
  for (auto _ : state) {
    for (uint32_t l = 0; l < kLayers; ++l) {
      const MatrixView* gate_up[] = {&d.gate[l], &d.up[l]};
      const std::span<float> gate_up_out[] = {g, u};
      MatMulShared(gate_up, x, n, gate_up_out, scratch, pool);
      SwiGlu(g, u, false);
      MatMul(d.down[l], g, n, out, scratch, pool);
    }
    benchmark::DoNotOptimize(out.data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * kLayers * d.per_layer));
}

// A bundle FFN kernel for a benchmark's threads and tokens (its first two arguments), with its
// input and output.
struct KernelRun {
  KernelRun(const benchmark::State& state, const layout::BundleGeometry& geometry)
      : threads(static_cast<uint32_t>(state.range(0))),
        n(static_cast<uint32_t>(state.range(1))),
        pool(threads),
        x(Input(n)),
        out(uint64_t{n} * kDim) {
    auto k = BundleFfnKernel::Create(geometry, kHidden, kMaxBatch, kChunk, false, pool);
    CHECK_OK(k.status());
    kernel = std::move(*k);
  }
  const uint32_t threads, n;
  ThreadPool pool;
  std::unique_ptr<BundleFfnKernel> kernel;
  const Floats x;
  Floats out;
};

// `every`: compute positions 0, every, 2 * every, ... of each layer.
void RunBundles(benchmark::State& state, uint32_t every) {
  const BundleFfn& b = Held<BundleFfn>(kDTypes[state.range(2)]);
  KernelRun run(state, b.geometry);
  std::vector<uint32_t> positions;
  for (uint32_t p = 0; p < kHidden; p += every) positions.push_back(p);
  std::vector<const std::byte*> ptrs(positions.size());
  for (auto _ : state) {
    for (uint32_t l = 0; l < kLayers; ++l) {
      const std::byte* layer = b.buffer->data + uint64_t{l} * kHidden * b.geometry.stride_bytes;
      for (size_t k = 0; k < positions.size(); ++k) {
        ptrs[k] = layer + uint64_t{positions[k]} * b.geometry.stride_bytes;
      }
      run.kernel->Begin(run.x, run.n, run.out, nullptr, {});
      for (size_t k = 0; k < positions.size(); k += kChunk) {
        const size_t m = std::min<size_t>(kChunk, positions.size() - k);
        run.kernel->Accumulate(std::span<const uint32_t>(positions).subspan(k, m),
                               std::span<const std::byte* const>(ptrs).subspan(k, m));
      }
    }
    benchmark::DoNotOptimize(run.out.data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * kLayers * positions.size() *
                                               b.geometry.bundle_bytes));
}

void BM_BundleFfn(benchmark::State& state) { RunBundles(state, 1); }
void BM_BundleFfnSparse(benchmark::State& state) { RunBundles(state, 10); }

void Args(benchmark::internal::Benchmark* b) {
  b->ArgNames({"threads", "tokens", "dtype"})->Unit(benchmark::kMillisecond)->UseRealTime();
  for (int dtype = 0; dtype < 3; ++dtype) {
    for (int threads : {1, 2}) {
      for (int tokens : {1, 4, 16}) b->Args({threads, tokens, dtype});
    }
  }
}

BENCHMARK(BM_DenseFfn)->Apply(Args);
BENCHMARK(BM_BundleFfn)->Apply(Args);
BENCHMARK(BM_BundleFfnSparse)->Apply(Args);
// The same bundles with their parts regrouped as a dense FFN keeps its pinned bundles
// (NeuronSource's regroup_pinned): gate and up rows as matrices in strips, the down columns laid
// out a part a thread (DownLayout), for 1 and for 2 threads.
struct RegroupedFfn {
  explicit RegroupedFfn(layout::DType dtype) {
    const BundleFfn b(dtype);
    geometry = b.geometry;
    const uint64_t part = geometry.part_bytes, mat = uint64_t{kHidden} * part;
    buffer = std::make_unique<HugeBuffer>(kLayers * 4 * mat);  // gate, up, down twice
    for (uint32_t t = 0; t < 2; ++t) columns[t].resize(uint64_t{kLayers} * kHidden);
    for (uint32_t l = 0; l < kLayers; ++l) {
      const std::byte* layer = b.buffer->data + uint64_t{l} * kHidden * geometry.stride_bytes;
      std::byte* base = buffer->data + uint64_t{l} * 4 * mat;
      for (uint64_t i = 0; i < kHidden; ++i) {
        const std::byte* bundle = layer + i * geometry.stride_bytes;
        for (uint64_t p = 0; p < 2; ++p) {  // gate, up
          std::memcpy(base + p * mat + i * part, bundle + p * part, part);
        }
        for (uint32_t t = 0; t < 2; ++t) {
          columns[t][l * kHidden + i] = DownLayout::For(geometry, t + 1)
                                            .Place(base + (2 + t) * mat, kHidden,
                                                   static_cast<uint32_t>(i), bundle + 2 * part);
        }
      }
      // Regroup rewrites gate and up into strips, so once; the second view differs in down only.
      RegroupedBundles r =
          Regroup(geometry, kHidden, ByteSpan(base, mat), ByteSpan(base + mat, mat),
                  std::span(columns[0]).subspan(uint64_t{l} * kHidden, kHidden),
                  DownLayout::For(geometry, 1));
      layers[0].push_back(r);
      r.down = std::span(columns[1]).subspan(uint64_t{l} * kHidden, kHidden);
      r.down_layout = DownLayout::For(geometry, 2);
      layers[1].push_back(r);
    }
  }
  layout::BundleGeometry geometry;
  std::unique_ptr<HugeBuffer> buffer;
  std::vector<const std::byte*> columns[2];  // [threads - 1]
  std::vector<RegroupedBundles> layers[2];   // [threads - 1][layer]
};

void BM_BundleFfnRegrouped(benchmark::State& state) {
  const RegroupedFfn& r = Held<RegroupedFfn>(kDTypes[state.range(2)]);
  KernelRun run(state, r.geometry);
  for (auto _ : state) {
    for (uint32_t l = 0; l < kLayers; ++l) {
      run.kernel->Begin(run.x, run.n, run.out, nullptr, {});
      run.kernel->AccumulateRegrouped(r.layers[run.threads - 1][l]);
    }
    benchmark::DoNotOptimize(run.out.data());
  }
  state.SetBytesProcessed(
      static_cast<int64_t>(state.iterations() * kLayers * kHidden * r.geometry.bundle_bytes));
}
BENCHMARK(BM_BundleFfnRegrouped)->Apply(Args);

}  // namespace
}  // namespace flashlm::engine

BENCHMARK_MAIN();
