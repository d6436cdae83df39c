// Repack + StoreReader round trips on generated models (MemoryCheckpoint), corruption,
// version and atomicity. Real models: store_models_test.cc.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>

#include "layout/bundle_layout.h"
#include "layout/catalog_seal.h"
#include "layout/repack.h"
#include "layout/store_reader.h"
#include "storage/lmdb_env.h"
#include "tests/layout/memory_checkpoint.h"
#include "tests/test_util.h"

namespace flashlm::layout {
namespace {

using testing::MemoryCheckpoint;
namespace fs = std::filesystem;

std::unique_ptr<StoreReader> OpenOrDie(const fs::path& p) {
  auto r = StoreReader::Open(p.string());
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  return r.ok() ? std::move(*r) : nullptr;
}

RepackSummary RepackOrDie(Checkpoint& src, const fs::path& out, const RepackOptions& o = {}) {
  auto s = Repack(src, out.string(), o);
  EXPECT_TRUE(s.ok()) << s.status().ToString();
  return s.ok() ? *s : RepackSummary{};
}

std::vector<std::byte> Bytes(Checkpoint& c, const TensorInfo& t) {
  std::vector<std::byte> b(t.size_bytes());
  EXPECT_TRUE(c.ReadTensor(t, b).ok()) << t.name;
  return b;
}

std::vector<float> Floats(Checkpoint& c, const TensorInfo& t) {
  std::vector<float> f(t.num_values());
  Status s = c.ReadTensorF32(t, f);
  EXPECT_TRUE(s.ok()) << t.name << ": " << s.ToString();
  return f;
}

// One quantisation step of a block format for values of magnitude up to amax: q8_0 maps amax
// to 127 steps, q4_0 to 8 (ggml's d = max / -8); f16 rounds to 11 significant bits, bf16 to 8.
double StepBound(DType t, double amax) {
  switch (t) {
    case DType::kQ8_0:
      return amax / 127.0 * 1.01 + 1e-7;
    case DType::kQ4_0:
      return amax / 8.0 * 1.01 + 1e-7;
    case DType::kF16:
      return amax * std::ldexp(1.0, -11) + 1e-7;
    case DType::kBF16:
      return amax * std::ldexp(1.0, -8) + 1e-7;
    default:
      return 0.0;
  }
}

bool IsFfn(const std::string& n, const char* part) {
  return n.find(std::string("ffn_") + part + ".weight") != std::string::npos;
}

// Every tensor of `store` equals `src` within the bound of storing in `dt` (0 for same dtype).
// Rows are quantised along dim; ffn_down columns are quantised along their length.
void ExpectTensorsMatch(Checkpoint& src, Checkpoint& store, DType dt, bool requantised) {
  ASSERT_EQ(src.tensors().size(), store.tensors().size());
  for (size_t i = 0; i < src.tensors().size(); ++i) {
    const TensorInfo& s = src.tensors()[i];
    const TensorInfo& t = store.tensors()[i];
    ASSERT_EQ(s.name, t.name);
    ASSERT_EQ(s.shape, t.shape) << s.name;
    const bool down = IsFfn(s.name, "down");
    const bool norm = s.shape.size() == 1;
    const bool block = dt == DType::kQ8_0 || dt == DType::kQ4_0;
    if (!requantised && (norm || !down || !block)) {
      // Same dtype, not a re-quantised down column: bit-exact bytes.
      EXPECT_EQ(t.dtype, norm ? DType::kF32 : s.dtype) << s.name;
      EXPECT_TRUE(Bytes(src, s) == Bytes(store, t)) << s.name << " differs";
      continue;
    }
    std::vector<float> a = Floats(src, s), b = Floats(store, t);
    ASSERT_EQ(a.size(), b.size());
    const uint64_t rows = s.rows(), cols = s.cols();
    // Vectors along which the store quantised: columns of down, rows otherwise.
    const uint64_t n_vec = down ? cols : rows, len = down ? rows : cols;
    auto at = [&](const std::vector<float>& v, uint64_t vec, uint64_t k) {
      return down ? v[k * cols + vec] : v[vec * cols + k];
    };
    for (uint64_t v = 0; v < n_vec; ++v) {
      double amax = 0;
      for (uint64_t k = 0; k < len; ++k) amax = std::max(amax, std::fabs(double(at(a, v, k))));
      const double bound = norm ? 0.0 : StepBound(dt, amax);
      for (uint64_t k = 0; k < len; ++k) {
        ASSERT_LE(std::fabs(double(at(a, v, k)) - double(at(b, v, k))), bound)
            << s.name << " vector " << v << " element " << k;
      }
    }
  }
}

class SameDTypeTest : public ::testing::TestWithParam<DType> {};

TEST_P(SameDTypeTest, RoundTripKeepsSourceDType) {
  const DType dt = GetParam();
  MemoryCheckpoint src = MemoryCheckpoint::Llama(64, 172, 3, 100, dt);  // 172: not / 32
  ::flashlm::testing::ScratchDir dir;
  RepackSummary sum = RepackOrDie(src, dir / "store");
  EXPECT_EQ(sum.tensors, src.tensors().size());
  // Detected as a store through the generic entry point.
  auto opened = OpenCheckpoint((dir / "store").string());
  ASSERT_TRUE(opened.ok()) << opened.status().ToString();
  Checkpoint& store = **opened;
  EXPECT_EQ(store.format(), "store");
  EXPECT_EQ(store.config().dim, 64u);
  EXPECT_EQ(store.config().hidden_dim, 172u);
  EXPECT_EQ(store.config().rope_theta, 500000.0f);
  EXPECT_EQ(store.vocab().tokens, src.vocab().tokens);
  EXPECT_EQ(store.vocab().scores, src.vocab().scores);
  EXPECT_EQ(store.vocab().types, src.vocab().types);
  EXPECT_EQ(store.vocab().merges, src.vocab().merges);
  EXPECT_EQ(store.vocab().pad_id, 5);
  ExpectTensorsMatch(src, store, dt, /*requantised=*/false);
  // ffn_down: exact transpose for f32/f16/bf16; f32 (dequantised) for block formats.
  const TensorInfo* down = store.FindTensor("blk.1.ffn_down.weight");
  ASSERT_NE(down, nullptr);
  EXPECT_EQ(down->dtype,
            (dt == DType::kF32 || dt == DType::kF16 || dt == DType::kBF16) ? dt : DType::kF32);
}

INSTANTIATE_TEST_SUITE_P(AllStoreDTypes, SameDTypeTest,
                         ::testing::Values(DType::kF32, DType::kF16, DType::kBF16, DType::kQ8_0,
                                           DType::kQ4_0),
                         [](const auto& info) { return std::string(DTypeName(info.param)); });

class ConvertTest : public ::testing::TestWithParam<DType> {};

TEST_P(ConvertTest, F32SourceIntoStoreDTypeWithinOneStep) {
  const DType dt = GetParam();
  MemoryCheckpoint src = MemoryCheckpoint::Llama(64, 172, 2, 50, DType::kF32);
  ::flashlm::testing::ScratchDir dir;
  RepackOptions o;
  o.dtype = dt;
  RepackOrDie(src, dir / "store", o);
  auto store = OpenOrDie(dir / "store");
  ASSERT_NE(store, nullptr);
  EXPECT_EQ(store->FindTensor("blk.0.attn_q.weight")->dtype, dt);
  EXPECT_EQ(store->FindTensor("blk.0.attn_norm.weight")->dtype, DType::kF32);  // norms stay f32
  ExpectTensorsMatch(src, *store, dt, /*requantised=*/true);
}

INSTANTIATE_TEST_SUITE_P(Quantised, ConvertTest,
                         ::testing::Values(DType::kF16, DType::kBF16, DType::kQ8_0, DType::kQ4_0),
                         [](const auto& info) { return std::string(DTypeName(info.param)); });

TEST(StoreTest, BundlesHoldGateRowUpRowDownColumn) {
  MemoryCheckpoint src = MemoryCheckpoint::Llama(64, 172, 2, 50, DType::kF32);
  ::flashlm::testing::ScratchDir dir;
  RepackSummary sum = RepackOrDie(src, dir / "store");
  auto store = OpenOrDie(dir / "store");
  ASSERT_NE(store, nullptr);
  auto f = store->FfnLayer(1);
  ASSERT_TRUE(f.ok());
  EXPECT_EQ(f->n_neurons, 172u);
  EXPECT_EQ(f->part_bytes, 64u * 4);
  EXPECT_EQ(f->bundle_bytes, 3u * 64 * 4);
  EXPECT_EQ(f->stride_bytes, 4096u);
  EXPECT_EQ(sum.bundle_bytes, 768u);
  EXPECT_EQ(sum.bundle_stride_bytes, 4096u);
  EXPECT_GT(sum.padding_ratio(), 0.5);  // 768 of 4096 used per bundle
  std::vector<float> gate = Floats(src, *src.FindTensor("blk.1.ffn_gate.weight"));
  std::vector<float> up = Floats(src, *src.FindTensor("blk.1.ffn_up.weight"));
  std::vector<float> down = Floats(src, *src.FindTensor("blk.1.ffn_down.weight"));
  auto extents = store->BundleExtents(1, 100, 3);
  ASSERT_TRUE(extents.ok());
  ASSERT_EQ(extents->size(), 3u);
  for (uint32_t k = 0; k < 3; ++k) {
    const Extent& e = (*extents)[k];
    EXPECT_EQ(e.offset_bytes % 4096, 0u);
    EXPECT_EQ(e.raw_bytes, 768u);
    std::vector<float> b(192);
    ASSERT_TRUE(store->ReadExtent(e, std::as_writable_bytes(std::span(b))).ok());
    const uint32_t n = 100 + k;
    for (uint32_t j = 0; j < 64; ++j) {
      ASSERT_EQ(b[j], gate[n * 64 + j]);
      ASSERT_EQ(b[64 + j], up[n * 64 + j]);
      ASSERT_EQ(b[128 + j], down[j * 172 + n]);
    }
  }
  EXPECT_EQ(store->BundleExtents(1, 170, 3).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(store->FfnLayer(2).status().code(), StatusCode::kNotFound);
  // Dense lookups by row range.
  auto dense = store->DenseExtents("token_embd.weight", 10, 5);
  ASSERT_TRUE(dense.ok());
  ASSERT_EQ(dense->size(), 1u);
  EXPECT_EQ((*dense)[0].raw_bytes, 50u * 64 * 4);
  EXPECT_EQ(store->DenseExtents("blk.0.ffn_up.weight", 0, 1).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(store->GetExtent(store->extent_count()).status().code(), StatusCode::kNotFound);
}

TEST(StoreTest, DenseTensorsSplitIntoBoundedExtents) {
  MemoryCheckpoint src = MemoryCheckpoint::Llama(64, 96, 1, 300, DType::kF32);
  ::flashlm::testing::ScratchDir dir;
  RepackOptions o;
  // 39 rows of 256 bytes fit; 32 of them, eight 4096-byte units, make the extents abut.
  o.dense_extent_bytes_max = 10000;
  o.embedding_extent_bytes_max = 3000;  // the embedding: 11 rows, fewer than a unit's 16: as is
  RepackOrDie(src, dir / "store", o);
  auto store = OpenOrDie(dir / "store");
  ASSERT_NE(store, nullptr);
  auto loc = store->LocateTensor("output.weight");
  ASSERT_TRUE(loc.ok());
  EXPECT_EQ(loc->record.rows_per_extent, 32u);
  EXPECT_EQ(loc->record.extent_count, 10u);  // ceil(300 / 32)
  auto ext = store->DenseExtents("output.weight", 31, 2);
  ASSERT_TRUE(ext.ok());
  ASSERT_EQ(ext->size(), 2u);
  // Back to back: no padding between a tensor's extents.
  EXPECT_EQ((*ext)[1].offset_bytes, (*ext)[0].offset_bytes + (*ext)[0].stored_bytes);
  loc = store->LocateTensor("token_embd.weight");
  ASSERT_TRUE(loc.ok());
  EXPECT_EQ(loc->record.rows_per_extent, 11u);
  EXPECT_EQ(loc->record.extent_count, 28u);  // ceil(300 / 11)
  ExpectTensorsMatch(src, *store, DType::kF32, false);
}

TEST(StoreTest, GateSeparateBundles) {
  MemoryCheckpoint src = MemoryCheckpoint::Llama(64, 172, 2, 50, DType::kQ8_0);
  ::flashlm::testing::ScratchDir dir;
  RepackOptions o;
  o.bundle_kind = BundleKind::kGateSeparate;
  o.alignment_bytes = 512;
  RepackOrDie(src, dir / "store", o);
  auto store = OpenOrDie(dir / "store");
  ASSERT_NE(store, nullptr);
  auto f = store->FfnLayer(0);
  ASSERT_TRUE(f.ok());
  EXPECT_EQ(f->bundle_kind, static_cast<uint8_t>(BundleKind::kGateSeparate));
  EXPECT_EQ(f->bundle_bytes, 2u * 68);  // 2 q8_0 blocks per part
  EXPECT_EQ(f->stride_bytes, 512u);
  auto gate = store->LocateTensor("blk.0.ffn_gate.weight");
  ASSERT_TRUE(gate.ok());
  EXPECT_EQ(gate->record.placement, static_cast<uint8_t>(Placement::kDense));
  ExpectTensorsMatch(src, *store, DType::kQ8_0, false);
}

// A store's identity is its sealed catalog checksum: stable across opens, different for a store
// laid out differently from the same model (files kept beside a store are tied to it).
TEST(StoreTest, IdentityIsStableAndTellsStoresApart) {
  MemoryCheckpoint src = MemoryCheckpoint::Llama(64, 172, 2, 50, DType::kQ8_0);
  ::flashlm::testing::ScratchDir dir;
  RepackOrDie(src, dir / "a");
  RepackOptions o;
  o.bundle_kind = BundleKind::kGateSeparate;
  RepackOrDie(src, dir / "b", o);
  auto a1 = OpenOrDie(dir / "a");
  auto a2 = OpenOrDie(dir / "a");
  auto b = OpenOrDie(dir / "b");
  ASSERT_NE(a1, nullptr);
  ASSERT_NE(a2, nullptr);
  ASSERT_NE(b, nullptr);
  EXPECT_NE(a1->identity(), 0u);
  EXPECT_EQ(a1->identity(), a2->identity());
  EXPECT_NE(a1->identity(), b->identity());
}

TEST(StoreTest, HotFirstOrderFromActivationStats) {
  MemoryCheckpoint src = MemoryCheckpoint::Llama(64, 40, 2, 50, DType::kF16);
  ::flashlm::testing::ScratchDir dir;
  ActivationStats stats;
  for (int l = 0; l < 2; ++l) {
    std::vector<float> f(40);
    for (int i = 0; i < 40; ++i) f[i] = float((i * 7 + l) % 40) / 40.0f;
    stats.layers.push_back(f);
  }
  const std::string path = (dir / "act.json").string();
  ASSERT_TRUE(SaveActivationStats(stats, path).ok());
  RepackOptions o;
  o.activations_path = path;
  RepackOrDie(src, dir / "store", o);
  auto store = OpenOrDie(dir / "store");
  ASSERT_NE(store, nullptr);
  for (uint32_t l = 0; l < 2; ++l) {
    std::span<const uint32_t> perm = store->Permutation(l);
    ASSERT_EQ(perm.size(), 40u);
    EXPECT_EQ(std::vector<uint32_t>(perm.begin(), perm.end()),
              HotFirstPermutation(stats.layers[l]));
    for (size_t p = 1; p < perm.size(); ++p) {
      EXPECT_GE(stats.layers[l][perm[p - 1]], stats.layers[l][perm[p]]);
    }
    auto pos = store->PositionOfNeuron(l, perm[5]);
    ASSERT_TRUE(pos.ok());
    EXPECT_EQ(*pos, 5u);
    std::span<const float> freq = store->ActivationFrequencies(l);
    ASSERT_EQ(freq.size(), 40u);
    EXPECT_EQ(freq[3], stats.layers[l][3]);
  }
  // The hottest neuron of layer 0 is bundle 0: its up row is up[perm[0]].
  std::vector<float> up = Floats(src, *src.FindTensor("blk.0.ffn_up.weight"));
  auto e = store->BundleExtents(0, 0, 1);
  ASSERT_TRUE(e.ok());
  std::vector<uint16_t> b(3 * 64);  // f16 parts
  ASSERT_TRUE(store->ReadExtent((*e)[0], std::as_writable_bytes(std::span(b))).ok());
  const uint32_t hot = store->Permutation(0)[0];
  for (int j = 0; j < 64; ++j) ASSERT_EQ(F16ToF32(b[64 + j]), up[hot * 64 + j]);
  // Reassembled tensors are in natural order again.
  ExpectTensorsMatch(src, *store, DType::kF16, false);

  // Statistics of the wrong shape are refused, and leave nothing behind.
  stats.layers[1].pop_back();
  ASSERT_TRUE(SaveActivationStats(stats, path).ok());
  auto bad = Repack(src, (dir / "store2").string(), o);
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_FALSE(fs::exists(dir / "store2"));
}

TEST(StoreTest, ActivationStatsFileErrors) {
  ::flashlm::testing::ScratchDir dir;
  auto write = [&](const std::string& text) {
    std::ofstream(dir / "a.json") << text;
    return LoadActivationStats((dir / "a.json").string()).status();
  };
  EXPECT_EQ(write("not json").code(), StatusCode::kCorruption);
  EXPECT_EQ(write(R"({"format":"other","version":1,"layers":[]})").code(), StatusCode::kCorruption);
  EXPECT_EQ(write(R"({"format":"flashlm-activations","version":2,"layers":[]})").code(),
            StatusCode::kNotSupported);
  EXPECT_EQ(write(R"({"format":"flashlm-activations","version":1,"layers":[[0.5,"x"]]})").code(),
            StatusCode::kCorruption);
  EXPECT_EQ(write(R"({"format":"flashlm-activations","version":1,"layers":[[1.5]]})").code(),
            StatusCode::kCorruption);
  EXPECT_TRUE(write(R"({"format":"flashlm-activations","version":1,"layers":[[0.5,0]]})").ok());
  EXPECT_EQ(LoadActivationStats((dir / "none.json").string()).status().code(),
            StatusCode::kNotFound);
}

TEST(StoreTest, ZstdWhereItPays) {
  MemoryCheckpoint src = MemoryCheckpoint::Llama(64, 40, 1, 400, DType::kF32);
  src.AddZeroTensor("extra.zeros", DType::kF32, {256, 64});
  ::flashlm::testing::ScratchDir dir;
  RepackOptions o;
  o.codec = Codec::kZstd;
  o.alignment_bytes = 512;
  RepackSummary sum = RepackOrDie(src, dir / "store", o);
  EXPECT_GE(sum.compressed_extents, 1u);
  auto store = OpenOrDie(dir / "store");
  ASSERT_NE(store, nullptr);
  auto loc = store->LocateTensor("extra.zeros");
  ASSERT_TRUE(loc.ok());
  auto e = store->GetExtent(loc->record.first_extent);
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(e->codec, Codec::kZstd);
  EXPECT_LT(e->stored_bytes, e->raw_bytes / 10);
  // Random f32 weights do not compress by 10%: stored plain.
  auto q = store->LocateTensor("token_embd.weight");
  EXPECT_EQ(store->GetExtent(q->record.first_extent)->codec, Codec::kNone);
  ExpectTensorsMatch(src, *store, DType::kF32, false);
  EXPECT_TRUE(store->VerifyAll().ok());
}

// Flips one byte in `path` at `offset`.
using ::flashlm::testing::FlipByte;

TEST(StoreTest, VerifyCatchesAFlippedByteInEveryExtent) {
  MemoryCheckpoint src = MemoryCheckpoint::Llama(32, 24, 2, 40, DType::kQ8_0);
  ::flashlm::testing::ScratchDir dir;
  RepackOptions o;
  o.alignment_bytes = 512;
  o.codec = Codec::kZstd;  // includes compressed extents, if any pay
  src.AddZeroTensor("extra.zeros", DType::kF32, {64, 64});
  RepackOrDie(src, dir / "store", o);
  const fs::path data = dir / "store" / DataFileName(0);
  auto store = OpenOrDie(dir / "store");
  ASSERT_NE(store, nullptr);
  ASSERT_TRUE(store->VerifyAll().ok());
  std::mt19937 rng(42);
  const uint64_t n = store->extent_count();
  ASSERT_GT(n, 50u);
  for (uint64_t i = 0; i < n; ++i) {
    Extent e = *store->GetExtent(i);
    // First byte, last byte, and a random one in between, in turn.
    uint64_t off = i % 3 == 0 ? 0 : i % 3 == 1 ? e.stored_bytes - 1 : rng() % e.stored_bytes;
    FlipByte(data, e.offset_bytes + off);
    Status s = store->VerifyAll();
    EXPECT_EQ(s.code(), StatusCode::kCorruption) << "extent " << i;
    EXPECT_NE(s.message().find("extent " + std::to_string(i) + " "), std::string_view::npos)
        << s.message();
    std::vector<std::byte> raw(e.raw_bytes);
    EXPECT_EQ(store->ReadExtent(e, raw).code(), StatusCode::kCorruption);
    FlipByte(data, e.offset_bytes + off);  // restore
  }
  EXPECT_TRUE(store->VerifyAll().ok());
  // A corrupt bundle also fails the tensor read that needs it.
  Extent b = *store->BundleExtents(1, 3, 1).value().begin();
  FlipByte(data, b.offset_bytes + 5);
  const TensorInfo* up = store->FindTensor("blk.1.ffn_up.weight");
  std::vector<std::byte> out(up->size_bytes());
  EXPECT_EQ(store->ReadTensor(*up, out).code(), StatusCode::kCorruption);
}

TEST(StoreTest, UnknownFormatVersionIsRefused) {
  MemoryCheckpoint src = MemoryCheckpoint::Llama(32, 24, 1, 40, DType::kF32);
  ::flashlm::testing::ScratchDir dir;
  RepackOrDie(src, dir / "store");
  {
    storage::LmdbEnv::Options o;
    o.read_only = false;
    auto env = storage::LmdbEnv::Open((dir / "store" / "catalog.mdb").string(), o);
    ASSERT_TRUE(env.ok()) << env.status().ToString();
    StoreHeader h;
    {
      auto r = (*env)->BeginRead();
      ASSERT_TRUE(r.ok());
      auto v = r->Get("header");
      ASSERT_TRUE(v.ok());
      std::memcpy(&h, v->data(), sizeof h);
    }
    h.format_version = 99;
    auto w = (*env)->BeginWrite();
    ASSERT_TRUE(w.ok());
    ASSERT_TRUE(w->Put("header", ConstByteSpan(reinterpret_cast<std::byte*>(&h), sizeof h)).ok());
    ASSERT_TRUE(w->Commit().ok());
  }
  // Resealed: the version gate behind the seal is what is tested.
  ASSERT_TRUE(WriteCatalogSeal((dir / "store").string()).ok());
  auto r = StoreReader::Open((dir / "store").string());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kNotSupported);
  EXPECT_NE(r.status().message().find("version 99"), std::string_view::npos)
      << r.status().message();
}

TEST(StoreTest, TruncatedDataFileAndMissingCatalog) {
  MemoryCheckpoint src = MemoryCheckpoint::Llama(32, 24, 1, 40, DType::kF32);
  ::flashlm::testing::ScratchDir dir;
  RepackOrDie(src, dir / "store");
  fs::resize_file(dir / "store" / DataFileName(0), 4096);
  auto r = StoreReader::Open((dir / "store").string());
  EXPECT_EQ(r.status().code(), StatusCode::kCorruption);
  EXPECT_NE(r.status().message().find("outside"), std::string_view::npos) << r.status().message();
  fs::remove(dir / "store" / "catalog.mdb");
  EXPECT_EQ(StoreReader::Open((dir / "store").string()).status().code(), StatusCode::kNotFound);
  fs::create_directories(dir / "empty");
  EXPECT_FALSE(OpenCheckpoint((dir / "empty").string()).ok());
  std::ofstream(dir / "store" / "catalog.mdb") << std::string(10000, 'q');
  EXPECT_FALSE(StoreReader::Open((dir / "store").string()).ok());
}

bool AnyTempLeft(const fs::path& dir) {
  for (const auto& e : fs::directory_iterator(dir)) {
    if (e.path().filename().string().find(kTempMarker) != std::string::npos) return true;
  }
  return false;
}

TEST(StoreTest, FailedRepackLeavesNothing) {
  MemoryCheckpoint src = MemoryCheckpoint::Llama(32, 24, 3, 40, DType::kF32);
  src.FailOn("blk.2.attn_k.weight");
  ::flashlm::testing::ScratchDir dir;
  auto r = Repack(src, (dir / "out").string(), {});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kCorruption);
  EXPECT_NE(r.status().message().find("blk.2.attn_k.weight"), std::string_view::npos);
  EXPECT_FALSE(fs::exists(dir / "out"));
  EXPECT_FALSE(AnyTempLeft(dir.path()));
  // An FFN tensor failing midway through the bundles, too.
  src.FailOn("blk.1.ffn_down.weight");
  EXPECT_FALSE(Repack(src, (dir / "out").string(), {}).ok());
  EXPECT_FALSE(fs::exists(dir / "out"));
  EXPECT_FALSE(AnyTempLeft(dir.path()));
}

TEST(StoreTest, ExistingOutputAndBadOptionsAreRefused) {
  MemoryCheckpoint src = MemoryCheckpoint::Llama(32, 24, 1, 40, DType::kF32);
  ::flashlm::testing::ScratchDir dir;
  fs::create_directories(dir / "out");
  EXPECT_EQ(Repack(src, (dir / "out").string(), {}).status().code(), StatusCode::kInvalidArgument);
  RepackOptions o;
  o.alignment_bytes = 3000;
  EXPECT_EQ(Repack(src, (dir / "o2").string(), o).status().code(), StatusCode::kInvalidArgument);
  o.alignment_bytes = 4096;
  o.dtype = static_cast<DType>(9);  // not a dtype
  EXPECT_EQ(Repack(src, (dir / "o2").string(), o).status().code(), StatusCode::kInvalidArgument);
  EXPECT_FALSE(fs::exists(dir / "o2"));
}

TEST(StoreTest, KilledRepackLeavesATempFolderThatNeverOpens) {
  MemoryCheckpoint src = MemoryCheckpoint::Llama(32, 24, 3, 40, DType::kF32);
  ::flashlm::testing::ScratchDir dir;
  const fs::path out = dir / "out";
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    RepackOptions o;
    // Die the hard way halfway through, as a kill -9 would: no destructors run.
    o.progress = [](const RepackProgress& p) {
      if (p.done_bytes * 2 >= p.total_bytes) _exit(3);
    };
    (void)Repack(src, out.string(), o);
    _exit(0);
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  ASSERT_EQ(WEXITSTATUS(status), 3);
  EXPECT_FALSE(fs::exists(out));
  // The writer's temp folder: ".flashlm-tmp-<pid>-<n>" beside the output.
  fs::path temp;
  const std::string prefix = std::string(kTempMarker) + std::to_string(pid) + "-";
  for (const auto& e : fs::directory_iterator(dir.path())) {
    if (e.path().filename().string().rfind(prefix, 0) == 0) temp = e.path();
  }
  ASSERT_FALSE(temp.empty());
  ASSERT_TRUE(fs::exists(temp));
  EXPECT_FALSE(StoreReader::Open(temp.string()).ok());
  EXPECT_FALSE(OpenCheckpoint(temp.string()).ok());

  // Even a complete store, under a temp name, is refused.
  RepackOrDie(src, out);
  const fs::path renamed = dir / ("x" + std::string(kTempMarker) + "1");
  fs::rename(out, renamed);
  auto r = StoreReader::Open(renamed.string());
  EXPECT_EQ(r.status().code(), StatusCode::kCorruption);
  EXPECT_NE(r.status().message().find("unfinished"), std::string_view::npos);
}

TEST(StoreTest, CatalogCodecsRejectMalformedValues) {
  EXPECT_FALSE(DecodeStringList({}).ok());
  std::string list = EncodeStringList({"ab", "", "c"});
  auto ok = DecodeStringList(AsBytes(list));
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ(*ok, (std::vector<std::string>{"ab", "", "c"}));
  EXPECT_FALSE(DecodeStringList(AsBytes(std::string_view(list).substr(0, list.size() - 1))).ok());
  std::string huge = list;
  huge[0] = '\xff';
  huge[3] = '\x7f';  // count 2^31-ish
  EXPECT_EQ(DecodeStringList(AsBytes(huge)).status().code(), StatusCode::kCorruption);
  EXPECT_EQ(DecodeConfigJson("{").status().code(), StatusCode::kCorruption);
  EXPECT_EQ(DecodeConfigJson(R"({"architecture":"llama","dim":"x"})").status().code(),
            StatusCode::kCorruption);
  ModelConfig c;
  c.dim = 7;
  c.n_kv_heads = 3;
  auto back = DecodeConfigJson(EncodeConfigJson(c));
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->dim, 7u);
  EXPECT_EQ(back->n_kv_heads, 3u);
  std::string neg = EncodeConfigJson(c);
  neg.replace(neg.find("\"dim\": 7"), 8, "\"dim\": -7");
  EXPECT_EQ(DecodeConfigJson(neg).status().code(), StatusCode::kCorruption);
}

}  // namespace
}  // namespace flashlm::layout

