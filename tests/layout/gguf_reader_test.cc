#include "layout/gguf_reader.h"

#include <gtest/gtest.h>

#include <cmath>

#include "tests/layout/layout_test_util.h"
#include "tests/test_util.h"

namespace flashlm::layout {
namespace {

using ::flashlm::layout::testing::Bytes;
using ::flashlm::layout::testing::ReadFileBytes;
using ::flashlm::layout::testing::TinyGgufSpec;
using ::flashlm::layout::testing::WriteTinyGguf;

Result<std::unique_ptr<Checkpoint>> OpenBytes(const std::vector<std::byte>& b) {
  return OpenGguf(MemorySource(b, "test.gguf"));
}

Status ParseBytes(const std::vector<std::byte>& b) {
  auto src = MemorySource(b, "test.gguf");
  return GgufFile::Parse(*src).status();
}

// A GGUF header with one tensor "t" whose fields the caller picks; no metadata.
Bytes OneTensor(uint32_t n_dims, std::vector<uint64_t> ne, uint32_t type, uint64_t offset,
                uint64_t data_bytes) {
  Bytes b;
  b.Put<uint32_t>(kGgufMagic).Put<uint32_t>(3).Put<uint64_t>(1).Put<uint64_t>(0);
  b.Str("t").Put<uint32_t>(n_dims);
  for (uint64_t d : ne) b.Put<uint64_t>(d);
  b.Put<uint32_t>(type).Put<uint64_t>(offset);
  b.Pad(32);
  b.b.resize(b.b.size() + data_bytes);
  return b;
}

TEST(GgufReaderTest, OpensStories260K) {
  FLASHLM_REQUIRE_SHARED_MODEL(path, "stories260K-gguf/stories260K.gguf");
  auto src = OpenFileSource(path.string());
  ASSERT_TRUE(src.ok()) << src.status().ToString();
  auto ckpt = OpenGguf(std::move(*src));
  ASSERT_TRUE(ckpt.ok()) << ckpt.status().ToString();
  const ModelConfig& c = (*ckpt)->config();
  EXPECT_EQ((*ckpt)->format(), "gguf");
  EXPECT_EQ(c.dim, 64u);
  EXPECT_EQ(c.hidden_dim, 172u);
  EXPECT_EQ(c.n_layers, 5u);
  EXPECT_EQ(c.n_heads, 8u);
  EXPECT_EQ(c.n_kv_heads, 4u);
  EXPECT_EQ(c.head_dim, 8u);
  EXPECT_EQ(c.vocab_size, 512u);
  EXPECT_EQ(c.max_seq_len, 2048u);
  EXPECT_FALSE(c.tied_embeddings);
  EXPECT_EQ((*ckpt)->tensors().size(), 48u);
  const TensorInfo* down = (*ckpt)->FindTensor("blk.0.ffn_down.weight");
  ASSERT_NE(down, nullptr);
  EXPECT_EQ(down->shape, (std::vector<uint64_t>{64, 172}));
  const Vocab& v = (*ckpt)->vocab();
  EXPECT_EQ(v.kind, Vocab::Kind::kSentencePiece);
  ASSERT_EQ(v.tokens.size(), 512u);
  EXPECT_EQ(v.tokens[1], "<s>");
  EXPECT_EQ(v.tokens[2], "</s>");
  EXPECT_EQ(v.tokens[3], "<0x00>");
  EXPECT_EQ(v.bos_id, 1);
  EXPECT_EQ(v.eos_id, 2);
  std::vector<float> norm(64);
  ASSERT_TRUE((*ckpt)->ReadTensorF32(*(*ckpt)->FindTensor("output_norm.weight"), norm).ok());
  for (float x : norm) EXPECT_TRUE(std::isfinite(x));
}

TEST(GgufReaderTest, ReadsTinyModelWrittenByWriterInEveryDtype) {
  flashlm::testing::ScratchDir dir;
  for (DType dt : {DType::kF32, DType::kF16, DType::kBF16, DType::kQ8_0, DType::kQ4_0}) {
    TinyGgufSpec spec;
    spec.dtype = dt;
    const auto path = dir / (std::string(DTypeName(dt)) + ".gguf");
    ASSERT_TRUE(WriteTinyGguf(path, spec).ok());
    auto src = OpenFileSource(path.string());
    ASSERT_TRUE(src.ok());
    auto ckpt = OpenGguf(std::move(*src));
    ASSERT_TRUE(ckpt.ok()) << ckpt.status().ToString();
    EXPECT_EQ((*ckpt)->config().vocab_size, 300u);
    const TensorInfo* q = (*ckpt)->FindTensor("blk.1.attn_q.weight");
    ASSERT_NE(q, nullptr);
    EXPECT_EQ(q->dtype, dt);
    std::vector<float> vals(q->num_values());
    ASSERT_TRUE((*ckpt)->ReadTensorF32(*q, vals).ok());
    // Index of blk.1.attn_q in ExpectedLlamaTensors order: token_embd, 9 of layer 0, attn_norm.
    const float tol = dt == DType::kF32 ? 0.0f : dt == DType::kQ4_0 ? 0.04f : 0.01f;
    for (uint64_t i = 0; i < vals.size(); ++i) {
      ASSERT_NEAR(vals[i], testing::TinyWeight(11, i), tol) << DTypeName(dt) << " value " << i;
    }
  }
}

TEST(GgufReaderTest, BadMagicIsCorruption) {
  Bytes b;
  b.Raw("GGUX").Put<uint32_t>(3).Put<uint64_t>(0).Put<uint64_t>(0);
  Status s = ParseBytes(b.b);
  EXPECT_EQ(s.code(), StatusCode::kCorruption);
  EXPECT_NE(s.message().find("magic"), std::string_view::npos) << s.ToString();
}

TEST(GgufReaderTest, UnsupportedVersionsAreNamed) {
  for (uint32_t version : {1u, 4u, 0x03000000u}) {
    Bytes b;
    b.Put<uint32_t>(kGgufMagic).Put<uint32_t>(version).Put<uint64_t>(0).Put<uint64_t>(0);
    Status s = ParseBytes(b.b);
    EXPECT_EQ(s.code(), StatusCode::kNotSupported) << s.ToString();
    EXPECT_NE(s.message().find("version"), std::string_view::npos);
  }
}

TEST(GgufReaderTest, AcceptsVersion2) {
  Bytes b;
  b.Put<uint32_t>(kGgufMagic).Put<uint32_t>(2).Put<uint64_t>(0).Put<uint64_t>(1);
  b.Str("general.name").Put<uint32_t>(8).Str("x");
  auto src = MemorySource(b.b);
  auto f = GgufFile::Parse(*src);
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  EXPECT_EQ(f->version, 2u);
  ASSERT_NE(f->Find("general.name"), nullptr);
  EXPECT_EQ(f->Find("general.name")->s, "x");
}

TEST(GgufReaderTest, EveryTruncationOfAValidFileFailsCleanly) {
  flashlm::testing::ScratchDir dir;
  TinyGgufSpec spec;
  spec.config.n_layers = 1;
  spec.config.vocab_size = 40;
  spec.config.dim = 32;
  spec.config.hidden_dim = 32;
  spec.config.n_heads = 2;
  spec.config.n_kv_heads = 1;
  spec.dtype = DType::kQ8_0;
  ASSERT_TRUE(WriteTinyGguf(dir / "t.gguf", spec).ok());
  const std::vector<std::byte> full = ReadFileBytes(dir / "t.gguf");
  ASSERT_TRUE(OpenBytes(full).ok());
  for (size_t n = 0; n < full.size(); n += (n < 2000 ? 1 : 61)) {
    std::vector<std::byte> cut(full.begin(), full.begin() + n);
    auto r = OpenBytes(cut);
    ASSERT_FALSE(r.ok()) << "prefix of " << n << " bytes opened";
    EXPECT_EQ(r.status().code(), StatusCode::kCorruption) << r.status().ToString();
  }
}

TEST(GgufReaderTest, StringLengthPastEndIsCorruption) {
  Bytes b;
  b.Put<uint32_t>(kGgufMagic).Put<uint32_t>(3).Put<uint64_t>(0).Put<uint64_t>(1);
  b.Put<uint64_t>(~uint64_t{0}).Raw("key");
  b.b.resize(b.b.size() + 64);
  Status s = ParseBytes(b.b);
  EXPECT_EQ(s.code(), StatusCode::kCorruption);
  EXPECT_NE(s.message().find("passes the end"), std::string_view::npos) << s.ToString();
}

TEST(GgufReaderTest, HugeCountsAreCorruptionNotAllocation) {
  {
    Bytes b;  // metadata count far beyond the file
    b.Put<uint32_t>(kGgufMagic).Put<uint32_t>(3).Put<uint64_t>(0).Put<uint64_t>(uint64_t{1} << 62);
    EXPECT_EQ(ParseBytes(b.b).code(), StatusCode::kCorruption);
  }
  {
    Bytes b;  // tensor count far beyond the file
    b.Put<uint32_t>(kGgufMagic).Put<uint32_t>(3).Put<uint64_t>(uint64_t{1} << 60).Put<uint64_t>(0);
    EXPECT_EQ(ParseBytes(b.b).code(), StatusCode::kCorruption);
  }
  {
    Bytes b;  // array of 2^61 u64
    b.Put<uint32_t>(kGgufMagic).Put<uint32_t>(3).Put<uint64_t>(0).Put<uint64_t>(1);
    b.Str("a").Put<uint32_t>(9).Put<uint32_t>(10).Put<uint64_t>(uint64_t{1} << 61);
    Status s = ParseBytes(b.b);
    EXPECT_EQ(s.code(), StatusCode::kCorruption);
    EXPECT_NE(s.message().find("more than the file holds"), std::string_view::npos);
  }
}

TEST(GgufReaderTest, BadValuesAreCorruption) {
  {
    Bytes b;  // unknown value type
    b.Put<uint32_t>(kGgufMagic).Put<uint32_t>(3).Put<uint64_t>(0).Put<uint64_t>(1);
    b.Str("k").Put<uint32_t>(77).Put<uint32_t>(0);
    EXPECT_EQ(ParseBytes(b.b).code(), StatusCode::kCorruption);
  }
  {
    Bytes b;  // bool that is 7
    b.Put<uint32_t>(kGgufMagic).Put<uint32_t>(3).Put<uint64_t>(0).Put<uint64_t>(1);
    b.Str("k").Put<uint32_t>(7).Put<uint8_t>(7);
    EXPECT_EQ(ParseBytes(b.b).code(), StatusCode::kCorruption);
  }
  {
    Bytes b;  // duplicate key
    b.Put<uint32_t>(kGgufMagic).Put<uint32_t>(3).Put<uint64_t>(0).Put<uint64_t>(2);
    b.Str("k").Put<uint32_t>(4).Put<uint32_t>(1);
    b.Str("k").Put<uint32_t>(4).Put<uint32_t>(2);
    Status s = ParseBytes(b.b);
    EXPECT_EQ(s.code(), StatusCode::kCorruption);
    EXPECT_NE(s.message().find("duplicate"), std::string_view::npos);
  }
  {
    Bytes b;  // alignment not a power of two
    b.Put<uint32_t>(kGgufMagic).Put<uint32_t>(3).Put<uint64_t>(0).Put<uint64_t>(1);
    b.Str("general.alignment").Put<uint32_t>(4).Put<uint32_t>(48);
    EXPECT_EQ(ParseBytes(b.b).code(), StatusCode::kCorruption);
  }
  {
    Bytes b;  // arrays nested too deeply
    b.Put<uint32_t>(kGgufMagic).Put<uint32_t>(3).Put<uint64_t>(0).Put<uint64_t>(1);
    b.Str("k").Put<uint32_t>(9);
    for (int d = 0; d < 10; ++d) b.Put<uint32_t>(9).Put<uint64_t>(1);
    b.b.resize(b.b.size() + 64);
    EXPECT_EQ(ParseBytes(b.b).code(), StatusCode::kCorruption);
  }
}

TEST(GgufReaderTest, TensorDirectoryErrors) {
  // Valid baseline: f32 [4] at offset 0 with 16 bytes of data.
  ASSERT_TRUE(ParseBytes(OneTensor(1, {4}, 0, 0, 16).b).ok());
  // Offset past the end.
  Status s = ParseBytes(OneTensor(1, {4}, 0, 32, 16).b);
  EXPECT_EQ(s.code(), StatusCode::kCorruption);
  EXPECT_NE(s.message().find("outside the data section"), std::string_view::npos) << s.ToString();
  // Offset + size overflowing 64 bits.
  s = ParseBytes(OneTensor(1, {4}, 0, ~uint64_t{31}, 16).b);
  EXPECT_EQ(s.code(), StatusCode::kCorruption) << s.ToString();
  // Size past the end.
  EXPECT_EQ(ParseBytes(OneTensor(1, {5}, 0, 0, 16).b).code(), StatusCode::kCorruption);
  // Dimensions whose product overflows 64 bits.
  s = ParseBytes(OneTensor(2, {uint64_t{1} << 40, uint64_t{1} << 40}, 0, 0, 16).b);
  EXPECT_EQ(s.code(), StatusCode::kCorruption);
  EXPECT_NE(s.message().find("overflowing"), std::string_view::npos) << s.ToString();
  // Zero or too many dimensions.
  EXPECT_EQ(ParseBytes(OneTensor(0, {}, 0, 0, 16).b).code(), StatusCode::kCorruption);
  EXPECT_EQ(ParseBytes(OneTensor(5, {1, 1, 1, 1, 4}, 0, 0, 16).b).code(), StatusCode::kCorruption);
  // Unaligned offset.
  EXPECT_EQ(ParseBytes(OneTensor(1, {4}, 0, 4, 64).b).code(), StatusCode::kCorruption);
  // Row that is not whole q8_0 blocks.
  EXPECT_EQ(ParseBytes(OneTensor(1, {33}, 8, 0, 128).b).code(), StatusCode::kCorruption);
  // q4_K (12) / q6_K (14): a row that is not whole 256-value super-blocks, and a whole one whose
  // 144 / 210 bytes run past the data.
  s = ParseBytes(OneTensor(1, {288}, 12, 0, 512).b);
  EXPECT_EQ(s.code(), StatusCode::kCorruption);
  EXPECT_NE(s.message().find("q4_K"), std::string_view::npos) << s.ToString();
  EXPECT_EQ(ParseBytes(OneTensor(1, {32}, 14, 0, 512).b).code(), StatusCode::kCorruption);
  EXPECT_TRUE(ParseBytes(OneTensor(1, {256}, 12, 0, 144).b).ok());
  EXPECT_EQ(ParseBytes(OneTensor(1, {256}, 12, 0, 143).b).code(), StatusCode::kCorruption);
  EXPECT_TRUE(ParseBytes(OneTensor(2, {256, 2}, 14, 0, 420).b).ok());
  EXPECT_EQ(ParseBytes(OneTensor(2, {256, 2}, 14, 0, 419).b).code(), StatusCode::kCorruption);
}

TEST(GgufReaderTest, UnknownTensorTypeIsRefusedByName) {
  Status s = ParseBytes(OneTensor(1, {32}, 7, 0, 64).b);  // q5_1
  EXPECT_EQ(s.code(), StatusCode::kNotSupported);
  EXPECT_NE(s.message().find("q5_1"), std::string_view::npos) << s.ToString();
  s = ParseBytes(OneTensor(1, {32}, 999, 0, 64).b);
  EXPECT_EQ(s.code(), StatusCode::kNotSupported);
  EXPECT_NE(s.message().find("unknown type 999"), std::string_view::npos) << s.ToString();
}

TEST(GgufReaderTest, NonLlamaArchitectureIsRefusedByName) {
  flashlm::testing::ScratchDir dir;
  TinyGgufSpec spec;
  spec.architecture = "falcon";
  ASSERT_TRUE(WriteTinyGguf(dir / "f.gguf", spec).ok());
  auto r = OpenBytes(ReadFileBytes(dir / "f.gguf"));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kNotSupported);
  EXPECT_NE(r.status().message().find("falcon"), std::string_view::npos);
}

TEST(GgufReaderTest, InconsistentShapesAndMissingTensorsAreCorruption) {
  flashlm::testing::ScratchDir dir;
  TinyGgufSpec spec;
  spec.edit_tensors = [](std::vector<TensorInfo>& t) {
    for (TensorInfo& x : t) {
      if (x.name == "blk.1.attn_k.weight") x.shape = {64, 64};
    }
  };
  ASSERT_TRUE(WriteTinyGguf(dir / "s.gguf", spec).ok());
  auto r = OpenBytes(ReadFileBytes(dir / "s.gguf"));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kCorruption);
  EXPECT_NE(r.status().message().find("blk.1.attn_k.weight"), std::string_view::npos)
      << r.status().ToString();

