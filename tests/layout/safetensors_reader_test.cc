#include "layout/safetensors_reader.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>

#include "layout/gguf_reader.h"
#include "layout/hf_tokenizer.h"
#include "layout/llama_tensors.h"
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

std::string HfName(const std::string& canon) {
  if (canon == "token_embd.weight") return "model.embed_tokens.weight";
  if (canon == "output_norm.weight") return "model.norm.weight";
  if (canon == "output.weight") return "lm_head.weight";
  const size_t dot = canon.find('.', 4);
  const std::string layer = canon.substr(4, dot - 4), rest = canon.substr(dot + 1);
  static const std::map<std::string, std::string> kMap = {
      {"attn_norm.weight", "input_layernorm.weight"},
      {"attn_q.weight", "self_attn.q_proj.weight"},
      {"attn_k.weight", "self_attn.k_proj.weight"},
      {"attn_v.weight", "self_attn.v_proj.weight"},
      {"attn_output.weight", "self_attn.o_proj.weight"},
      {"ffn_norm.weight", "post_attention_layernorm.weight"},
      {"ffn_gate.weight", "mlp.gate_proj.weight"},
      {"ffn_up.weight", "mlp.up_proj.weight"},
      {"ffn_down.weight", "mlp.down_proj.weight"}};
  return "model.layers." + layer + "." + kMap.at(rest);
}

// Writes `src` (f32) as a HF folder: config.json + model.safetensors in `dtype` (F32/F16/BF16),
// q/k rows permuted to rotate-half order as HF checkpoints are. `bad_shape` names a tensor
// whose declared shape gets one row fewer (its data shrinks to match).
void WriteHfFolder(Checkpoint& src, const std::filesystem::path& dir, const std::string& st_dtype,
                   const std::string& bad_shape = "") {
  const ModelConfig& c = src.config();
  WriteText(dir / "config.json",
            "{\"model_type\":\"llama\",\"hidden_size\":" + std::to_string(c.dim) +
                ",\"intermediate_size\":" + std::to_string(c.hidden_dim) +
                ",\"num_hidden_layers\":" + std::to_string(c.n_layers) +
                ",\"num_attention_heads\":" + std::to_string(c.n_heads) +
                ",\"num_key_value_heads\":" + std::to_string(c.n_kv_heads) +
                ",\"vocab_size\":" + std::to_string(c.vocab_size) +
                ",\"max_position_embeddings\":" + std::to_string(c.max_seq_len) +
                ",\"rms_norm_eps\":1e-05,\"tie_word_embeddings\":" +
                (c.tied_embeddings ? "true" : "false") + "}");
  std::string header = "{";
  std::vector<std::byte> data;
  for (const TensorInfo& t : src.tensors()) {
    std::vector<float> v(t.num_values());
    ASSERT_TRUE(src.ReadTensorF32(t, v).ok());
    const bool qk = t.name.ends_with("attn_q.weight") || t.name.ends_with("attn_k.weight");
    std::vector<float> hf = v;
    if (qk) {
      for (uint64_t r = 0; r < t.rows(); ++r) {
        const uint64_t h = HfRowForCanonical(r, c.head_dim);
        std::copy_n(&v[r * t.cols()], t.cols(), &hf[h * t.cols()]);
      }
    }
    std::vector<uint64_t> shape = t.shape;
    if (t.name == bad_shape) {
      shape[0] -= 1;
      hf.resize(hf.size() - t.cols());
    }
    const size_t begin = data.size();
    for (float x : hf) {
      if (st_dtype == "F32") {
        const auto* p = reinterpret_cast<const std::byte*>(&x);
        data.insert(data.end(), p, p + 4);
      } else {
        const uint16_t h = st_dtype == "F16" ? F32ToF16(x) : F32ToBF16(x);
        const auto* p = reinterpret_cast<const std::byte*>(&h);
        data.insert(data.end(), p, p + 2);
      }
    }
    if (header.size() > 1) header += ",";
    // Appended piece by piece: GCC 12 warns falsely (-Wrestrict) on one long concatenation.
    header.append("\"").append(HfName(t.name)).append("\":{\"dtype\":\"").append(st_dtype);
    header.append("\",\"shape\":").append(ShapeString(shape)).append(",\"data_offsets\":[");
    header.append(std::to_string(begin)).append(",").append(std::to_string(data.size()));
    header.append("]}");
  }
  header += "}";
  Bytes b;
  b.Put<uint64_t>(header.size()).Raw(header);
  b.b.insert(b.b.end(), data.begin(), data.end());
  testing::WriteFileBytes(dir / "model.safetensors", b.b);
}

TEST(SafetensorsReaderTest, HfFolderRoundTripsAGqaModelInEveryDtype) {
  flashlm::testing::ScratchDir dir;
  ASSERT_TRUE(testing::WriteTinyGguf(dir / "ref.gguf", testing::TinyGgufSpec{}).ok());
  auto ref = OpenCheckpoint((dir / "ref.gguf").string());
  ASSERT_TRUE(ref.ok()) << ref.status().ToString();
  ASSERT_EQ((*ref)->config().n_kv_heads, 2u);  // GQA: k has fewer heads than q
  for (std::string dt : {"F32", "F16", "BF16"}) {
    const auto folder = dir / dt;
    std::filesystem::create_directories(folder);
    WriteHfFolder(**ref, folder, dt);
    auto hf = OpenCheckpoint(folder.string());
    ASSERT_TRUE(hf.ok()) << hf.status().ToString();
    EXPECT_EQ((*hf)->format(), "safetensors");
    EXPECT_FALSE((*hf)->config().tied_embeddings);
    for (const TensorInfo& t : (*ref)->tensors()) {
      const TensorInfo* u = (*hf)->FindTensor(t.name);
      ASSERT_NE(u, nullptr) << t.name;
      EXPECT_EQ(u->dtype, dt == "F32" ? DType::kF32 : dt == "F16" ? DType::kF16 : DType::kBF16);
      std::vector<float> a(t.num_values()), b(u->num_values());
      ASSERT_TRUE((*ref)->ReadTensorF32(t, a).ok());
      ASSERT_TRUE((*hf)->ReadTensorF32(*u, b).ok());
      for (size_t i = 0; i < a.size(); ++i) {
        const float want = dt == "F32"   ? a[i]
                           : dt == "F16" ? F16ToF32(F32ToF16(a[i]))
                                         : BF16ToF32(F32ToBF16(a[i]));
        ASSERT_EQ(b[i], want) << dt << " " << t.name << " value " << i;
      }
    }
  }
}

TEST(SafetensorsReaderTest, InconsistentShapeIsCorruption) {
  flashlm::testing::ScratchDir dir;
  ASSERT_TRUE(testing::WriteTinyGguf(dir / "ref.gguf", testing::TinyGgufSpec{}).ok());
  auto ref = OpenCheckpoint((dir / "ref.gguf").string());
  ASSERT_TRUE(ref.ok());
  WriteHfFolder(**ref, dir.path(), "F32", "blk.1.attn_k.weight");
  auto hf = OpenCheckpoint(dir.path().string());
  ASSERT_FALSE(hf.ok());
  EXPECT_EQ(hf.status().code(), StatusCode::kCorruption);
  EXPECT_NE(hf.status().message().find("blk.1.attn_k.weight"), std::string_view::npos)
      << hf.status().ToString();
}

}  // namespace
}  // namespace flashlm::layout