namespace flashlm::layout {
namespace {

struct BackendCase {
  const char* name;
  storage::BackendKind kind;
  bool direct;
};

class StoreBackendTest : public ::testing::TestWithParam<BackendCase> {};

// The same store reads back identically through every backend, O_DIRECT or buffered, with a
// store alignment (512) finer than a 4 KiB device's, and small batches (queue depth 3).
TEST_P(StoreBackendTest, ReadsEveryTensorAndVerifies) {
  MemoryCheckpoint src = MemoryCheckpoint::Llama(64, 172, 2, 50, DType::kQ8_0);
  ::flashlm::testing::ScratchDir dir;
  RepackOptions o;
  o.alignment_bytes = 512;
  RepackOrDie(src, dir / "store", o);
  StoreReadOptions ro;
  ro.backend = GetParam().kind;
  ro.direct = GetParam().direct;
  ro.queue_depth = 3;
  ro.batch_bytes_max = 2048;
  auto r = StoreReader::Open((dir / "store").string(), ro);
  if (!r.ok() && r.status().code() == StatusCode::kNotSupported) {
    GTEST_SKIP() << "backend refused here: " << r.status().ToString();
  }
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  StoreReader& store = **r;
  ExpectTensorsMatch(src, store, DType::kQ8_0, false);
  EXPECT_TRUE(store.VerifyAll().ok());
  EXPECT_GE(store.io_stats().reads(), store.extent_count());
  std::printf("backend %s, O_DIRECT %d\n", std::string(store.backend_name()).c_str(),
              store.direct_io());
}

INSTANTIATE_TEST_SUITE_P(
    Backends, StoreBackendTest,
    ::testing::Values(BackendCase{"auto_direct", storage::BackendKind::kAuto, true},
                      BackendCase{"uring_direct", storage::BackendKind::kUring, true},
                      BackendCase{"pread_direct", storage::BackendKind::kPread, true},
                      BackendCase{"pread_buffered", storage::BackendKind::kPread, false}),
    [](const auto& info) { return std::string(info.param.name); });

}  // namespace
}  // namespace flashlm::layout

