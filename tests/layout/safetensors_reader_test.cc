#include "layout/safetensors_reader.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "layout/gguf_reader.h"
#include "layout/hf_tokenizer.h"
#include "tests/layout/layout_test_util.h"
#include "tests/test_util.h"

namespace flashlm::layout {
namespace {

using ::flashlm::layout::testing::Bytes;
using ::flashlm::layout::testing::ReadFileBytes;

// A safetensors file from a JSON header and `data_bytes` zero bytes of data.
std::vector<std::byte> Safetensors(const std::string& header, size_t data_bytes) {
  Bytes b;
  b.Put<uint64_t>(header.size()).Raw(header);
  b.b.resize(b.b.size() + data_bytes);
  return b.b;
}

Status ParseBytes(const std::vector<std::byte>& b) {
  auto src = MemorySource(b, "test.safetensors");
  return SafetensorsFile::Parse(*src).status();
}

void WriteText(const std::filesystem::path& p, const std::string& s) { std::ofstream(p) << s; }

TEST(SafetensorsReaderTest, ParsesValidHeader) {
  auto b = Safetensors(
      R"({"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},)"
      R"("b":{"dtype":"BF16","shape":[4],"data_offsets":[24,32]}})",
      32);
  auto src = MemorySource(b);
  auto f = SafetensorsFile::Parse(*src);
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  ASSERT_EQ(f->tensors.size(), 2u);
  EXPECT_EQ(f->tensors[0].shape, (std::vector<uint64_t>{2, 3}));
  EXPECT_EQ(f->tensors[1].dtype, DType::kBF16);
  EXPECT_EQ(f->tensors[1].offset_bytes, 8 + b.size() - 8 - 32 + 24);
}

TEST(SafetensorsReaderTest, CorruptFilesAreClearErrors) {
  // Truncated before the length.
  EXPECT_EQ(ParseBytes(std::vector<std::byte>(5)).code(), StatusCode::kCorruption);
  // Header length past the end of the file (and an absurd one).
  Bytes big;
  big.Put<uint64_t>(1000).Raw("{}");
  Status s = ParseBytes(big.b);
  EXPECT_EQ(s.code(), StatusCode::kCorruption);
  EXPECT_NE(s.message().find("header length"), std::string_view::npos) << s.ToString();
  Bytes huge;
  huge.Put<uint64_t>(~uint64_t{0}).Raw("{}");
  EXPECT_EQ(ParseBytes(huge.b).code(), StatusCode::kCorruption);
  // Malformed and deeply nested JSON.
  EXPECT_EQ(ParseBytes(Safetensors("{\"a\":", 0)).code(), StatusCode::kCorruption);
  EXPECT_EQ(ParseBytes(Safetensors(std::string(5000, '['), 0)).code(), StatusCode::kCorruption);
  EXPECT_EQ(ParseBytes(Safetensors("[1,2]", 0)).code(), StatusCode::kCorruption);
  // Offsets out of range, reversed, overflowing, not matching the shape.
  s = ParseBytes(Safetensors(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 4));
  EXPECT_EQ(s.code(), StatusCode::kCorruption);
  EXPECT_NE(s.message().find("outside the data"), std::string_view::npos) << s.ToString();
  EXPECT_EQ(ParseBytes(Safetensors(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", 8))
                .code(),
            StatusCode::kCorruption);
  EXPECT_EQ(
      ParseBytes(
          Safetensors(
              R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[18446744073709551615,8]}})", 8))
          .code(),
      StatusCode::kCorruption);
  s = ParseBytes(Safetensors(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8));
  EXPECT_EQ(s.code(), StatusCode::kCorruption);
  EXPECT_NE(s.message().find("needs 12"), std::string_view::npos) << s.ToString();
  s = ParseBytes(Safetensors(
      R"({"a":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,8]}})", 8));
  EXPECT_EQ(s.code(), StatusCode::kCorruption);
  EXPECT_NE(s.message().find("overflow"), std::string_view::npos) << s.ToString();
  // Wrong field types.
  EXPECT_EQ(ParseBytes(Safetensors(R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8))
                .code(),
            StatusCode::kCorruption);
  EXPECT_EQ(
      ParseBytes(Safetensors(R"({"a":{"dtype":7,"shape":[2],"data_offsets":[0,8]}})", 8)).code(),
      StatusCode::kCorruption);
  EXPECT_EQ(ParseBytes(Safetensors(R"({"a":5})", 8)).code(), StatusCode::kCorruption);
  // Unknown dtype is refused by name.
  s = ParseBytes(Safetensors(R"({"a":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}})", 8));
  EXPECT_EQ(s.code(), StatusCode::kNotSupported);
  EXPECT_NE(s.message().find("I64"), std::string_view::npos);
}

TEST(SafetensorsReaderTest, HfRowPermutationIsUndone) {
  // head_dim 4: canonical pairs (0,1),(2,3) are HF rows (0,2),(1,3).
  EXPECT_EQ(HfRowForCanonical(0, 4), 0u);
  EXPECT_EQ(HfRowForCanonical(1, 4), 2u);
  EXPECT_EQ(HfRowForCanonical(2, 4), 1u);
  EXPECT_EQ(HfRowForCanonical(3, 4), 3u);
  EXPECT_EQ(HfRowForCanonical(5, 4), 6u);  // second head
}

TEST(SafetensorsReaderTest, ConfigErrors) {
  auto r = ParseHfConfig(R"({"model_type":"gpt2","architectures":["GPT2LMHeadModel"]})");
  EXPECT_EQ(r.status().code(), StatusCode::kNotSupported);
  EXPECT_NE(r.status().message().find("gpt2"), std::string_view::npos);
  r = ParseHfConfig(R"({"model_type":"llama","hidden_size":64})");
  EXPECT_EQ(r.status().code(), StatusCode::kCorruption);
  r = ParseHfConfig(R"({"model_type":"llama","hidden_size":"64"})");
  EXPECT_EQ(r.status().code(), StatusCode::kCorruption);
  r = ParseHfConfig(
      R"({"model_type":"llama","hidden_size":64,"intermediate_size":96,"num_hidden_layers":2,)"
      R"("num_attention_heads":4,"num_key_value_heads":3,"vocab_size":10})");
  EXPECT_EQ(r.status().code(), StatusCode::kCorruption) << r.status().ToString();
  r = ParseHfConfig(
      R"({"model_type":"llama","hidden_size":64,"intermediate_size":96,"num_hidden_layers":2,)"
      R"("num_attention_heads":4,"vocab_size":10,"hidden_act":"gelu"})");
  EXPECT_EQ(r.status().code(), StatusCode::kNotSupported);
  r = ParseHfConfig(
      R"({"model_type":"llama","hidden_size":64,"intermediate_size":96,"num_hidden_layers":2,)"
      R"("num_attention_heads":4,"vocab_size":10,"rope_scaling":{"rope_type":"llama3",)"
      R"("factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,)"
      R"("original_max_position_embeddings":8192}})");
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->rope_scaling.type, RopeScalingType::kLlama3);
  EXPECT_EQ(r->rope_scaling.factor, 8.0f);
  EXPECT_EQ(r->n_kv_heads, 4u);
  EXPECT_EQ(r->head_dim, 16u);
}