  spec.edit_tensors = [](std::vector<TensorInfo>& t) {
    std::erase_if(t, [](const TensorInfo& x) { return x.name == "blk.0.ffn_up.weight"; });
  };
  ASSERT_TRUE(WriteTinyGguf(dir / "m.gguf", spec).ok());
  r = OpenBytes(ReadFileBytes(dir / "m.gguf"));
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("missing tensor blk.0.ffn_up.weight"), std::string_view::npos)
      << r.status().ToString();

  spec.edit_tensors = nullptr;  // n_heads not dividing by n_kv_heads
  spec.config.n_kv_heads = 3;
  ASSERT_TRUE(WriteTinyGguf(dir / "h.gguf", spec).ok());
  r = OpenBytes(ReadFileBytes(dir / "h.gguf"));
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("n_kv_heads"), std::string_view::npos);
}

TEST(GgufReaderTest, ReadTensorRejectsWrongBufferSize) {
  flashlm::testing::ScratchDir dir;
  ASSERT_TRUE(WriteTinyGguf(dir / "t.gguf", TinyGgufSpec{}).ok());
  auto ckpt = OpenBytes(ReadFileBytes(dir / "t.gguf"));
  ASSERT_TRUE(ckpt.ok());
  const TensorInfo* t = (*ckpt)->FindTensor("output_norm.weight");
  std::vector<std::byte> small(t->size_bytes() - 1);
  EXPECT_EQ((*ckpt)->ReadTensor(*t, small).code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace flashlm::layout