// Real models: the three stories260K sources.
namespace flashlm::layout {
namespace {

struct Source {
  const char* name;
  const char* path;       // under shared/models
  const char* tokenizer;  // "" when embedded
};

constexpr Source kSources[] = {
    {"llama2c", "stories260K/stories260K.bin", "stories260K/tok512.bin"},
    {"gguf", "stories260K-gguf/stories260K.gguf", ""},
    {"hf", "stories260K-hf-derived", ""},
};

std::unique_ptr<Checkpoint> OpenSource(const Source& s) {
  OpenOptions o;
  if (*s.tokenizer) o.tokenizer_path = ::flashlm::testing::SharedModel(s.tokenizer).string();
  auto c = OpenCheckpoint(::flashlm::testing::SharedModel(s.path).string(), o);
  EXPECT_TRUE(c.ok()) << s.name << ": " << c.status().ToString();
  return c.ok() ? std::move(*c) : nullptr;
}

TEST(StoreModelsTest, ThreeSourcesRepackIntoEqualF32Stores) {
  FLASHLM_REQUIRE_SHARED_MODEL(bin, "stories260K/stories260K.bin");
  FLASHLM_REQUIRE_SHARED_MODEL(gguf, "stories260K-gguf/stories260K.gguf");
  FLASHLM_REQUIRE_SHARED_MODEL(hf, "stories260K-hf-derived/model.safetensors");
  ::flashlm::testing::ScratchDir dir;
  std::vector<std::unique_ptr<StoreReader>> stores;
  for (const Source& s : kSources) {
    std::unique_ptr<Checkpoint> src = OpenSource(s);
    ASSERT_NE(src, nullptr);
    RepackOptions o;
    o.source_path = ::flashlm::testing::SharedModel(s.path).string();
    RepackOrDie(*src, dir / s.name, o);
    stores.push_back(OpenOrDie(dir / s.name));
    ASSERT_NE(stores.back(), nullptr);
    // Every tensor read back through the store equals its source, bit for bit.
    ExpectTensorsMatch(*src, *stores.back(), DType::kF32, false);
    EXPECT_EQ(stores.back()->vocab().tokens, src->vocab().tokens) << s.name;
    EXPECT_EQ(stores.back()->vocab().scores, src->vocab().scores) << s.name;
    EXPECT_EQ(stores.back()->config().n_kv_heads, 4u);
    EXPECT_EQ(stores.back()->config().hidden_dim, 172u);
    EXPECT_NE(stores.back()->provenance_json().find("source_xxh3_64"), std::string::npos);
    EXPECT_TRUE(stores.back()->VerifyAll().ok());
  }
  // The three stores hold equal tensors (the GGUF's separate output.weight aside).
  size_t compared = 0;
  for (const TensorInfo& t : stores[0]->tensors()) {
    std::vector<std::byte> a = Bytes(*stores[0], t);
    for (size_t k = 1; k < stores.size(); ++k) {
      const TensorInfo* u = stores[k]->FindTensor(t.name);
      ASSERT_NE(u, nullptr) << t.name;
      ASSERT_EQ(u->shape, t.shape) << t.name;
      EXPECT_TRUE(a == Bytes(*stores[k], *u)) << t.name << " differs in " << kSources[k].name;
      ++compared;
    }
  }
  EXPECT_GE(compared, 2u * 47);
}

class StoreModelsDTypeTest : public ::testing::TestWithParam<DType> {};

TEST_P(StoreModelsDTypeTest, GgufIntoStoreDTypeWithinBound) {
  FLASHLM_REQUIRE_SHARED_MODEL(gguf, "stories260K-gguf/stories260K.gguf");
  std::unique_ptr<Checkpoint> src = OpenSource(kSources[1]);
  ASSERT_NE(src, nullptr);
  ::flashlm::testing::ScratchDir dir;
  for (BundleKind kind : {BundleKind::kGateUpDown, BundleKind::kGateSeparate}) {
    RepackOptions o;
    o.dtype = GetParam();
    o.bundle_kind = kind;
    const fs::path out = dir / std::string(BundleKindName(kind) == "gate-up-down" ? "a" : "b");
    RepackOrDie(*src, out, o);
    auto store = OpenOrDie(out);
    ASSERT_NE(store, nullptr);
    // ffn_down (172 columns, not a multiple of 32) is handled, not refused.
    ExpectTensorsMatch(*src, *store, GetParam(), /*requantised=*/true);
  }
}

INSTANTIATE_TEST_SUITE_P(Stories260K, StoreModelsDTypeTest,
                         ::testing::Values(DType::kF16, DType::kBF16, DType::kQ8_0, DType::kQ4_0),
                         [](const auto& info) { return std::string(DTypeName(info.param)); });

TEST(StoreModelsTest, StoreOfAStoreIsEqual) {
  FLASHLM_REQUIRE_SHARED_MODEL(gguf, "stories260K-gguf/stories260K.gguf");
  std::unique_ptr<Checkpoint> src = OpenSource(kSources[1]);
  ASSERT_NE(src, nullptr);
  ::flashlm::testing::ScratchDir dir;
  RepackOptions o;
  o.dtype = DType::kQ8_0;
  RepackOrDie(*src, dir / "s1", o);
  auto s1 = OpenCheckpoint((dir / "s1").string());
  ASSERT_TRUE(s1.ok());
  RepackOrDie(**s1, dir / "s2", {});  // keeps each tensor's stored dtype
  auto s2 = OpenOrDie(dir / "s2");
  ASSERT_NE(s2, nullptr);
  for (const TensorInfo& t : (*s1)->tensors()) {
    const TensorInfo* u = s2->FindTensor(t.name);
    ASSERT_NE(u, nullptr);
    if (IsFfn(t.name, "down")) {
      // f32 in s1 (dequantised q8_0 columns); s2 quantises the same columns with the same
      // blocks again, which reproduces them exactly.
      EXPECT_TRUE(Floats(**s1, t) == Floats(*s2, *u)) << t.name;
    } else {
      EXPECT_EQ(u->dtype, t.dtype) << t.name;
      EXPECT_TRUE(Bytes(**s1, t) == Bytes(*s2, *u)) << t.name;
    }
  }
}

}  // namespace
}  // namespace flashlm::layout