TEST(SafetensorsReaderTest, FolderErrors) {
  flashlm::testing::ScratchDir dir;
  const std::string cfg =
      R"({"model_type":"llama","hidden_size":8,"intermediate_size":8,"num_hidden_layers":1,)"
      R"("num_attention_heads":2,"vocab_size":4,"tie_word_embeddings":false})";
  WriteText(dir / "config.json", cfg);
  auto r = OpenHuggingFace(dir.path().string(), {});
  EXPECT_EQ(r.status().code(), StatusCode::kNotFound);  // no weights
  // Only an embedding: lm_head missing while tie_word_embeddings is false.
  testing::WriteFileBytes(
      dir / "model.safetensors",
      Safetensors(
          R"({"model.embed_tokens.weight":{"dtype":"F32","shape":[4,8],"data_offsets":[0,128]}})",
          128));
  r = OpenHuggingFace(dir.path().string(), {});
  EXPECT_EQ(r.status().code(), StatusCode::kCorruption);
  EXPECT_NE(r.status().message().find("lm_head"), std::string_view::npos) << r.status().ToString();
  // A tensor no LLaMA has.
  testing::WriteFileBytes(
      dir / "model.safetensors",
      Safetensors(
          R"({"model.layers.0.self_attn.q_proj.bias":{"dtype":"F32","shape":[8],"data_offsets":[0,32]}})",
          32));
  r = OpenHuggingFace(dir.path().string(), {});
  EXPECT_EQ(r.status().code(), StatusCode::kNotSupported);
  // Index whose shard escapes the folder.
  WriteText(dir / "model.safetensors.index.json", R"({"weight_map":{"a":"../x.safetensors"}})");
  r = OpenHuggingFace(dir.path().string(), {});
  EXPECT_EQ(r.status().code(), StatusCode::kCorruption);
}

