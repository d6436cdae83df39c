// flashlm_dot_rows_bench: what a one-token gate/up product costs when its rows are separate (the
// neuron bundles' gate and up rows, through DotRows, 16 rows at a time) against the same rows
// kept as a matrix in strips (MatMulRows, as a GGUF's matrices are loaded), for the block dtypes
// the bundle FFN takes. Rows of dim 2048 (the 1b model); `rows` 128 (gate and up of 64 bundles,
// about 0.2-0.4 MiB: in L2, so the figure is compute) or 180224 (gate and up of 90112 bundles,
// 16 layers of the 1b model's 5632 neurons, 0.3-0.6 GiB: from DRAM). The next group's bundles
// are asked for as DotRows' `ahead`, as BundleFfnKernel does. Bundles are gate-up-down, back to
// back; the matrix holds the same rows in the same order. items_per_second counts rows.
// BM_MatMulF32 times one token's decode over an f32 matrix of 90112 x 2048 (0.7 GiB, from DRAM)
// kept row-major (`strips` 0, as before f32 strips) or in strips (1, as a loaded GGUF's are:
// rows 2 at a time in 256-column pieces). Run:
//   build/bench/flashlm_dot_rows_bench --benchmark_repetitions=5 --benchmark_report_aggregates_only
#include <benchmark/benchmark.h>

#include <cstring>
#include <random>
#include <vector>

#include "bench/engine/huge_buffer.h"
#include "engine/kernels.h"
#include "layout/dtype.h"
#include "storage/check.h"

namespace flashlm::engine {
namespace {

constexpr uint32_t kDim = 2048;
constexpr layout::DType kDTypes[] = {layout::DType::kQ8_0, layout::DType::kQ4_0,
                                     layout::DType::kQ4_K, layout::DType::kQ6_K};

// One row of `dtype` (random values in [-1, 1), quantised once): every row of the benchmarks
// (the kernels' speed does not depend on the values).
std::vector<std::byte> Row(layout::DType dtype) {
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<float> v(kDim);
  for (float& f : v) f = u(rng);
  std::vector<std::byte> q(layout::RowBytes(dtype, kDim));
  CHECK_OK(layout::QuantizeRow(dtype, v, ByteSpan(q.data(), q.size())));
  return q;
}

// One token's activations, quantised as MatMul quantises them.
struct Token {
  Token() : x(kDim), qx(MatMulScratchBytes(kDim, 1)) {
    std::mt19937 rng(2);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    for (float& f : x) f = nd(rng);
    QuantizeActivations(x, kDim, 1, qx);
  }
  std::vector<float> x;
  std::vector<std::byte> qx;
};

// Arguments: dtype index, rows.
void BM_DotRowsBundles(benchmark::State& state) {
  const layout::DType dtype = kDTypes[state.range(0)];
  const uint64_t rows = static_cast<uint64_t>(state.range(1));
  const std::vector<std::byte> row = Row(dtype);
  const uint64_t rb = row.size(), bundle = 3 * rb, bundles = rows / 2;
  HugeBuffer buf(bundles * bundle);
  for (uint64_t i = 0; i < 3 * bundles; ++i) std::memcpy(buf.data + i * rb, row.data(), rb);
  const Token tok;
  std::vector<float> out(rows);
  for (auto _ : state) {
    for (uint64_t b0 = 0; b0 < bundles; b0 += 8) {
      const std::byte* ptrs[16];
      for (uint64_t j = 0; j < 8; ++j) {
        ptrs[2 * j] = buf.data + (b0 + j) * bundle;
        ptrs[2 * j + 1] = ptrs[2 * j] + rb;
      }
      ConstByteSpan ahead;
      if (b0 + 16 <= bundles) ahead = ConstByteSpan(buf.data + (b0 + 8) * bundle, 8 * bundle);
      DotRows(dtype, kDim, std::span<const std::byte* const>(ptrs, 16), tok.x, 1, tok.qx,
              out.data() + 2 * b0, ahead);
    }
    benchmark::DoNotOptimize(out.data());
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * rows));
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * rows * rb));
}

void BM_MatMulStrips(benchmark::State& state) {
  const layout::DType dtype = kDTypes[state.range(0)];
  const uint32_t rows = static_cast<uint32_t>(state.range(1));
  const std::vector<std::byte> row = Row(dtype);
  const uint64_t rb = row.size();
  HugeBuffer buf(rows * rb);
  for (uint64_t i = 0; i < rows; ++i) std::memcpy(buf.data + i * rb, row.data(), rb);
  const MatrixView w =
      KeepInStrips(MatrixView{dtype, rows, kDim, ConstByteSpan(buf.data, rows * rb)},
                   ByteSpan(buf.data, rows * rb));
  const Token tok;
  std::vector<float> out(rows);
  for (auto _ : state) {
    MatMulRows(w, tok.x, 1, tok.qx, 0, rows, out);
    benchmark::DoNotOptimize(out.data());
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * rows));
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * rows * rb));
}

// Arguments: strips (0 or 1). The values are random; the rows are the same either way.
void BM_MatMulF32(benchmark::State& state) {
  const bool strips = state.range(0) != 0;
  const uint32_t rows = 16 * 5632;
  const uint64_t rb = uint64_t{kDim} * sizeof(float);
  HugeBuffer buf(rows * rb);
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  float* v = reinterpret_cast<float*>(buf.data);
  for (uint64_t i = 0; i < uint64_t{rows} * kDim; ++i) v[i] = u(rng);
  MatrixView w{layout::DType::kF32, rows, kDim, ConstByteSpan(buf.data, rows * rb)};
  if (strips) {
    w = KeepInStrips(w, ByteSpan(buf.data, rows * rb));
    if (!w.strips) {
      state.SkipWithError("this build keeps no f32 matrix in strips (needs AVX-512)");
      return;
    }
  }
  const Token tok;
  std::vector<float> out(rows);
  for (auto _ : state) {
    MatMulRows(w, tok.x, 1, {}, 0, rows, out);
    benchmark::DoNotOptimize(out.data());
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * rows));
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * rows * rb));
}

void Args(benchmark::internal::Benchmark* b) {
  b->ArgNames({"dtype", "rows"})->Unit(benchmark::kMicrosecond);
  for (int dtype = 0; dtype < 4; ++dtype) {
    for (int rows : {128, 16 * 5632 * 2}) b->Args({dtype, rows});  // L2; 16 layers from DRAM
  }
}

BENCHMARK(BM_DotRowsBundles)->Apply(Args);
BENCHMARK(BM_MatMulStrips)->Apply(Args);
BENCHMARK(BM_MatMulF32)->ArgName("strips")->Arg(0)->Arg(1)->Unit(benchmark::kMicrosecond);

}  // namespace
}  // namespace flashlm::engine

BENCHMARK_MAIN();