namespace flashlm::layout {
namespace {

// Rewrites catalog key `key` of the store at `dir` with mutate(bytes), without resealing.
void MutateCatalogUnsealed(const fs::path& dir, const std::string& key,
                           const std::function<void(std::vector<std::byte>&)>& mutate) {
  storage::LmdbEnv::Options o;
  o.read_only = false;
  auto env = storage::LmdbEnv::Open((dir / "catalog.mdb").string(), o);
  ASSERT_TRUE(env.ok()) << env.status().ToString();
  std::vector<std::byte> v;
  {
    auto r = (*env)->BeginRead();
    ASSERT_TRUE(r.ok());
    auto got = r->Get(key);
    ASSERT_TRUE(got.ok()) << key;
    v.assign(got->begin(), got->end());
  }
  mutate(v);
  auto w = (*env)->BeginWrite();
  ASSERT_TRUE(w.ok());
  ASSERT_TRUE(w->Put(key, v).ok());
  ASSERT_TRUE(w->Commit().ok());
}

// The same, then reseals the catalog (catalog.sum): what is tested is the record validation
// behind the seal (a store written by a faulty writer).
void MutateCatalog(const fs::path& dir, const std::string& key,
                   const std::function<void(std::vector<std::byte>&)>& mutate) {
  MutateCatalogUnsealed(dir, key, mutate);
  ASSERT_TRUE(WriteCatalogSeal(dir.string()).ok());
}

TEST(StoreTest, CorruptCatalogRecordsAreRefused) {
  MemoryCheckpoint src = MemoryCheckpoint::Llama(32, 24, 2, 40, DType::kF32);
  ::flashlm::testing::ScratchDir dir;
  RepackOrDie(src, dir / "good");
  struct Case {
    const char* what;
    std::string key;
    std::function<void(std::vector<std::byte>&)> mutate;
  };
  auto set_u64 = [](size_t off, uint64_t v) {
    return [off, v](std::vector<std::byte>& b) { std::memcpy(b.data() + off, &v, 8); };
  };
  const std::vector<Case> cases = {
      {"huge shape", "tensor/blk.0.attn_q.weight", set_u64(8, uint64_t{1} << 63)},
      {"extent range past the table", "tensor/blk.0.attn_q.weight", set_u64(24, ~uint64_t{0})},
      {"wrong rows per extent", "tensor/token_embd.weight", set_u64(40, 3)},
      {"extent offset overflow", "extents", set_u64(40, ~uint64_t{0} - 4095)},
      {"extent table truncated", "extents",
       [](std::vector<std::byte>& b) { b.resize(b.size() - 40); }},
      {"bundle sizes", "ffn/00001", set_u64(32, 12345)},
      {"bundle extents out of range", "ffn/00000", set_u64(16, uint64_t{1} << 40)},
      {"short record", "ffn/00000", [](std::vector<std::byte>& b) { b.pop_back(); }},
      {"bad magic", "header", [](std::vector<std::byte>& b) { b[0] = std::byte{'X'}; }},
      {"config not JSON", "config", [](std::vector<std::byte>& b) { b[0] = std::byte{'!'}; }},
      {"token list overruns", "vocab/tokens",
       [](std::vector<std::byte>& b) { b[4] = std::byte{0xff}; }},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    const fs::path copy = dir / ("c" + std::to_string(i));
    fs::copy(dir / "good", copy, fs::copy_options::recursive);
    MutateCatalog(copy, cases[i].key, cases[i].mutate);
    auto r = StoreReader::Open(copy.string());
    ASSERT_FALSE(r.ok()) << cases[i].what;
    EXPECT_EQ(r.status().code(), StatusCode::kCorruption)
        << cases[i].what << ": " << r.status().ToString();
  }
  EXPECT_TRUE(StoreReader::Open((dir / "good").string()).ok());
}

}  // namespace
}  // namespace flashlm::layout

