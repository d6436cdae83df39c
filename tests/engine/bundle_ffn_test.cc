// BundleFfnKernel's threshold rule (FiringPositions with a cut, set_mask), end to end through
// Transformer with `--sparsity threshold`: at threshold 0 the output is bit-identical to the dense
// bundle path (logits and greedy tokens) on a synth SiLU model and on stories260K; at a positive
// cut fewer neurons are computed and the output moves.
#include "engine/bundle_ffn.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "engine/generator.h"
#include "engine/session.h"
#include "layout/checkpoint.h"
#include "layout/ffn_thresholds.h"
#include "layout/repack.h"
#include "layout/store_reader.h"
#include "layout/synth.h"
#include "tests/test_util.h"

namespace flashlm::engine {
namespace {

namespace fs = std::filesystem;

// Uniform values in [-0.5, 0.5) from a fixed seed (a linear congruential generator: the same
// values on every platform).
struct Uniform {
  uint32_t seed;
  float operator()() {
    seed = seed * 1664525u + 1013904223u;
    return static_cast<float>(seed >> 8) / static_cast<float>(1u << 24) - 0.5f;
  }
};

// `src` repacked into `out` with gate+up-down bundles.
void RepackSeparate(const std::string& src_path, const std::string& out) {
  auto src = layout::OpenCheckpoint(src_path);
  ASSERT_TRUE(src.ok()) << src.status().ToString();
  layout::RepackOptions ro;
  ro.bundle_kind = layout::BundleKind::kGateSeparate;
  ro.alignment_bytes = 512;
  ASSERT_TRUE(layout::Repack(**src, out, ro).ok());
}

std::string MakeSiluStore(const testing::ScratchDir& dir) {
  layout::SynthOptions so;
  so.config = *layout::SynthShape("tiny");
  so.config.activation = layout::Activation::kSilu;
  so.dtype = layout::DType::kQ8_0;
  so.seed = 5;
  so.out_path = (dir / "silu.gguf").string();
  EXPECT_TRUE(layout::SynthesizeGguf(so).ok());
  const std::string store = (dir / "silu").string();
  RepackSeparate(so.out_path, store);
  return store;
}

// Writes `cut` for every layer as the store's thresholds file.
void WriteThresholds(const std::string& store, float cut) {
  auto reader = layout::StoreReader::Open(store);
  ASSERT_TRUE(reader.ok()) << reader.status().ToString();
  layout::FfnThresholds t;
  t.store_identity = (*reader)->identity();
  t.hidden_dim = (*reader)->config().hidden_dim;
  t.target_sparsity = 0.5;
  t.thresholds.assign((*reader)->config().n_layers, cut);
  t.calibrated_sparsity.assign((*reader)->config().n_layers, 0.5);
  ASSERT_TRUE(
      layout::SaveFfnThresholds(t, store + "/" + std::string(layout::kFfnThresholdsFileName)).ok());
}

struct Trace {
  std::vector<int32_t> ids;
  std::vector<float> logits;  // the prefill's last logits, then every decode step's
  double computed = 0;        // decode steps' fraction of neurons computed
  FfnSparsity sparsity = FfnSparsity::kAuto;
};

// Greedy decoding of `steps` tokens after a fixed prompt (prefilled as one batch).
Result<Trace> Greedy(const std::string& store, FfnSparsity sparsity, uint32_t steps,
                     uint64_t budget = 0) {
  SessionOptions o;
  o.threads = 2;
  o.budgeted = true;
  o.budget_bytes = budget;
  o.transformer.max_context = 64;
  o.transformer.sparsity = sparsity;
  o.streaming.chunk_bundles = 16;
  ASSIGN_OR_RETURN(std::unique_ptr<Session> s, Session::Open(store, o));
  Trace t;
  t.sparsity = s->model().sparsity();
  std::vector<int32_t> ids = {1, 7, 42, 99, 5, 300, 12};
  std::span<const float> logits;
  ASSIGN_OR_RETURN(logits, Prefill(s->model(), ids, 0));
  s->ResetStats();
  for (uint32_t i = 0; i < steps; ++i) {
    t.logits.insert(t.logits.end(), logits.begin(), logits.end());
    ids.push_back(
        static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin()));
    ASSIGN_OR_RETURN(logits, s->model().Forward(std::span<const int32_t>(&ids.back(), 1),
                                                static_cast<uint32_t>(ids.size() - 1)));
  }
  t.logits.insert(t.logits.end(), logits.begin(), logits.end());
  t.ids = ids;
  t.computed = s->stats().ffn_computed_fraction();
  return t;
}

void ExpectIdentical(const Trace& a, const Trace& b, const std::string& what) {
  EXPECT_EQ(a.ids, b.ids) << what;
  ASSERT_EQ(a.logits.size(), b.logits.size()) << what;
  EXPECT_EQ(0, std::memcmp(a.logits.data(), b.logits.data(), a.logits.size() * sizeof(float)))
      << what << ": logits differ";
}

// The kernel against the matrices its bundles hold, bit for bit: gate and up products as MatMul
// computes them, h = act(g) * u, then out += h * down column in position order (AxpyRow), for
// both bundle kinds, one token and a batch, 1 and 2 threads, bundles adjacent in memory or
// scattered, in several Accumulate calls. (One q8_0 token reads adjacent bundles front to back
// and prefetches scattered ones, a batch goes through 4-row tiles, q4_0 / q4_K / q6_K through
// 16-row strips: all must give MatMul's products.)
TEST(BundleFfnKernelTest, MatchesTheMatricesBitForBit) {
  constexpr uint32_t kHidden = 40;
  for (layout::DType dtype : {layout::DType::kQ8_0, layout::DType::kF32, layout::DType::kBF16,
                              layout::DType::kQ4_0, layout::DType::kQ4_K, layout::DType::kQ6_K}) {
    const uint32_t kDim = layout::BlockValues(dtype) > 32 ? 512 : 96;  // whole super-blocks
    for (layout::BundleKind kind :
         {layout::BundleKind::kGateUpDown, layout::BundleKind::kGateSeparate}) {
      const layout::BundleGeometry g = layout::BundleGeometry::Make(kind, dtype, kDim, 64);
      const uint64_t rb = g.part_bytes;
      Uniform rnd{3};
      // gate, up and down^T as matrices (hidden x dim rows of `dtype`).
      std::vector<std::byte> gate(kHidden * rb), up(kHidden * rb), down(kHidden * rb);
      std::vector<float> row(kDim);
      for (std::vector<std::byte>* m : {&gate, &up, &down}) {
        for (uint32_t i = 0; i < kHidden; ++i) {
          for (float& v : row) v = rnd();
          ASSERT_TRUE(layout::QuantizeRow(dtype, row, ByteSpan(m->data() + i * rb, rb)).ok());
        }
      }
      for (bool reversed : {false, true}) {
        // In position order (each bundle right after the previous one: read front to back) or
        // reversed (position i's bundle far from i+1's: the next one's rows prefetched instead).
        std::vector<std::byte> bundles(kHidden * g.stride_bytes);
        std::vector<const std::byte*> ptrs(kHidden);
        std::vector<uint32_t> all(kHidden);
        for (uint32_t i = 0; i < kHidden; ++i) {
          std::byte* b = bundles.data() + (reversed ? kHidden - 1 - i : i) * g.stride_bytes;
          if (g.has_gate()) std::memcpy(b + g.gate_offset(), gate.data() + i * rb, rb);
          std::memcpy(b + g.up_offset(), up.data() + i * rb, rb);
          std::memcpy(b + g.down_offset(), down.data() + i * rb, rb);
          ptrs[i] = b;
          all[i] = i;
        }
        const MatrixView gate_m{dtype, kHidden, kDim, gate}, up_m{dtype, kHidden, kDim, up};
        for (uint32_t n : {1u, 3u}) {
          std::vector<float> x(n * kDim);
          for (float& v : x) v = rnd();
          // Reference: MatMul for gate and up, AxpyRow for the down columns in position order.
          ThreadPool one(1);
          std::vector<std::byte> scratch(MatMulScratchBytes(kDim, n));
          std::vector<float> gv(n * kHidden), uv(n * kHidden), want(n * kDim, 0.0f);
          MatMul(gate_m, x, n, gv, scratch, one);
          MatMul(up_m, x, n, uv, scratch, one);
          for (uint32_t i = 0; i < kHidden; ++i) {
            std::vector<float> h(n);
            for (uint32_t t = 0; t < n; ++t) {
              float a = gv[t * kHidden + i];
              SwiGlu(std::span<float>(&a, 1), std::span<const float>(&uv[t * kHidden + i], 1),
                     false);
              h[t] = a;
            }
            AxpyRow(dtype, down.data() + i * rb, kDim, h.data(), n, want.data(), kDim);
          }
          for (uint32_t threads : {1u, 2u}) {
            ThreadPool pool(threads);
            auto k = BundleFfnKernel::Create(g, kHidden, n, 16, false, pool);
            ASSERT_TRUE(k.ok()) << k.status().ToString();
            std::vector<float> out(n * kDim);
            (*k)->Begin(x, n, out, g.has_gate() ? nullptr : &gate_m, {});
            for (uint32_t p = 0; p < kHidden; p += 16) {
              const uint32_t m = std::min(16u, kHidden - p);
              (*k)->Accumulate(std::span<const uint32_t>(all).subspan(p, m),
                               std::span<const std::byte* const>(ptrs).subspan(p, m));
            }
            ASSERT_EQ(0, std::memcmp(out.data(), want.data(), out.size() * sizeof(float)))
                << layout::DTypeName(dtype) << " kind " << static_cast<int>(kind) << ", " << n
                << " tokens, " << threads << " threads, reversed " << reversed << ": out[0] "
                << out[0] << " vs " << want[0];
          }
        }
      }
    }
  }
}

// A regrouped layer's down columns are cut into as many equal parts of whole blocks as the threads
// allow: the largest count dividing the blocks, else one part (a partial last block included).
TEST(BundleFfnKernelTest, DownLayoutCutsWholeBlocksEvenly) {
  struct Case {
    layout::DType dtype;
    uint32_t dim, threads, parts;
  };
  for (const Case& c :
       {Case{layout::DType::kQ8_0, 2048, 1, 1}, Case{layout::DType::kQ8_0, 2048, 2, 2},
        Case{layout::DType::kQ8_0, 128, 3, 2}, Case{layout::DType::kQ8_0, 96, 3, 3},
        Case{layout::DType::kQ6_K, 768, 2, 1}, Case{layout::DType::kQ4_K, 2048, 3, 2},
        Case{layout::DType::kF32, 100, 2, 1}, Case{layout::DType::kF32, 64, 4, 2}}) {
    const layout::BundleGeometry g =
        layout::BundleGeometry::Make(layout::BundleKind::kGateUpDown, c.dtype, c.dim, 64);
    const DownLayout d = DownLayout::For(g, c.threads);
    const std::string what = std::string(layout::DTypeName(c.dtype)) + " x " +
                             std::to_string(c.dim) + ", " + std::to_string(c.threads) + " threads";
    EXPECT_EQ(d.parts, c.parts) << what;
    EXPECT_EQ(d.part_rows * d.parts, c.dim) << what;
    EXPECT_EQ(d.Bytes(5), 5 * layout::RowBytes(c.dtype, c.dim)) << what;
  }
}

// AccumulateRegrouped over a layer's first positions (their parts regrouped: gate and up in
// strips where this build reads them so, the rest row-major, down columns a part a thread or in
// one part), then Accumulate over the rest, gives what Accumulate over every bundle gives, bit for
// bit: out, the captured h and gate outputs, with a permutation, with and without a threshold mask,
// and out with nothing captured (the unmasked path that takes a unit's h at once); every dtype,
// both bundle kinds, a count with and without a partial strip, 1 / 3 / 17 tokens, 1-3 threads. 290
// positions in one chunk (the engine's sizes) take several units of strips.
TEST(BundleFfnKernelTest, RegroupedMatchesTheBundlesBitForBit) {
  constexpr uint32_t kHidden = 300;
  for (layout::DType dtype :
       {layout::DType::kQ8_0, layout::DType::kQ4_0, layout::DType::kQ4_K, layout::DType::kQ6_K,
        layout::DType::kF32, layout::DType::kF16, layout::DType::kBF16}) {
    // Widths the strips take (q8_0 / q4_0: an even number of blocks; f32: 256 columns).
    const uint32_t kDim = layout::BlockValues(dtype) > 32 ? 512
                          : dtype == layout::DType::kF32  ? 256
                                                          : 128;
    for (layout::BundleKind kind :
         {layout::BundleKind::kGateUpDown, layout::BundleKind::kGateSeparate}) {
      const layout::BundleGeometry g = layout::BundleGeometry::Make(kind, dtype, kDim, 64);
      const uint64_t part = g.part_bytes;
      Uniform rnd{11};
      std::vector<std::byte> gate(kHidden * part), bundles(kHidden * g.stride_bytes);
      std::vector<float> row(kDim);
      const auto fill = [&](std::byte* at) {
        for (float& v : row) v = rnd();
        ASSERT_TRUE(layout::QuantizeRow(dtype, row, ByteSpan(at, part)).ok());
      };
      std::vector<const std::byte*> ptrs(kHidden);
      std::vector<uint32_t> all(kHidden), perm(kHidden);
      for (uint32_t i = 0; i < kHidden; ++i) {
        fill(gate.data() + i * part);  // the dense gate of [up | down] bundles
        std::byte* b = bundles.data() + i * g.stride_bytes;
        for (uint32_t q = 0; q < (g.has_gate() ? 3u : 2u); ++q) fill(b + q * part);
        ptrs[i] = b;
        all[i] = i;
        perm[i] = (i * 17 + 5) % kHidden;  // position -> neuron
      }
      const MatrixView gate_m{dtype, kHidden, kDim, gate};
      for (uint32_t count : {37u, 48u, 290u}) {
        // The first `count` positions regrouped as NeuronSource keeps pinned bundles.
        std::vector<std::byte> rg(g.has_gate() ? count * part : 0), ru(count * part);
        for (uint32_t p = 0; p < count; ++p) {
          if (g.has_gate()) std::memcpy(rg.data() + p * part, ptrs[p] + g.gate_offset(), part);
          std::memcpy(ru.data() + p * part, ptrs[p] + g.up_offset(), part);
        }
        // The down columns laid out for 1-3 threads: one part, or as many as divide the blocks
        // (q8_0 / q4_0 / f32 4 to 8 blocks, q4_K / q6_K 2 super-blocks).
        std::vector<std::byte> down_bytes[3];
        std::vector<const std::byte*> down[3];
        RegroupedBundles regrouped[3];
        for (uint32_t threads = 1; threads <= 3; ++threads) {
          const DownLayout dl = DownLayout::For(g, threads);
          EXPECT_EQ(dl.parts, threads == 1 ? 1u : 2u) << layout::DTypeName(dtype);
          down_bytes[threads - 1].resize(dl.Bytes(count));
          for (uint32_t p = 0; p < count; ++p) {
            down[threads - 1].push_back(
                dl.Place(down_bytes[threads - 1].data(), count, p, ptrs[p] + g.down_offset()));
          }
          if (threads == 1) {
            regrouped[0] = Regroup(g, count, rg, ru, down[0], dl);  // rewrites rg, ru once
          } else {
            regrouped[threads - 1] = regrouped[0];
            regrouped[threads - 1].down = down[threads - 1];
            regrouped[threads - 1].down_layout = dl;
          }
        }
        const RegroupedBundles& r = regrouped[0];
        ASSERT_EQ(r.up.rows + r.up_tail.rows, count);
        // Where this build keeps such matrices in strips, the whole strips are.
        EXPECT_EQ(r.up.strips, CanInterleaveStrips(dtype, 32, kDim));
        EXPECT_EQ(r.up.rows, CanInterleaveStrips(dtype, 32, kDim) ? count / 16 * 16 : 0);
        for (uint32_t n : {1u, 3u, 17u}) {
          std::vector<float> x(n * kDim);
          for (float& v : x) v = rnd();
          for (int variant = 0; variant < 3; ++variant) {
            const float cut = variant == 2 ? 0.05f : -1.0f;
            const bool captured = variant != 1;
            for (uint32_t threads : {1u, 2u, 3u}) {
              ThreadPool pool(threads);
              // Room for more tokens than the batch has (h_ then holds n floats a position), and
              // a layer's regrouped positions in one chunk (the engine's sizes) or in chunks of
              // 20 positions or fewer.
              auto k = BundleFfnKernel::Create(g, kHidden, n + 2 * (threads - 1),
                                               cut < 0 ? kHidden : 20, false, pool);
              ASSERT_TRUE(k.ok()) << k.status().ToString();
              // Path 0: bundles only; 1: regrouped, the down columns a part a thread; 2: in one
              // part, each thread reading its piece of every column.
              std::vector<float> out[3], cap[3], gcap[3];
              for (int path = 0; path < 3; ++path) {
                out[path].resize(n * kDim);
                cap[path].resize(n * kHidden);
                gcap[path].resize(n * kHidden);
                (*k)->Begin(x, n, out[path], g.has_gate() ? nullptr : &gate_m, perm,
                            captured ? std::span<float>(cap[path]) : std::span<float>(),
                            captured ? std::span<float>(gcap[path]) : std::span<float>());
                (*k)->set_mask(cut);
                uint32_t p = 0;
                if (path > 0) {
                  (*k)->AccumulateRegrouped(regrouped[path == 1 ? threads - 1 : 0]);
                  p = count;
                }
                for (; p < kHidden; p += 20) {
                  const uint32_t m = std::min(20u, kHidden - p);
                  (*k)->Accumulate(std::span<const uint32_t>(all).subspan(p, m),
                                   std::span<const std::byte* const>(ptrs).subspan(p, m));
                }
              }
              const std::string what = std::string(layout::DTypeName(dtype)) + " kind " +
                                       std::to_string(static_cast<int>(kind)) + ", " +
                                       std::to_string(count) + " regrouped, " + std::to_string(n) +
                                       " tokens, cut " + std::to_string(cut) +
                                       (captured ? "" : ", nothing captured") + ", " +
                                       std::to_string(threads) + " threads";
              for (int path = 1; path < 3; ++path) {
                const std::string at = what + ", path " + std::to_string(path);
                ASSERT_EQ(0, std::memcmp(out[0].data(), out[path].data(), out[0].size() * 4)) << at;
                ASSERT_EQ(0, std::memcmp(cap[0].data(), cap[path].data(), cap[0].size() * 4)) << at;
                ASSERT_EQ(0, std::memcmp(gcap[0].data(), gcap[path].data(), gcap[0].size() * 4))
                    << at;
              }
            }
          }
        }
      }
    }
  }
}

// The kernel's rule against a hand computation: FiringPositions(cut) is the union over the batch
// of neurons with |silu(g)| > cut, and with set_mask(cut) each token gets only its own neurons
// above the cut (a neuron read for the other token adds nothing to it).
TEST(BundleFfnKernelTest, ThresholdMaskIsPerToken) {
  constexpr uint32_t kDim = 32, kHidden = 24, kN = 2;
  const layout::BundleGeometry g = layout::BundleGeometry::Make(layout::BundleKind::kGateSeparate,
                                                                layout::DType::kF32, kDim, 64);
  std::vector<float> gate(kHidden * kDim), up(kHidden * kDim), down(kHidden * kDim), x(kN * kDim);
  Uniform rnd{7};
  for (float& v : gate) v = rnd();
  for (float& v : up) v = rnd();
  for (float& v : down) v = rnd();
  for (float& v : x) v = rnd();
  std::vector<std::byte> bundles(kHidden * g.stride_bytes);
  std::vector<const std::byte*> ptrs(kHidden);
  std::vector<uint32_t> all(kHidden);
  for (uint32_t i = 0; i < kHidden; ++i) {
    std::byte* b = bundles.data() + i * g.stride_bytes;
    std::memcpy(b + g.up_offset(), up.data() + i * kDim, kDim * sizeof(float));
    std::memcpy(b + g.down_offset(), down.data() + i * kDim, kDim * sizeof(float));
    ptrs[i] = b;
    all[i] = i;
  }
  const MatrixView dense_gate{
      layout::DType::kF32, kHidden, kDim,
      ConstByteSpan(reinterpret_cast<const std::byte*>(gate.data()), gate.size() * sizeof(float))};
  ThreadPool pool(2);
  auto k = BundleFfnKernel::Create(g, kHidden, kN, kHidden, false, pool);
  ASSERT_TRUE(k.ok()) << k.status().ToString();
  std::vector<float> out(kN * kDim);
  std::vector<uint32_t> fired(kHidden);

  // Reference in double: per token, the neurons above the cut.
  std::vector<double> g_ref(kN * kHidden);
  for (uint32_t t = 0; t < kN; ++t) {
    for (uint32_t i = 0; i < kHidden; ++i) {
      double s = 0;
      for (uint32_t d = 0; d < kDim; ++d) s += double{gate[i * kDim + d]} * x[t * kDim + d];
      g_ref[t * kHidden + i] = s;
    }
  }
  // A cut between the activations' median values, so some neurons fire for one token only.
  std::vector<double> mags;
  for (double v : g_ref) mags.push_back(std::fabs(v / (1 + std::exp(-v))));
  std::sort(mags.begin(), mags.end());
  const float cut = static_cast<float>((mags[mags.size() / 2] + mags[mags.size() / 2 + 1]) / 2);

  (*k)->Begin(x, kN, out, &dense_gate, {});
  const uint32_t n_fired = (*k)->FiringPositions(fired, cut);
  std::vector<uint32_t> want_union;
  uint32_t one_token_only = 0;
  for (uint32_t i = 0; i < kHidden; ++i) {
    uint32_t above = 0;
    for (uint32_t t = 0; t < kN; ++t) {
      const double v = g_ref[t * kHidden + i];
      above += std::fabs(v / (1 + std::exp(-v))) > cut;
    }
    if (above > 0) want_union.push_back(i);
    one_token_only += above == 1;
  }
  ASSERT_GT(one_token_only, 0u) << "the data must exercise the per-token mask";
  EXPECT_EQ(std::vector<uint32_t>(fired.begin(), fired.begin() + n_fired), want_union);

  (*k)->set_mask(cut);
  std::vector<const std::byte*> sel;
  for (uint32_t i = 0; i < n_fired; ++i) sel.push_back(ptrs[fired[i]]);
  (*k)->Accumulate(std::span<const uint32_t>(fired.data(), n_fired), sel);
  for (uint32_t t = 0; t < kN; ++t) {
    for (uint32_t r = 0; r < kDim; ++r) {
      double want = 0;
      for (uint32_t i : want_union) {
        const double gv = g_ref[t * kHidden + i];
        double u = 0;
        for (uint32_t d = 0; d < kDim; ++d) u += double{up[i * kDim + d]} * x[t * kDim + d];
        const double silu = gv / (1 + std::exp(-gv));
        const double term = silu * u * down[i * kDim + r];
        if (std::fabs(silu) > cut) want += term;
      }
      EXPECT_NEAR(out[t * kDim + r], want, 1e-4) << "token " << t << " row " << r;
    }
  }
  // Without the mask, the union's other neurons add to each token: the result moves.
  std::vector<float> out2(kN * kDim);
  (*k)->Begin(x, kN, out2, &dense_gate, {});
  (*k)->Accumulate(std::span<const uint32_t>(fired.data(), n_fired), sel);
  double diff = 0;
  for (uint32_t j = 0; j < kN * kDim; ++j) diff += std::fabs(out2[j] - out[j]);
  EXPECT_GT(diff, 1e-3);
}

// Threshold 0 skips only neurons whose act(gate x) is exactly 0, which add exactly 0 (bundles
// are accumulated one by one in position order, so leaving them out changes no sum): output
// bit-identical to the dense bundle path, in DRAM and under the minimum budget (streamed).
TEST(BundleFfnThresholdTest, ZeroThresholdIsBitIdenticalToDenseOnSynth) {
  testing::ScratchDir dir;
  const std::string store = MakeSiluStore(dir);
  WriteThresholds(store, 0.0f);
  auto dense = Greedy(store, FfnSparsity::kDense, 24);
  ASSERT_TRUE(dense.ok()) << dense.status().ToString();
  auto zero = Greedy(store, FfnSparsity::kThreshold, 24);
  ASSERT_TRUE(zero.ok()) << zero.status().ToString();
  EXPECT_EQ(zero->sparsity, FfnSparsity::kThreshold);
  ExpectIdentical(*dense, *zero, "synth, unlimited");
  EXPECT_EQ(dense->computed, 1.0);

  // At the minimum budget (bundles streamed in chunks) too.
  SessionOptions probe;
  probe.threads = 2;
  probe.transformer.max_context = 64;
  probe.transformer.sparsity = FfnSparsity::kThreshold;
  probe.streaming.chunk_bundles = 16;
  probe.budgeted = true;
  probe.budget_bytes = 1;
  auto refused = Session::Open(store, probe);
  ASSERT_FALSE(refused.ok());
  const std::string msg(refused.status().message());
  const size_t at = msg.find("minimum of ");
  ASSERT_NE(at, std::string::npos) << msg;
  const uint64_t minimum = std::stoull(msg.substr(at + 11));
  auto dense_min = Greedy(store, FfnSparsity::kDense, 24, minimum);
  auto zero_min = Greedy(store, FfnSparsity::kThreshold, 24, minimum);
  ASSERT_TRUE(dense_min.ok()) << dense_min.status().ToString();
  ASSERT_TRUE(zero_min.ok()) << zero_min.status().ToString();
  ExpectIdentical(*dense_min, *zero_min, "synth, minimum budget");
  ExpectIdentical(*dense, *dense_min, "synth, dense at both budgets");
}

TEST(BundleFfnThresholdTest, ZeroThresholdIsBitIdenticalToDenseOnStories260K) {
  FLASHLM_REQUIRE_SHARED_MODEL(gguf, "stories260K-gguf/stories260K.gguf");
  testing::ScratchDir dir;
  const std::string store = (dir / "store").string();
  RepackSeparate(gguf.string(), store);
  WriteThresholds(store, 0.0f);
  auto dense = Greedy(store, FfnSparsity::kDense, 40);
  auto zero = Greedy(store, FfnSparsity::kThreshold, 40);
  ASSERT_TRUE(dense.ok()) << dense.status().ToString();
  ASSERT_TRUE(zero.ok()) << zero.status().ToString();
  ExpectIdentical(*dense, *zero, "stories260K");
}

// A positive cut computes fewer neurons and moves the logits.
TEST(BundleFfnThresholdTest, PositiveThresholdComputesFewerNeurons) {
  testing::ScratchDir dir;
  const std::string store = MakeSiluStore(dir);
  WriteThresholds(store, 0.05f);
  auto dense = Greedy(store, FfnSparsity::kDense, 8);
  auto cut = Greedy(store, FfnSparsity::kThreshold, 8);
  ASSERT_TRUE(dense.ok()) << dense.status().ToString();
  ASSERT_TRUE(cut.ok()) << cut.status().ToString();
  EXPECT_LT(cut->computed, 0.95);
  EXPECT_GT(cut->computed, 0.0);
  EXPECT_NE(0, std::memcmp(dense->logits.data(), cut->logits.data(),
                           std::min(dense->logits.size(), cut->logits.size()) * sizeof(float)));
}

// Threshold mode needs gate+up-down bundles and a thresholds file of the right store.
TEST(BundleFfnThresholdTest, RefusedWithoutSeparateGateOrThresholds) {
  testing::ScratchDir dir;
  const std::string store = MakeSiluStore(dir);
  auto missing = Greedy(store, FfnSparsity::kThreshold, 1);
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound) << missing.status().ToString();
  EXPECT_NE(missing.status().message().find("flashlm calibrate"), std::string::npos)
      << missing.status().ToString();

