#include "layout/llama2c_reader.h"

#include <gtest/gtest.h>

#include "tests/layout/layout_test_util.h"
#include "tests/test_util.h"

namespace flashlm::layout {
namespace {

using ::flashlm::layout::testing::Bytes;
using ::flashlm::layout::testing::ReadFileBytes;

Result<std::unique_ptr<Checkpoint>> OpenBytes(const std::vector<std::byte>& model,
                                              const std::vector<std::byte>* tok = nullptr) {
  return OpenLlama2c(MemorySource(model, "model.bin"),
                     tok ? MemorySource(*tok, "tokenizer.bin") : nullptr);
}

// A legacy checkpoint with the given header and exactly the bytes it describes (+ extra).
std::vector<std::byte> Legacy(int32_t dim, int32_t hidden, int32_t layers, int32_t heads,
                              int32_t kv_heads, int32_t vocab, int32_t seq, int64_t extra = 0) {
  Bytes b;
  for (int32_t v : {dim, hidden, layers, heads, kv_heads, vocab, seq}) b.Put<int32_t>(v);
  const int64_t hd = dim / heads, kv = kv_heads * hd, V = vocab < 0 ? -vocab : vocab;
  int64_t floats = V * dim + layers * (2 * dim + dim * dim * 2 + 2 * kv * dim + 3 * dim * hidden) +
                   dim + seq * hd + (vocab < 0 ? V * dim : 0);
  b.b.resize(b.b.size() + static_cast<size_t>(floats * 4 + extra));
  return b.b;
}

void ExpectStories260K(const Checkpoint& c, bool tied) {
  const ModelConfig& m = c.config();
  EXPECT_EQ(c.format(), "llama2c");
  EXPECT_EQ(m.dim, 64u);
  EXPECT_EQ(m.hidden_dim, 172u);
  EXPECT_EQ(m.n_layers, 5u);
  EXPECT_EQ(m.n_heads, 8u);
  EXPECT_EQ(m.n_kv_heads, 4u);
  EXPECT_EQ(m.head_dim, 8u);
  EXPECT_EQ(m.vocab_size, 512u);
  EXPECT_EQ(m.max_seq_len, 512u);
  EXPECT_EQ(m.tied_embeddings, tied);
  EXPECT_EQ(c.tensors().size(), 1u + 5 * 9 + 1);
}

TEST(Llama2cReaderTest, OpensLegacyAndV1Stories260KWithTokenizer) {
  FLASHLM_REQUIRE_SHARED_MODEL(legacy, "stories260K/stories260K.bin");
  FLASHLM_REQUIRE_SHARED_MODEL(v1, "stories260K/stories260K.v1.bin");
  FLASHLM_REQUIRE_SHARED_MODEL(tok, "stories260K/tok512.bin");
  const auto tok_bytes = ReadFileBytes(tok);
  auto a = OpenBytes(ReadFileBytes(legacy), &tok_bytes);
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  ExpectStories260K(**a, true);
  auto b = OpenBytes(ReadFileBytes(v1), &tok_bytes);
  ASSERT_TRUE(b.ok()) << b.status().ToString();
  ExpectStories260K(**b, true);
  const Vocab& v = (*a)->vocab();
  ASSERT_EQ(v.tokens.size(), 512u);
  EXPECT_EQ(v.tokens[0], "<unk>");
  EXPECT_EQ(v.tokens[1], "<s>");  // "\n<s>\n" in the file
  EXPECT_EQ(v.tokens[2], "</s>");
  EXPECT_EQ(v.tokens[3 + 0x0A], "<0x0A>");
  EXPECT_EQ(v.types[1], Vocab::kControl);
  EXPECT_EQ(v.types[3], Vocab::kByte);
  for (const std::string& t : v.tokens) EXPECT_EQ(t.find(' '), std::string::npos) << t;
  // Legacy and v1 hold bit-identical weights.
  for (const TensorInfo& t : (*a)->tensors()) {
    const TensorInfo* u = (*b)->FindTensor(t.name);
    ASSERT_NE(u, nullptr) << t.name;
    std::vector<std::byte> x(t.size_bytes()), y(u->size_bytes());
    ASSERT_TRUE((*a)->ReadTensor(t, x).ok());
    ASSERT_TRUE((*b)->ReadTensor(*u, y).ok());
    EXPECT_EQ(x, y) << t.name;
  }
}

TEST(Llama2cReaderTest, SeparateClassifierFromNegativeVocab) {
  auto r = OpenBytes(Legacy(32, 48, 2, 4, 2, -50, 16));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_FALSE((*r)->config().tied_embeddings);
  ASSERT_NE((*r)->FindTensor("output.weight"), nullptr);
  EXPECT_EQ((*r)->FindTensor("output.weight")->shape, (std::vector<uint64_t>{50, 32}));
  auto s = OpenBytes(Legacy(32, 48, 2, 4, 2, 50, 16));
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_TRUE((*s)->config().tied_embeddings);
  EXPECT_EQ((*s)->FindTensor("output.weight"), nullptr);
}

TEST(Llama2cReaderTest, V1SeparateClassifier) {
  Bytes b;
  b.Put<uint32_t>(kLlama2cMagic).Put<int32_t>(1);
  for (int32_t v : {32, 48, 1, 4, 4, 20, 8}) b.Put<int32_t>(v);
  b.Put<uint8_t>(0);
  b.b.resize(256);
  const size_t floats = 32 * 2 + 32 + 20 * 32 + 4 * 32 * 32 + 3 * 32 * 48 + 20 * 32;
  b.b.resize(256 + floats * 4);
  auto r = OpenBytes(b.b);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_FALSE((*r)->config().tied_embeddings);
  b.b.resize(b.b.size() - 4);
  EXPECT_EQ(OpenBytes(b.b).status().code(), StatusCode::kCorruption);
}

TEST(Llama2cReaderTest, CorruptHeadersAreClearErrors) {
  // Truncated header.
  EXPECT_EQ(OpenBytes(std::vector<std::byte>(10)).status().code(), StatusCode::kCorruption);
  // Size does not match the header (truncated weights, trailing junk).
  auto good = Legacy(32, 48, 2, 4, 2, 50, 16);
  std::vector<std::byte> cut(good.begin(), good.end() - 1);
  Status s = OpenBytes(cut).status();
  EXPECT_EQ(s.code(), StatusCode::kCorruption);
  EXPECT_NE(s.message().find("header describes"), std::string_view::npos) << s.ToString();
  EXPECT_EQ(OpenBytes(Legacy(32, 48, 2, 4, 2, 50, 16, 4)).status().code(), StatusCode::kCorruption);
  // Zero / negative fields.
  EXPECT_EQ(OpenBytes(Legacy(32, 48, 0, 4, 2, 50, 16)).status().code(), StatusCode::kCorruption);
  Bytes neg;
  for (int32_t v : {32, -48, 2, 4, 2, 50, 16}) neg.Put<int32_t>(v);
  neg.b.resize(4096);
  EXPECT_EQ(OpenBytes(neg.b).status().code(), StatusCode::kCorruption);
  // dim not divisible by heads; heads not divisible by kv heads.
  EXPECT_FALSE(OpenBytes(Legacy(30, 48, 2, 4, 2, 50, 16)).ok());
  EXPECT_FALSE(OpenBytes(Legacy(32, 48, 2, 4, 3, 50, 16)).ok());
  // Sizes that overflow 64 bits when multiplied out.
  Bytes huge;
  for (int32_t v : {1 << 20, 1 << 22, 4096, 1 << 10, 1 << 10, INT32_MAX, INT32_MAX}) {
    huge.Put<int32_t>(v);
  }
  EXPECT_FALSE(OpenBytes(huge.b).ok());
  Bytes min_vocab;
  for (int32_t v : {32, 48, 2, 4, 2, INT32_MIN, 16}) min_vocab.Put<int32_t>(v);
  EXPECT_EQ(OpenBytes(min_vocab.b).status().code(), StatusCode::kCorruption);
  // Version 2 (int8) files are refused by name.
  Bytes v2;
  v2.Put<uint32_t>(kLlama2cMagic).Put<int32_t>(2);
  v2.b.resize(256);
  s = OpenBytes(v2.b).status();
  EXPECT_EQ(s.code(), StatusCode::kNotSupported);
  EXPECT_NE(s.message().find("version 2"), std::string_view::npos);
  // Truncated v1 header.
  Bytes v1;
  v1.Put<uint32_t>(kLlama2cMagic).Put<int32_t>(1);
  EXPECT_EQ(OpenBytes(v1.b).status().code(), StatusCode::kCorruption);
}

TEST(Llama2cReaderTest, CorruptTokenizersAreClearErrors) {
  const auto model = Legacy(32, 48, 1, 4, 4, 3, 8);
  Bytes tok;
  tok.Put<int32_t>(8);
  for (const char* s : {"<unk>", "\n<s>\n", " hi"}) {
    tok.Put<float>(0.5f).Put<int32_t>(static_cast<int32_t>(std::strlen(s))).Raw(s);
  }
  auto ok = OpenBytes(model, &tok.b);
  ASSERT_TRUE(ok.ok()) << ok.status().ToString();
  EXPECT_EQ((*ok)->vocab().tokens[2], "\xE2\x96\x81hi");
  for (size_t n = 0; n < tok.b.size(); ++n) {
    std::vector<std::byte> cut(tok.b.begin(), tok.b.begin() + n);
    auto r = OpenBytes(model, &cut);
    ASSERT_FALSE(r.ok()) << n;
    EXPECT_EQ(r.status().code(), StatusCode::kCorruption);
  }
  Bytes bad;  // negative length
  bad.Put<int32_t>(8).Put<float>(0).Put<int32_t>(-3);
  EXPECT_EQ(OpenBytes(model, &bad.b).status().code(), StatusCode::kCorruption);
  Bytes long_tok;  // length above max_token_length
  long_tok.Put<int32_t>(2).Put<float>(0).Put<int32_t>(1000);
  long_tok.b.resize(2000);
  EXPECT_EQ(OpenBytes(model, &long_tok.b).status().code(), StatusCode::kCorruption);
}

}  // namespace
}  // namespace flashlm::layout