namespace flashlm::layout {
namespace {

// Larger than two 8 MiB write buffers, so background writes and buffer swaps are exercised.
TEST(StoreTest, StoreLargerThanTheWriteBuffers) {
  MemoryCheckpoint src = MemoryCheckpoint::Llama(128, 344, 2, 48000, DType::kF32);  // ~49 MB
  ::flashlm::testing::ScratchDir dir;
  RepackSummary sum = RepackOrDie(src, dir / "store");
  EXPECT_GT(sum.file_bytes, 3u * (8u << 20));
  auto store = OpenOrDie(dir / "store");
  ASSERT_NE(store, nullptr);
  EXPECT_EQ(store->data_file_bytes(0), sum.file_bytes);
  ExpectTensorsMatch(src, *store, DType::kF32, false);
  EXPECT_TRUE(store->VerifyAll().ok());
}

}  // namespace
}  // namespace flashlm::layout

// activations (issue 5): the hot set recorded by repack --activations.
namespace flashlm::layout {
namespace {

// Writes `value` under catalog key `key` (new or replacing) of the store at `dir`.
void PutCatalog(const fs::path& dir, const std::string& key, ConstByteSpan value) {
  storage::LmdbEnv::Options o;
  o.read_only = false;
  auto env = storage::LmdbEnv::Open((dir / "catalog.mdb").string(), o);
  ASSERT_TRUE(env.ok()) << env.status().ToString();
  {
    auto w = (*env)->BeginWrite();
    ASSERT_TRUE(w.ok());
    ASSERT_TRUE(w->Put(key, value).ok());
    ASSERT_TRUE(w->Commit().ok());
  }
  ASSERT_TRUE(WriteCatalogSeal(dir.string()).ok());
}

// The hot count is the number of neurons at or above the threshold, and they are exactly the
// positions [0, hot count) of the hot-first layer.
TEST(StoreHotSetTest, HotCountMatchesStatsAndThreshold) {
  MemoryCheckpoint src = MemoryCheckpoint::Llama(32, 40, 3, 40, DType::kF32);
  ::flashlm::testing::ScratchDir dir;
  ActivationStats stats;
  for (int l = 0; l < 3; ++l) {
    std::vector<float> f(40);
    for (int i = 0; i < 40; ++i) f[i] = float((i * 13 + 5 * l) % 40) / 39.0f;  // 0..1
    stats.layers.push_back(f);
  }
  stats.layers[2].assign(40, 0.25f);  // all below 0.5: an empty hot set
  stats.layers[2][7] = 0.5f;          // exactly at the threshold counts as hot
  const std::string path = (dir / "act.json").string();
  ASSERT_TRUE(SaveActivationStats(stats, path).ok());
  for (double threshold : {0.0, 0.3, 0.5, 1.0}) {
    SCOPED_TRACE(threshold);
    const fs::path out = dir / ("store" + std::to_string(int(threshold * 10)));
    RepackOptions o;
    o.activations_path = path;
    o.hot_threshold = threshold;
    RepackSummary sum = RepackOrDie(src, out, o);
    auto store = OpenOrDie(out);
    ASSERT_NE(store, nullptr);
    ASSERT_EQ(sum.hot_counts.size(), 3u);
    for (uint32_t l = 0; l < 3; ++l) {
      // Reloaded from the saved JSON (as float), compared as repack does.
      std::span<const float> freq = store->ActivationFrequencies(l);
      const uint32_t want = static_cast<uint32_t>(
          std::count_if(freq.begin(), freq.end(), [&](float f) { return f >= threshold; }));
      EXPECT_EQ(store->HotCount(l), want) << "layer " << l;
      EXPECT_EQ(sum.hot_counts[l], want) << "layer " << l;
      std::span<const uint32_t> perm = store->Permutation(l);
      ASSERT_EQ(perm.size(), 40u);
      for (uint32_t p = 0; p < 40; ++p) {
        EXPECT_EQ(freq[perm[p]] >= threshold, p < want) << "layer " << l << " position " << p;
      }
    }
    if (threshold == 0.0) EXPECT_EQ(store->HotCount(0), 40u);
    if (threshold == 0.5) EXPECT_EQ(store->HotCount(2), 1u);
    if (threshold == 1.0) EXPECT_EQ(store->HotCount(0), 1u);  // one neuron at 39/39
  }
  EXPECT_EQ(OpenOrDie(dir / "store5")->HotCount(99), 0u);  // out of range

  // Without statistics: no hot set, and the layout says nothing of one.
  RepackOrDie(src, dir / "plain");
  auto plain = OpenOrDie(dir / "plain");
  ASSERT_NE(plain, nullptr);
  for (uint32_t l = 0; l < 3; ++l) EXPECT_EQ(plain->HotCount(l), 0u);
  EXPECT_EQ(plain->layout_json().find("hot_threshold"), std::string::npos);

  // A threshold outside [0, 1] is refused before anything is written.
  for (double bad : {-0.1, 1.5, std::nan("")}) {
    RepackOptions o;
    o.activations_path = path;
    o.hot_threshold = bad;
    auto r = Repack(src, (dir / "bad").string(), o);
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << bad;
    EXPECT_FALSE(fs::exists(dir / "bad"));
  }
}

TEST(StoreHotSetTest, MalformedHotRecordsAreCorruption) {
  MemoryCheckpoint src = MemoryCheckpoint::Llama(32, 24, 2, 40, DType::kF32);
  ::flashlm::testing::ScratchDir dir;
  ActivationStats stats;
  stats.layers.assign(2, std::vector<float>(24, 0.75f));
  const std::string path = (dir / "act.json").string();
  ASSERT_TRUE(SaveActivationStats(stats, path).ok());
  RepackOptions o;
  o.activations_path = path;
  RepackOrDie(src, dir / "hot", o);
  RepackOrDie(src, dir / "plain");
  ASSERT_EQ(OpenOrDie(dir / "hot")->HotCount(1), 24u);

  auto refused = [&](const fs::path& from, const std::string& key, std::vector<std::byte> value) {
    const fs::path copy = dir / ("c" + std::to_string(value.size()) + from.filename().string());
    fs::remove_all(copy);
    fs::copy(from, copy, fs::copy_options::recursive);
    PutCatalog(copy, key, value);
    auto r = StoreReader::Open(copy.string());
    EXPECT_EQ(r.status().code(), StatusCode::kCorruption) << key;
    return r.ok() ? std::string() : std::string(r.status().message());
  };
  auto u32 = [](uint32_t v) {
    std::vector<std::byte> b(4);
    std::memcpy(b.data(), &v, 4);
    return b;
  };
  EXPECT_NE(refused(dir / "hot", "hot/00001", u32(25)).find("hot/00001"), std::string::npos);
  std::vector<std::byte> six = u32(3);
  six.resize(6);
  refused(dir / "hot", "hot/00000", six);  // wrong size
  EXPECT_NE(refused(dir / "plain", "hot/00000", u32(3)).find("not hot-first"), std::string::npos);
}

}  // namespace
}  // namespace flashlm::layout