  layout::SynthOptions so;
  so.config = *layout::SynthShape("tiny");
  so.dtype = layout::DType::kQ8_0;
  so.out_path = (dir / "together.gguf").string();
  ASSERT_TRUE(layout::SynthesizeGguf(so).ok());
  auto src = layout::OpenCheckpoint(so.out_path);
  ASSERT_TRUE(src.ok());
  layout::RepackOptions ro;
  ro.bundle_kind = layout::BundleKind::kGateUpDown;
  const std::string together = (dir / "together").string();
  ASSERT_TRUE(layout::Repack(**src, together, ro).ok());
  WriteThresholds(together, 0.0f);
  auto refused = Greedy(together, FfnSparsity::kThreshold, 1);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), StatusCode::kInvalidArgument) << refused.status().ToString();
  EXPECT_NE(refused.status().message().find("gate+up-down"), std::string::npos)
      << refused.status().ToString();
}

// A damaged bundle read in threshold mode is Corruption naming the layer, as in every mode.
TEST(BundleFfnThresholdTest, CorruptBundleIsNamed) {
  testing::ScratchDir dir;
  const std::string store = MakeSiluStore(dir);
  WriteThresholds(store, 0.0f);  // every neuron with a non-zero activation: bundle 5 is read
  uint64_t offset = 0;
  {
    auto reader = layout::StoreReader::Open(store);
    ASSERT_TRUE(reader.ok());
    auto ext = (*reader)->BundleExtents(1, 5, 1);
    ASSERT_TRUE(ext.ok());
    offset = (*ext)[0].offset_bytes + 3;
  }
  testing::FlipByte(fs::path(store) / "data-00000.bin", offset, 0x40);
  SessionOptions o;
  o.threads = 2;
  o.transformer.max_context = 64;
  o.transformer.sparsity = FfnSparsity::kThreshold;
  o.streaming.chunk_bundles = 16;
  o.budgeted = true;
  o.budget_bytes = 1;
  auto refused = Session::Open(store, o);
  ASSERT_FALSE(refused.ok());
  const std::string msg(refused.status().message());
  const size_t at = msg.find("minimum of ");
  ASSERT_NE(at, std::string::npos) << msg;
  o.budget_bytes = std::stoull(msg.substr(at + 11));
  auto s = Session::Open(store, o);
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  auto r = (*s)->model().Forward(std::vector<int32_t>{1}, 0);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kCorruption) << r.status().ToString();
  EXPECT_NE(r.status().ToString().find("FFN layer 1"), std::string::npos) << r.status().ToString();
}

}  // namespace
}  // namespace flashlm::engine
