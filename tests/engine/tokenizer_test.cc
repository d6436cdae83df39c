#include "engine/tokenizer.h"

#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include "layout/byte_source.h"
#include "layout/gguf_reader.h"
#include "layout/llama2c_reader.h"
#include "tests/test_util.h"

namespace flashlm::engine {
namespace {

std::string ReadAll(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Inputs separated by "\n__ggml_vocab_test__\n"; expected ids one line per input.
void CheckVectors(const Tokenizer& tok, const std::filesystem::path& inp,
                  const std::filesystem::path& out) {
  const std::string text = ReadAll(inp), expected = ReadAll(out);
  const std::string sep = "\n__ggml_vocab_test__\n";
  std::vector<std::string> inputs;
  for (size_t pos = 0;;) {
    const size_t next = text.find(sep, pos);
    if (next == std::string::npos) break;
    inputs.push_back(text.substr(pos, next - pos));
    pos = next + sep.size();
  }
  std::vector<std::string> lines;
  std::stringstream es(expected);
  for (std::string line; std::getline(es, line);) lines.push_back(line);
  ASSERT_EQ(inputs.size(), 46u);
  ASSERT_GE(lines.size(), inputs.size());
  int non_ascii = 0;
  for (size_t i = 0; i < inputs.size(); ++i) {
    std::vector<int32_t> want;
    std::stringstream ls(lines[i]);
    for (int32_t id; ls >> id;) want.push_back(id);
    EXPECT_EQ(tok.Encode(inputs[i], /*add_bos=*/false), want)
        << "input #" << i << ": '" << inputs[i] << "'";
    for (char c : inputs[i]) non_ascii += static_cast<unsigned char>(c) >= 0x80;
  }
  EXPECT_GT(non_ascii, 0);  // the vectors exercise non-ASCII text
}

TEST(TokenizerTest, LlamaSpmVectorsWithLlama2cTokenizerBin) {
  FLASHLM_REQUIRE_SHARED_MODEL(bin, "llama2c-tokenizer/tokenizer.bin");
  FLASHLM_REQUIRE_SHARED_MODEL(inp, "llama-spm-vocab-gguf/ggml-vocab-llama-spm.gguf.inp");
  FLASHLM_REQUIRE_SHARED_MODEL(out, "llama-spm-vocab-gguf/ggml-vocab-llama-spm.gguf.out");
  auto vocab = layout::ReadLlama2cTokenizer(bin.string());
  ASSERT_TRUE(vocab.ok()) << vocab.status().ToString();
  ASSERT_EQ(vocab->tokens.size(), 32000u);
  auto tok = Tokenizer::Create(*vocab);
  ASSERT_TRUE(tok.ok());
  CheckVectors(**tok, inp, out);
}

TEST(TokenizerTest, LlamaSpmVectorsWithVocabOnlyGguf) {
  FLASHLM_REQUIRE_SHARED_MODEL(gguf, "llama-spm-vocab-gguf/ggml-vocab-llama-spm.gguf");
  FLASHLM_REQUIRE_SHARED_MODEL(inp, "llama-spm-vocab-gguf/ggml-vocab-llama-spm.gguf.inp");
  FLASHLM_REQUIRE_SHARED_MODEL(out, "llama-spm-vocab-gguf/ggml-vocab-llama-spm.gguf.out");
  auto src = layout::OpenFileSource(gguf.string());
  ASSERT_TRUE(src.ok());
  auto file = layout::GgufFile::Parse(**src);
  ASSERT_TRUE(file.ok()) << file.status().ToString();
  auto vocab = layout::GgufVocab(*file);
  ASSERT_TRUE(vocab.ok()) << vocab.status().ToString();
  ASSERT_EQ(vocab->tokens.size(), 32000u);
  auto tok = Tokenizer::Create(*vocab);
  ASSERT_TRUE(tok.ok());
  CheckVectors(**tok, inp, out);
  EXPECT_EQ((*tok)->Encode("Hello world", true), (std::vector<int32_t>{1, 15043, 3186}));
}

TEST(TokenizerTest, Tok512RoundTripsAndAddsBos) {
  FLASHLM_REQUIRE_SHARED_MODEL(bin, "stories260K/tok512.bin");
  auto vocab = layout::ReadLlama2cTokenizer(bin.string(), 512);
  ASSERT_TRUE(vocab.ok()) << vocab.status().ToString();
  EXPECT_EQ(vocab->tokens[1], "<s>");
  auto tok = std::move(Tokenizer::Create(*vocab)).value();
  const std::string text = "Once upon a time, Lily saw a big \xC3\xA9l\xC3\xA9phant.\nThe end";
  std::vector<int32_t> ids = tok->Encode(text, true);
  ASSERT_GT(ids.size(), 2u);
  EXPECT_EQ(ids[0], 1);
  EXPECT_EQ(tok->Decode(ids), text);  // bytes outside the vocab fall back to <0xXX>
  EXPECT_EQ(tok->Encode("", true), std::vector<int32_t>{1});
  EXPECT_TRUE(tok->Encode("", false).empty());
}

TEST(TokenizerTest, ParsesSpecialTokensOnlyWhenAsked) {
  layout::Vocab v;
  v.kind = layout::Vocab::Kind::kSentencePiece;
  v.tokens = {"<unk>",
              "<s>",
              "</s>",
              "\xE2\x96\x81"
              "a",
              "a",
              "<",
              "s",
              ">",
              "/"};
  v.types = {2, 3, 3, 1, 1, 1, 1, 1, 1};
  v.scores = {0, 0, 0, -1, -2, -3, -3, -3, -3};
  auto tok = std::move(Tokenizer::Create(v)).value();
  EXPECT_EQ(tok->Encode("a</s>", false, true), (std::vector<int32_t>{3, 2}));
  EXPECT_EQ(tok->Encode("a</s>", false, false), (std::vector<int32_t>{3, 5, 8, 6, 7}));
}

TEST(TokenizerTest, Gpt2ByteLevelBpe) {
  // Byte-level vocabulary: "Ġ" is the space byte (0x20 -> U+0120).
  layout::Vocab v;
  v.kind = layout::Vocab::Kind::kGpt2Bpe;
  v.tokens = {"h",      "e",  "l",    "o",     "\xC4\xA0",  "w",           "r",  "d",
              "he",     "ll", "hell", "hello", "\xC4\xA0w", "\xC4\xA0wor", "or", "\xC4\xA0world",
              "<|eot|>"};
  v.types.assign(v.tokens.size(), 1);
  v.types.back() = 3;
  v.merges = {"h e", "l l",          "he ll",         "hell o",        "\xC4\xA0 w",
              "o r", "\xC4\xA0w or", "\xC4\xA0wor l", "\xC4\xA0worl d"};
  v.tokens.push_back("\xC4\xA0worl");
  v.types.push_back(1);
  v.bos_id = -1;
  v.eos_id = 16;
  auto tok = std::move(Tokenizer::Create(v)).value();
  std::vector<int32_t> ids = tok->Encode("hello world", false);
  EXPECT_EQ(ids, (std::vector<int32_t>{11, 15}));
  EXPECT_EQ(tok->Decode(ids), "hello world");
  EXPECT_EQ(tok->Encode("hello<|eot|>", false, true), (std::vector<int32_t>{11, 16}));
}

TEST(TokenizerTest, RejectsCorruptTokenizerBin) {
  testing::ScratchDir dir;
  const std::string p = (dir / "bad.bin").string();
  {
    std::ofstream f(p, std::ios::binary);
    int32_t max_len = 10;
    float score = 0;
    int32_t len = 1000;
    f.write(reinterpret_cast<char*>(&max_len), 4);
    f.write(reinterpret_cast<char*>(&score), 4);
    f.write(reinterpret_cast<char*>(&len), 4);
    f.write("ab", 2);
  }
  EXPECT_EQ(layout::ReadLlama2cTokenizer(p).status().code(), StatusCode::kCorruption);
  EXPECT_EQ(layout::ReadLlama2cTokenizer((dir / "missing").string()).status().code(),
            StatusCode::kNotFound);
}

TEST(Utf8StreamTest, HoldsBackPartialSequences) {
  Utf8Stream s;
  // "é" = C3 A9, "🦙" = F0 9F A6 99
  EXPECT_EQ(s.Push("a\xC3"), "a");
  EXPECT_EQ(s.Push("\xA9"), "\xC3\xA9");
  EXPECT_EQ(s.Push("\xF0\x9F"), "");
  EXPECT_EQ(s.Push("\xA6"), "");
  EXPECT_EQ(s.Push("\x99!"), "\xF0\x9F\xA6\x99!");
  EXPECT_EQ(s.Push("\xE2"), "");
  EXPECT_EQ(s.Flush(), "\xE2");  // an unfinished sequence comes out at the end
}

}  // namespace
}  // namespace flashlm::engine