// reliability (issue 16): the catalog seal.
namespace flashlm::layout {
namespace {

std::string ReadAll(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}
void WriteAll(const fs::path& p, std::string_view bytes) {
  std::ofstream(p, std::ios::binary | std::ios::trunc).write(bytes.data(), bytes.size());
}

// A flipped bit anywhere in catalog.mdb or catalog.sum is Corruption at open, naming the file.
TEST(CatalogSealTest, BitFlipsAnywhereInTheCatalogAreCaught) {
  MemoryCheckpoint src = MemoryCheckpoint::Llama(32, 24, 2, 40, DType::kF32);
  ::flashlm::testing::ScratchDir dir;
  RepackOrDie(src, dir / "store");
  const fs::path catalog = dir / "store" / std::string(kCatalogFileName);
  const fs::path seal = dir / "store" / std::string(kCatalogSealFileName);
  const uint64_t size = fs::file_size(catalog);
  // Every 13th byte and every bit position over the run: a few thousand opens.
  for (uint64_t off = 0; off < size; off += 13) {
    const char mask = static_cast<char>(1u << (off % 8));
    ::flashlm::testing::FlipByte(catalog, off, mask);
    auto r = StoreReader::Open((dir / "store").string());
    ::flashlm::testing::FlipByte(catalog, off, mask);
    ASSERT_FALSE(r.ok()) << "flip at " << off;
    ASSERT_EQ(r.status().code(), StatusCode::kCorruption) << r.status().ToString();
    ASSERT_NE(r.status().message().find("checksum"), std::string_view::npos)
        << r.status().ToString();
  }
  for (uint64_t off = 0; off < sizeof(CatalogSeal); ++off) {
    ::flashlm::testing::FlipByte(seal, off, 0x01);
    auto r = StoreReader::Open((dir / "store").string());
    ::flashlm::testing::FlipByte(seal, off, 0x01);
    ASSERT_EQ(r.status().code(), StatusCode::kCorruption) << "seal byte " << off;
  }
  EXPECT_TRUE(StoreReader::Open((dir / "store").string()).ok());
}

TEST(CatalogSealTest, CutOrGrownCatalogAndMissingSeal) {
  MemoryCheckpoint src = MemoryCheckpoint::Llama(32, 24, 2, 40, DType::kF32);
  ::flashlm::testing::ScratchDir dir;
  RepackOrDie(src, dir / "store");
  const fs::path catalog = dir / "store" / std::string(kCatalogFileName);
  const std::string whole = ReadAll(catalog);
  for (size_t cut = 0; cut < whole.size(); cut += 4096) {
    WriteAll(catalog, std::string_view(whole).substr(0, cut));
    auto r = StoreReader::Open((dir / "store").string());
    ASSERT_EQ(r.status().code(), StatusCode::kCorruption) << "cut at " << cut;
    EXPECT_NE(r.status().message().find("cut short"), std::string_view::npos)
        << r.status().ToString();
  }
  WriteAll(catalog, whole + std::string(4096, '\0'));
  EXPECT_EQ(StoreReader::Open((dir / "store").string()).status().code(), StatusCode::kCorruption);
  WriteAll(catalog, whole);
  ASSERT_TRUE(StoreReader::Open((dir / "store").string()).ok());
  // A store without a seal (format version 1) is refused with what to do.
  fs::remove(dir / "store" / std::string(kCatalogSealFileName));
  auto r = StoreReader::Open((dir / "store").string());
  EXPECT_EQ(r.status().code(), StatusCode::kNotSupported);
  EXPECT_NE(r.status().message().find("Repack"), std::string_view::npos) << r.status().ToString();
}

// Behind the seal, a store's config passes the checks a checkpoint's does.
TEST(CatalogSealTest, StoreConfigIsValidatedLikeACheckpoints) {
  MemoryCheckpoint src = MemoryCheckpoint::Llama(32, 24, 1, 40, DType::kF32);
  ::flashlm::testing::ScratchDir dir;
  RepackOrDie(src, dir / "good");
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"\"norm_eps\":", "\"norm_eps\":-"},
      {"\"rope_theta\":", "\"rope_theta\":-"},
      {"\"max_seq_len\":", "\"max_seq_len\":0,\"x\":"},
      {"\"activation\":", "\"activation\":7,\"x\":"},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    const fs::path copy = dir / ("c" + std::to_string(i));
    fs::copy(dir / "good", copy, fs::copy_options::recursive);
    MutateCatalog(copy, "config", [&](std::vector<std::byte>& b) {
      std::string j(reinterpret_cast<const char*>(b.data()), b.size());
      const size_t at = j.find(cases[i].first);
      ASSERT_NE(at, std::string::npos) << j;
      j.replace(at, cases[i].first.size(), cases[i].second);
      b.assign(reinterpret_cast<const std::byte*>(j.data()),
               reinterpret_cast<const std::byte*>(j.data()) + j.size());
    });
    auto r = StoreReader::Open(copy.string());
    ASSERT_FALSE(r.ok()) << cases[i].second;
    EXPECT_EQ(r.status().code(), StatusCode::kCorruption) << r.status().ToString();
  }
}

}  // namespace
}  // namespace flashlm::layout