TEST(HfTokenizerTest, SentencePieceModelMatchesLlama2cTokenizerAndGgufVocab) {
  FLASHLM_REQUIRE_SHARED_MODEL(model, "llama2c-tokenizer/tokenizer.model");
  FLASHLM_REQUIRE_SHARED_MODEL(gguf, "llama-spm-vocab-gguf/ggml-vocab-llama-spm.gguf");
  auto src = OpenFileSource(model.string());
  ASSERT_TRUE(src.ok());
  auto v = ParseSentencePieceModel(**src);
  ASSERT_TRUE(v.ok()) << v.status().ToString();
  ASSERT_EQ(v->tokens.size(), 32000u);
  EXPECT_EQ(v->bos_id, 1);
  EXPECT_EQ(v->eos_id, 2);
  EXPECT_EQ(v->unk_id, 0);
  EXPECT_TRUE(v->add_space_prefix);
  auto gsrc = OpenFileSource(gguf.string());
  ASSERT_TRUE(gsrc.ok());
  auto gfile = GgufFile::Parse(**gsrc);
  ASSERT_TRUE(gfile.ok()) << gfile.status().ToString();
  auto gv = GgufVocab(*gfile);
  ASSERT_TRUE(gv.ok()) << gv.status().ToString();
  ASSERT_EQ(gv->tokens.size(), 32000u);
  for (size_t i = 0; i < 32000; ++i) {
    ASSERT_EQ(v->tokens[i], gv->tokens[i]) << i;
    ASSERT_EQ(v->scores[i], gv->scores[i]) << i;
    ASSERT_EQ(v->types[i], gv->types[i]) << i;
  }
  // Every truncation fails cleanly (sampled: the file is 500 KB).
  const auto bytes = ReadFileBytes(model);
  for (size_t n = 1; n < bytes.size(); n += 4099) {
    std::vector<std::byte> cut(bytes.begin(), bytes.begin() + n);
    auto m = MemorySource(cut);
    auto r = ParseSentencePieceModel(*m);
    if (!r.ok()) {
      EXPECT_EQ(r.status().code(), StatusCode::kCorruption);
    }
  }
}

TEST(HfTokenizerTest, TokenizerJsonSentencePieceAndByteLevel) {
  const std::string spm = R"({"added_tokens":[{"id":0,"content":"<unk>","special":true},
      {"id":1,"content":"<s>","special":true},{"id":2,"content":"</s>","special":true}],
      "pre_tokenizer":null,
      "model":{"type":"BPE","byte_fallback":true,"unk_token":"<unk>",
      "vocab":{"<unk>":0,"<s>":1,"</s>":2,"<0x0A>":3,"▁a":4,"b":5},"merges":["▁ a","a b"]}})";
  auto src = MemorySource(AsBytes(spm), "tokenizer.json");
  auto v = ParseTokenizerJson(*src);
  ASSERT_TRUE(v.ok()) << v.status().ToString();
  EXPECT_EQ(v->kind, Vocab::Kind::kSentencePiece);
  ASSERT_EQ(v->tokens.size(), 6u);
  EXPECT_EQ(v->tokens[4],
            "\xE2\x96\x81"
            "a");
  EXPECT_EQ(v->types[0], Vocab::kUnknown);
  EXPECT_EQ(v->types[1], Vocab::kControl);
  EXPECT_EQ(v->types[3], Vocab::kByte);
  EXPECT_EQ(v->bos_id, 1);
  EXPECT_EQ(v->eos_id, 2);
  EXPECT_EQ(v->merges.size(), 2u);

  const std::string bpe =
      R"({"added_tokens":[{"id":3,"content":"<|begin_of_text|>","special":true}],
      "pre_tokenizer":{"type":"Sequence","pretokenizers":[{"type":"ByteLevel"}]},
      "model":{"type":"BPE","vocab":{"a":0,"b":1,"ab":2},"merges":[["a","b"]]}})";
  src = MemorySource(AsBytes(bpe), "tokenizer.json");
  v = ParseTokenizerJson(*src);
  ASSERT_TRUE(v.ok()) << v.status().ToString();
  EXPECT_EQ(v->kind, Vocab::Kind::kGpt2Bpe);
  EXPECT_EQ(v->merges, std::vector<std::string>{"a b"});
  EXPECT_EQ(v->bos_id, 3);
  EXPECT_FALSE(v->add_space_prefix);

  src = MemorySource(AsBytes(std::string(R"({"model":{"type":"Unigram","vocab":[]}})")));
  EXPECT_EQ(ParseTokenizerJson(*src).status().code(), StatusCode::kNotSupported);
  src = MemorySource(AsBytes(std::string(R"({"model":{"type":"BPE","vocab":{"a":99999999}}})")));
  EXPECT_EQ(ParseTokenizerJson(*src).status().code(), StatusCode::kCorruption);
  src = MemorySource(AsBytes(std::string(R"({"model":{"type":"BPE","vocab":{"a":0,"b":0}}})")));
  EXPECT_EQ(ParseTokenizerJson(*src).status().code(), StatusCode::kCorruption);
}

TEST(HfTokenizerTest, CorruptProtobufIsCorruption) {
  for (std::string bad : {std::string("\x0a\xff\xff\xff\xff\x0f", 6),  // length past end
                          std::string("\x0a", 1),                      // truncated varint
                          std::string("\x0b\x00", 2),                  // group wire type
                          std::string("\x0a\x02\x18\x09", 4),          // piece type 9
                          std::string(12, '\xff')}) {                  // overlong varint
    auto src = MemorySource(AsBytes(bad));
    auto r = ParseSentencePieceModel(*src);
    EXPECT_EQ(r.status().code(), StatusCode::kCorruption) << r.status().ToString();
  }
}

}  // namespace
}  // namespace flashlm::layout
