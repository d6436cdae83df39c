#include "engine/neuron_source.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>

#include "engine/bundle_ffn.h"
#include "engine/kernels.h"
#include "layout/repack.h"
#include "tests/layout/memory_checkpoint.h"
#include "tests/test_util.h"

namespace flashlm::engine {
namespace {

namespace fs = std::filesystem;
using layout::testing::MemoryCheckpoint;

constexpr uint32_t kDim = 64, kHidden = 172;

// A small q8_0 store (2 layers of 172 neurons, 204-byte bundles in 512-byte strides) whose
// ExtentReader allows `buffers` chunk buffers.
// (`dim` wider: larger bundles.)
std::unique_ptr<layout::StoreReader> MakeStore(const fs::path& dir, layout::BundleKind kind,
                                               uint32_t buffers = 3, uint32_t dim = kDim) {
  MemoryCheckpoint src = MemoryCheckpoint::Llama(dim, kHidden, 2, 50, layout::DType::kQ8_0);
  layout::RepackOptions o;
  o.alignment_bytes = 512;
  o.bundle_kind = kind;
  auto sum = layout::Repack(src, (dir / "store").string(), o);
  EXPECT_TRUE(sum.ok()) << sum.status().ToString();
  auto r = layout::StoreReader::Open((dir / "store").string());
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  if (!r.ok()) return nullptr;
  layout::ExtentReaderLimits limits;
  limits.queue_depth = 64 * buffers;
  limits.groups = buffers;
  EXPECT_TRUE((*r)->extent_reader().SetLimits(limits).ok());
  return std::move(*r);
}

std::vector<std::byte> Stored(layout::StoreReader& r, uint32_t layer, uint32_t position) {
  const layout::Extent e = r.BundleExtentAt(layer, position);
  std::vector<std::byte> out(e.raw_bytes);
  EXPECT_TRUE(r.ReadExtent(e, out).ok());
  return out;
}

// Serves every batch of a request; returns the positions in the order served and checks each
// bundle's bytes against the store's.
std::vector<uint32_t> Drain(NeuronSource& source, layout::StoreReader& r, uint32_t layer) {
  std::vector<uint32_t> seen;
  NeuronSource::Batch b;
  while (true) {
    Result<bool> more = source.Next(&b);
    EXPECT_TRUE(more.ok()) << more.status().ToString();
    if (!more.ok() || !*more) break;
    EXPECT_EQ(b.positions.size(), b.bundles.size());
    for (size_t k = 0; k < b.positions.size(); ++k) {
      const std::vector<std::byte> want = Stored(r, layer, b.positions[k]);
      EXPECT_EQ(std::memcmp(b.bundles[k], want.data(), want.size()), 0)
          << "layer " << layer << " position " << b.positions[k];
      seen.push_back(b.positions[k]);
    }
  }
  return seen;
}

// Any set of positions, pinned or streamed, contiguous or scattered, comes back in increasing
// order with the stored bytes; dense requests and scattered ones can follow each other, with
// and without read-ahead, merged or one read per bundle.
TEST(NeuronSourceTest, ServesScatteredAndDenseRequests) {
  ::flashlm::testing::ScratchDir dir;
  auto r = MakeStore(dir.path(), layout::BundleKind::kGateUpDown);
  ASSERT_NE(r, nullptr);
  for (int mode = 0; mode < 3; ++mode) {
    layout::ExtentReaderLimits limits;
    limits.queue_depth = 64 * 3;
    limits.groups = 3;
    ASSERT_TRUE(r->extent_reader().SetLimits(limits).ok());  // gives the groups back
    NeuronSourceOptions o;
    o.chunk_bundles = 16;
    o.chunk_buffers = 3;
    o.pipeline = mode == 0;
    o.coalesce = mode != 2;
    const uint32_t pinned[] = {5, 0};
    auto source = NeuronSource::Open(*r, pinned, o);
    ASSERT_TRUE(source.ok()) << source.status().ToString();
    NeuronSource& s = **source;
    EXPECT_EQ(s.pipelined(), mode == 0);
    EXPECT_EQ(s.coalesced(), mode != 2);
    const std::vector<uint32_t> scattered = {0, 2, 4, 5, 6, 7, 40, 41, 99, 150, 151, 171};
    std::vector<uint32_t> all(kHidden);
    for (uint32_t p = 0; p < kHidden; ++p) all[p] = p;
    for (int round = 0; round < 2; ++round) {
      ASSERT_TRUE(s.Begin(0).ok());
      EXPECT_EQ(Drain(s, *r, 0), all) << "mode " << mode;
      ASSERT_TRUE(s.Begin(1, scattered).ok());
      EXPECT_EQ(Drain(s, *r, 1), scattered);
      ASSERT_TRUE(s.Begin(0, scattered).ok());
      EXPECT_EQ(Drain(s, *r, 0), scattered);
      ASSERT_TRUE(s.Begin(1).ok());
      EXPECT_EQ(Drain(s, *r, 1), all);
      // An empty set serves nothing.
      ASSERT_TRUE(s.Begin(1, std::span<const uint32_t>()).ok());
      EXPECT_TRUE(Drain(s, *r, 1).empty());
    }
    // Pinned: layer 0's first 5 positions, from DRAM (all 5 when dense, 0, 2, 4 of the set).
    EXPECT_EQ(s.stats().bundles_resident, 2u * (5 + 3));
    EXPECT_EQ(s.stats().bundles_streamed, 2u * (kHidden - 5 + 12 + 9 + kHidden));
    // Bad requests.
    const std::vector<uint32_t> unsorted = {3, 2}, beyond = {kHidden};
    EXPECT_EQ(s.Begin(0, unsorted).code(), StatusCode::kInvalidArgument);
    EXPECT_EQ(s.Begin(0, beyond).code(), StatusCode::kInvalidArgument);
    EXPECT_EQ(s.Begin(2).code(), StatusCode::kInvalidArgument);
  }
}

// With regroup_pinned a dense request's pinned positions come as one regrouped batch: the down
// columns and the rows past the last whole strip are the stored bytes, and the strips multiply as
// the stored rows do; the streamed positions follow as bundles. Ad-hoc requests, prefetches and
// an LRU cache are refused, and a corrupt pinned bundle fails Open naming its layer.
TEST(NeuronSourceTest, RegroupedPinnedBundlesServeTheirParts) {
  for (layout::BundleKind kind :
       {layout::BundleKind::kGateUpDown, layout::BundleKind::kGateSeparate}) {
    ::flashlm::testing::ScratchDir dir;
    auto r = MakeStore(dir.path(), kind, 3, 4 * kDim);  // 8 blocks: 4 a part
    ASSERT_NE(r, nullptr);
    const layout::BundleGeometry g = r->FfnGeometry(0).value();
    NeuronSourceOptions o;
    o.chunk_bundles = 16;
    o.chunk_buffers = 3;
    o.regroup_pinned = true;
    o.regroup_threads = 2;  // the down columns in two parts
    constexpr uint32_t kPinned = 37;
    const uint32_t pinned[] = {kPinned, 0};
    auto source = NeuronSource::Open(*r, pinned, o);
    ASSERT_TRUE(source.ok()) << source.status().ToString();
    NeuronSource& s = **source;
    ASSERT_TRUE(s.Begin(0).ok());
    NeuronSource::Batch b;
    ASSERT_TRUE(s.Next(&b).value());
    ASSERT_NE(b.regrouped, nullptr);
    ASSERT_TRUE(b.bundles.empty());
    ASSERT_EQ(b.positions.size(), kPinned);
    const RegroupedBundles& rg = *b.regrouped;
    ASSERT_EQ(rg.count(), kPinned);
    ASSERT_EQ(rg.down_layout.parts, 2u);
    ASSERT_EQ(rg.down_layout.part_rows * 2, g.dim);
    EXPECT_EQ(rg.down_layout.group, ReadsInterleavedRows(g.dtype) ? 4u : 1u);
    EXPECT_EQ(rg.up.rows, CanInterleaveStrips(g.dtype, 32, g.dim) ? 32u : 0u);
    // The stored parts, as row-major matrices.
    std::vector<std::byte> gate(kPinned * g.part_bytes), up(kPinned * g.part_bytes);
    for (uint32_t p = 0; p < kPinned; ++p) {
      const std::vector<std::byte> want = Stored(*r, 0, p);
      if (g.has_gate()) {
        std::memcpy(gate.data() + p * g.part_bytes, want.data() + g.gate_offset(), g.part_bytes);
      }
      std::memcpy(up.data() + p * g.part_bytes, want.data() + g.up_offset(), g.part_bytes);
      const DownLayout& dl = rg.down_layout;
      for (uint32_t q = 0; q < dl.parts; ++q) {
        for (uint32_t r0 = 0; r0 < dl.part_rows; r0 += dl.block_rows) {  // block by block
          EXPECT_EQ(
              std::memcmp(
                  rg.down[p] + q * dl.PartStride(kPinned) + dl.RowOffset(kPinned, p, r0),
                  want.data() + g.down_offset() + q * dl.part_bytes + layout::RowBytes(g.dtype, r0),
                  dl.block_bytes),
              0)
              << p << " part " << q << " row " << r0;
        }
      }
    }
    for (uint32_t p = rg.up.rows; p < kPinned; ++p) {
      const auto row = [&](const MatrixView& m) { return m.row(p - rg.up.rows).data(); };
      EXPECT_EQ(std::memcmp(row(rg.up_tail), up.data() + p * g.part_bytes, g.part_bytes), 0) << p;
      if (g.has_gate()) {
        EXPECT_EQ(std::memcmp(row(rg.gate_tail), gate.data() + p * g.part_bytes, g.part_bytes), 0);
      }
    }
    if (rg.up.rows > 0) {  // the strips multiply as the stored rows
      std::vector<float> x(g.dim);
      std::mt19937 rng(3);
      std::normal_distribution<float> nd(0.0f, 1.0f);
      for (float& v : x) v = nd(rng);
      ThreadPool pool(1);
      std::vector<std::byte> scratch(MatMulScratchBytes(g.dim, 1));
      for (int m = g.has_gate() ? 0 : 1; m < 2; ++m) {
        const MatrixView& strips = m == 0 ? rg.gate : rg.up;
        EXPECT_TRUE(strips.strips);
        const MatrixView rows{
            g.dtype, rg.up.rows, g.dim,
            ConstByteSpan(m == 0 ? gate.data() : up.data(), uint64_t{rg.up.rows} * g.part_bytes)};
        std::vector<float> got(rg.up.rows), want(rg.up.rows);
        MatMul(strips, x, 1, got, scratch, pool);
        MatMul(rows, x, 1, want, scratch, pool);
        EXPECT_EQ(std::memcmp(got.data(), want.data(), got.size() * sizeof(float)), 0) << m;
      }
    }
    // The rest of the layer streams as bundles, in order.
    std::vector<uint32_t> rest, want_rest;
    while (s.Next(&b).value()) {
      EXPECT_EQ(b.regrouped, nullptr);
      rest.insert(rest.end(), b.positions.begin(), b.positions.end());
    }
    for (uint32_t p = kPinned; p < kHidden; ++p) want_rest.push_back(p);
    EXPECT_EQ(rest, want_rest);
    EXPECT_EQ(s.stats().bundles_resident, kPinned);
    // Layer 1 has nothing pinned: bundles only.
    ASSERT_TRUE(s.Begin(1).ok());
    std::vector<uint32_t> all(kHidden);
    for (uint32_t p = 0; p < kHidden; ++p) all[p] = p;
    EXPECT_EQ(Drain(s, *r, 1), all);
    // Refused: sets of positions, prefetches, an LRU cache.
    const std::vector<uint32_t> set = {1, 2};
    EXPECT_EQ(s.Begin(0, set).code(), StatusCode::kInvalidArgument);
    EXPECT_EQ(s.Prefetch(0, set).code(), StatusCode::kInvalidArgument);
    NeuronSourceOptions cached = o;
    cached.cache_slots = 8;
    EXPECT_EQ(NeuronSource::Open(*r, pinned, cached).status().code(), StatusCode::kInvalidArgument);
    // A flipped byte in pinned bundle 5 of layer 0.
    const layout::Extent e = r->BundleExtentAt(0, 5);
    ::flashlm::testing::FlipByte(dir.path() / "store" / layout::DataFileName(0),
                                 e.offset_bytes + 9);
    Result<std::unique_ptr<NeuronSource>> bad = NeuronSource::Open(*r, pinned, o);
    ASSERT_FALSE(bad.ok());
    EXPECT_EQ(bad.status().code(), StatusCode::kCorruption);
    EXPECT_NE(bad.status().ToString().find("FFN layer 0"), std::string::npos)
        << bad.status().ToString();
  }
}

// Split reads (the ablation of bundling): every streamed bundle is read on its own, in one read per
// matrix row it holds, and still served whole with its stored bytes; a split that is not a
// multiple of the files' alignment is refused at Open.
TEST(NeuronSourceTest, SplitReadsServeWholeBundlesInSeveralReadsEach) {
  ::flashlm::testing::ScratchDir dir;
  auto r = MakeStore(dir.path(), layout::BundleKind::kGateUpDown, 3, /*dim=*/2048);
  ASSERT_NE(r, nullptr);
  auto geometry = r->FfnGeometry(0);
  ASSERT_TRUE(geometry.ok());
  const uint64_t align = r->extent_reader().alignment_bytes();
  const uint64_t split = NeuronSource::SplitReadBytes(*geometry, align);
  ASSERT_EQ(split % align, 0u);
  ASSERT_GE(3 * split, geometry->bundle_bytes);  // gate, up, down: a row's bytes each, rounded
  ASSERT_LT(split, geometry->bundle_bytes);      // 2176-byte rows: a bundle takes several reads
  layout::ExtentReaderLimits limits;
  limits.queue_depth =
      3 * NeuronSource::ChunkReadsMax(*geometry, 16, limits.read_max_bytes, false, split);
  limits.groups = 3;
  ASSERT_TRUE(r->extent_reader().SetLimits(limits).ok());
  NeuronSourceOptions o;
  o.chunk_bundles = 16;
  o.chunk_buffers = 3;
  o.split_read_bytes = split;
  const uint32_t pinned[] = {5, 0};
  auto source = NeuronSource::Open(*r, pinned, o);
  ASSERT_TRUE(source.ok()) << source.status().ToString();
  NeuronSource& s = **source;
  EXPECT_FALSE(s.coalesced());
  EXPECT_EQ(s.split_read_bytes(), split);
  const std::vector<uint32_t> scattered = {0, 2, 4, 5, 6, 7, 40, 41, 99, 150, 151, 171};
  ASSERT_TRUE(s.Begin(0, scattered).ok());
  EXPECT_EQ(Drain(s, *r, 0), scattered);  // the stored bytes, whole
  ASSERT_TRUE(s.Begin(1, scattered).ok());
  EXPECT_EQ(Drain(s, *r, 1), scattered);
  const uint64_t streamed = s.stats().bundles_streamed;
  EXPECT_EQ(streamed, 9u + 12u);  // layer 0's 0, 2, 4 are pinned
  // No read spans two bundles, and each bundle's cover takes ceil(cover / split) reads.
  EXPECT_GE(s.stats().reads, streamed * CeilDiv(AlignUp(geometry->bundle_bytes, align), split));
  EXPECT_GE(s.stats().reads, 2 * streamed);

  NeuronSourceOptions bad = o;
  bad.split_read_bytes = align + 1;
  EXPECT_EQ(NeuronSource::Open(*r, pinned, bad).status().code(), StatusCode::kInvalidArgument);
}

// Flips a byte of layer 1's bundle 40 in the store MakeStore wrote under `dir`, then opens a
// source over `r` with nothing pinned and default options.
Result<std::unique_ptr<NeuronSource>> OpenWithBundle40Corrupt(const fs::path& dir,
                                                              layout::StoreReader& r) {
  const layout::Extent e = r.BundleExtentAt(1, 40);
  ::flashlm::testing::FlipByte(dir / "store" / layout::DataFileName(0), e.offset_bytes + 9);
  const uint32_t pinned[] = {0, 0};
  return NeuronSource::Open(r, pinned, NeuronSourceOptions());
}

// The next batch of `source` is Corruption naming bundle 40 of layer 1.
void ExpectBundle40Corrupt(NeuronSource& source) {
  NeuronSource::Batch b;
  Result<bool> more = source.Next(&b);
  ASSERT_FALSE(more.ok());
  EXPECT_EQ(more.status().code(), StatusCode::kCorruption);
  EXPECT_NE(more.status().ToString().find("FFN layer 1 bundle 40"), std::string::npos)
      << more.status().ToString();
}

// A flipped byte in a streamed bundle of a scattered request is Corruption naming it; the source
// then serves the next request normally.
TEST(NeuronSourceTest, CorruptBundleInAScatteredRequest) {
  ::flashlm::testing::ScratchDir dir;
  auto r = MakeStore(dir.path(), layout::BundleKind::kGateUpDown, 4);
  ASSERT_NE(r, nullptr);
  auto source = OpenWithBundle40Corrupt(dir.path(), *r);
  ASSERT_TRUE(source.ok()) << source.status().ToString();
  const std::vector<uint32_t> set = {1, 40, 80};
  ASSERT_TRUE((*source)->Begin(1, set).ok());
  ExpectBundle40Corrupt(**source);
  const std::vector<uint32_t> clean = {1, 80};
  ASSERT_TRUE((*source)->Begin(1, clean).ok());
  EXPECT_EQ(Drain(**source, *r, 1), clean);
}

// Chunks in the ring that have landed are verified ahead of Next (the idle work, driven here by
// hand): a dense pass over both layers serves the stored bytes, and a flipped byte in a chunk
// verified ahead is Corruption naming the bundle when Next reaches it, not before.
TEST(NeuronSourceTest, LandedChunksAreVerifiedAhead) {
  for (bool corrupt : {false, true}) {
    SCOPED_TRACE(corrupt ? "bundle 40 of layer 1 corrupt" : "clean");
    ::flashlm::testing::ScratchDir dir;
    auto r = MakeStore(dir.path(), layout::BundleKind::kGateUpDown, 4);
    ASSERT_NE(r, nullptr);
    if (corrupt) {
      const layout::Extent e = r->BundleExtentAt(1, 40);
      ::flashlm::testing::FlipByte(dir.path() / "store" / layout::DataFileName(0),
                                   e.offset_bytes + 9);
    }
    NeuronSourceOptions o;
    o.chunk_bundles = 64;  // 3 chunks a layer; the ring holds 4
    const uint32_t pinned[] = {0, 0};
    auto source = NeuronSource::Open(*r, pinned, o);
    ASSERT_TRUE(source.ok()) << source.status().ToString();
    EXPECT_FALSE((*source)->VerifyAhead());  // nothing in flight
    ASSERT_TRUE((*source)->Begin(0).ok());   // layer 0's chunks and layer 1's first go out
    // Poll until every chunk in the ring has landed and been verified.
    int rounds = 0;
    for (bool landed_all = false; !landed_all;) {
      ASSERT_TRUE(r->extent_reader().Poll().ok());
      while ((*source)->VerifyAhead()) {
      }
      ASSERT_LT(++rounds, 10000000) << "the ring's reads never landed";
      landed_all = true;
      for (uint32_t g = 1; g <= 4; ++g) landed_all = landed_all && !r->extent_reader().InFlight(g);
    }
    while ((*source)->VerifyAhead()) {
    }
    EXPECT_EQ(Drain(**source, *r, 0).size(), kHidden);
    ASSERT_TRUE((*source)->Begin(1).ok());
    if (!corrupt) {
      EXPECT_EQ(Drain(**source, *r, 1).size(), kHidden);
      continue;
    }
    ExpectBundle40Corrupt(**source);
  }
}

// Prefetch (the lookahead): the guessed bundles go out ahead; the next request of that layer serves
// the ones it asks for from them (stored bytes, increasing order) and reads only the rest; a
// request for another layer, a dense one, or a guess beyond the ring's capacity still serves
// exactly what it asks for. Without read-ahead (one buffer) nothing is prefetched.
TEST(NeuronSourceTest, PrefetchServesTheGuessAndReadsOnlyTheRest) {
  ::flashlm::testing::ScratchDir dir;
  auto r = MakeStore(dir.path(), layout::BundleKind::kGateUpDown, 4);
  ASSERT_NE(r, nullptr);
  std::vector<uint32_t> all(kHidden);
  for (uint32_t p = 0; p < kHidden; ++p) all[p] = p;
  for (int mode = 0; mode < 3; ++mode) {
    layout::ExtentReaderLimits limits;
    limits.queue_depth = 64 * 4;
    limits.groups = 4;
    ASSERT_TRUE(r->extent_reader().SetLimits(limits).ok());
    NeuronSourceOptions o;
    o.chunk_bundles = 16;
    o.chunk_buffers = 4;
    o.pipeline = mode != 2;
    o.cache_slots = mode == 1 ? 40 : 0;
    const uint32_t pinned[] = {5, 0};
    auto source = NeuronSource::Open(*r, pinned, o);
    ASSERT_TRUE(source.ok()) << source.status().ToString();
    NeuronSource& s = **source;
    const bool ahead = mode != 2;
    SCOPED_TRACE("mode " + std::to_string(mode));
    for (int round = 0; round < 2; ++round) {
      // A guess of 7, of which the request asks for 3, plus 2 it did not guess.
      const std::vector<uint32_t> guess = {2, 3, 40, 41, 42, 99, 160}, want = {3, 40, 50, 99, 171};
      const NeuronStats before = s.stats();
      ASSERT_TRUE(s.Prefetch(1, guess).ok());
      NeuronSource::Batch b;
      Result<bool> more = s.Next(&b);  // Prefetch ended the request: nothing to serve
      ASSERT_TRUE(more.ok());
      EXPECT_FALSE(*more);
      const uint64_t cached_before = s.stats().bundles_cached;
      ASSERT_TRUE(s.Begin(1, want).ok());
      const uint64_t hits = s.stats().bundles_cached - cached_before;  // mode 1, round 1
      EXPECT_EQ(Drain(s, *r, 1), want);
      const NeuronStats& after = s.stats();
      const bool exact = round == 0 || mode != 1;  // else the LRU holds some of them
      if (exact) {
        EXPECT_EQ(hits, 0u);
        EXPECT_EQ(after.bundles_prefetched - before.bundles_prefetched, ahead ? 7u : 0u);
        EXPECT_EQ(after.prefetch_used - before.prefetch_used, ahead ? 3u : 0u);
      } else {  // cached bundles are not read ahead
        EXPECT_LE(after.bundles_prefetched - before.bundles_prefetched, 7u);
        EXPECT_LE(after.prefetch_used - before.prefetch_used, 3u);
      }
      EXPECT_EQ(after.bundles_streamed - before.bundles_streamed, 5u - hits);
      // Pinned positions are never prefetched; a guess for one layer is dropped by a request
      // for another, which is served as usual.
      const NeuronStats mid = s.stats();
      ASSERT_TRUE(s.Prefetch(0, std::vector<uint32_t>{1, 2, 6, 7}).ok());
      EXPECT_LE(s.stats().bundles_prefetched - mid.bundles_prefetched, 2u);
      if (exact) EXPECT_EQ(s.stats().bundles_prefetched - mid.bundles_prefetched, ahead ? 2u : 0u);
      const std::vector<uint32_t> other = {0, 6, 7, 100};
      ASSERT_TRUE(s.Begin(1, other).ok());
      EXPECT_EQ(Drain(s, *r, 1), other);
      EXPECT_EQ(s.stats().prefetch_used, after.prefetch_used);
      // Then a dense request after a guess, and a guess of everything (more than the ring takes:
      // at most 3 of its 4 chunks of 16 go out).
      ASSERT_TRUE(s.Prefetch(1, guess).ok());
      ASSERT_TRUE(s.Begin(1).ok());
      EXPECT_EQ(Drain(s, *r, 1), all);
      const NeuronStats last = s.stats();
      ASSERT_TRUE(s.Prefetch(1, all).ok());
      EXPECT_LE(s.stats().bundles_prefetched - last.bundles_prefetched, 3u * 16);
      if (ahead && mode != 1) {
        EXPECT_EQ(s.stats().bundles_prefetched - last.bundles_prefetched, 3u * 16);
      }
      ASSERT_TRUE(s.Begin(1, all).ok());
      EXPECT_EQ(Drain(s, *r, 1), all);
    }
    // Bad guesses.
    const std::vector<uint32_t> unsorted = {3, 2}, beyond = {kHidden};
    EXPECT_EQ(s.Prefetch(0, unsorted).code(), StatusCode::kInvalidArgument);
    EXPECT_EQ(s.Prefetch(0, beyond).code(), StatusCode::kInvalidArgument);
    EXPECT_EQ(s.Prefetch(2, all).code(), StatusCode::kInvalidArgument);
  }
}

// A corrupt bundle that was read ahead is Corruption naming the layer and bundle when its
// request lands it; the next request is served normally.
TEST(NeuronSourceTest, CorruptPrefetchedBundle) {
  ::flashlm::testing::ScratchDir dir;
  auto r = MakeStore(dir.path(), layout::BundleKind::kGateUpDown, 4);
  ASSERT_NE(r, nullptr);
  auto source = OpenWithBundle40Corrupt(dir.path(), *r);
  ASSERT_TRUE(source.ok()) << source.status().ToString();
  NeuronSource& s = **source;
  const std::vector<uint32_t> set = {1, 40, 80};
  ASSERT_TRUE(s.Prefetch(1, set).ok());
  EXPECT_EQ(s.stats().bundles_prefetched, 3u);
  Status st = s.Begin(1, set);
  EXPECT_EQ(st.code(), StatusCode::kCorruption);
  EXPECT_NE(st.ToString().find("FFN layer 1 bundle 40"), std::string::npos) << st.ToString();
  const std::vector<uint32_t> clean = {1, 80};
  ASSERT_TRUE(s.Prefetch(1, clean).ok());
  ASSERT_TRUE(s.Begin(1, clean).ok());
  EXPECT_EQ(Drain(s, *r, 1), clean);
  EXPECT_EQ(s.stats().prefetch_used, 2u);
}

// The FFN kernel over a scattered set of bundles: the same result however the set is batched
// (bit for bit), and the scalar sum over exactly those neurons (to q8 rounding).
TEST(BundleFfnKernelTest, ScatteredSetMatchesTheScalarSum) {
  ::flashlm::testing::ScratchDir dir;
  auto r = MakeStore(dir.path(), layout::BundleKind::kGateUpDown);
  ASSERT_NE(r, nullptr);
  auto g = r->FfnGeometry(0);
  ASSERT_TRUE(g.ok());
  ThreadPool pool(2);
  auto kernel = BundleFfnKernel::Create(*g, kHidden, 2, 64, false, pool);
  ASSERT_TRUE(kernel.ok());
  std::mt19937 rng(5);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> x(2 * kDim);
  for (float& v : x) v = nd(rng);
  std::vector<uint32_t> set;
  for (uint32_t p = 0; p < kHidden; ++p) {
    if (rng() % 3 == 0) set.push_back(p);
  }
  std::vector<std::vector<std::byte>> bytes;
  std::vector<const std::byte*> ptrs;
  for (uint32_t p : set) bytes.push_back(Stored(*r, 0, p));
  for (const auto& b : bytes) ptrs.push_back(b.data());
  auto run = [&](size_t batch) {
    std::vector<float> out(2 * kDim);
    (*kernel)->Begin(x, 2, out, nullptr, r->Permutation(0));
    for (size_t k = 0; k < set.size(); k += batch) {
      const size_t m = std::min(batch, set.size() - k);
      (*kernel)->Accumulate(std::span<const uint32_t>(set).subspan(k, m),
                            std::span<const std::byte* const>(ptrs).subspan(k, m));
    }
    return out;
  };
  const std::vector<float> one_batch = run(64), single = run(1), sevens = run(7);
  EXPECT_EQ(one_batch, single);
  EXPECT_EQ(one_batch, sevens);
  // Scalar: h_i = silu(g_i . x) * (u_i . x), out += h_i * down_i, over the set only.
  for (uint32_t t = 0; t < 2; ++t) {
    std::vector<double> want(kDim, 0.0);
    for (size_t k = 0; k < set.size(); ++k) {
      const std::byte* b = ptrs[k];
      std::vector<float> gate(kDim), up(kDim), down(kDim);
      ASSERT_TRUE(layout::DequantizeRow(g->dtype, ConstByteSpan(b, g->part_bytes), gate).ok());
      ASSERT_TRUE(layout::DequantizeRow(g->dtype, ConstByteSpan(b + g->up_offset(), g->part_bytes),
                                        up).ok());
      ASSERT_TRUE(layout::DequantizeRow(
                      g->dtype, ConstByteSpan(b + g->down_offset(), g->part_bytes), down)
                      .ok());
      double gv = 0, uv = 0;
      for (uint32_t c = 0; c < kDim; ++c) {
        gv += gate[c] * x[t * kDim + c];
        uv += up[c] * x[t * kDim + c];
      }
      const double h = gv / (1.0 + std::exp(-gv)) * uv;
      for (uint32_t c = 0; c < kDim; ++c) want[c] += h * down[c];
    }
    double scale = 0, err = 0;
    for (uint32_t c = 0; c < kDim; ++c) {
      scale = std::max(scale, std::fabs(want[c]));
      err = std::max(err, std::fabs(want[c] - one_batch[t * kDim + c]));
    }
    EXPECT_LT(err, 0.03 * scale + 1e-4) << "token " << t;
  }
}

}  // namespace
}  // namespace flashlm::engine
