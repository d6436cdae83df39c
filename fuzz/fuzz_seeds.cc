// Writes small valid seed inputs for the fuzz targets into <dir>/{gguf,safetensors,llama2c,
// tokenizer}/: a tiny synthesised GGUF (f32 and q8_0), the same shape as HF safetensors and as
// llama2.c legacy / version-1 files, a llama2.c tokenizer.bin, config.json and tokenizer.json.
// Usage: fuzz_seeds DIR
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "fuzz/fuzz_util.h"
#include "layout/llama2c_reader.h"
#include "layout/llama_tensors.h"
#include "layout/repack.h"
#include "layout/store_format.h"
#include "layout/synth.h"
#include "storage/lmdb_env.h"

namespace {

namespace fs = std::filesystem;
using flashlm::layout::ModelConfig;
using flashlm::layout::TensorInfo;

void Write(const fs::path& p, const std::string& bytes) {
  std::ofstream(p, std::ios::binary) << bytes;
}

template <typename T>
void Put(std::string& s, T v) {
  s.append(reinterpret_cast<const char*>(&v), sizeof(T));
}

std::string HfName(const std::string& canon) {
  if (canon == "token_embd.weight") return "model.embed_tokens.weight";
  if (canon == "output_norm.weight") return "model.norm.weight";
  if (canon == "output.weight") return "lm_head.weight";
  const size_t dot = canon.find('.', 4);
  const std::string layer = canon.substr(4, dot - 4), rest = canon.substr(dot + 1);
  static const std::pair<const char*, const char*> kMap[] = {
      {"attn_norm.weight", "input_layernorm.weight"},
      {"attn_q.weight", "self_attn.q_proj.weight"},
      {"attn_k.weight", "self_attn.k_proj.weight"},
      {"attn_v.weight", "self_attn.v_proj.weight"},
      {"attn_output.weight", "self_attn.o_proj.weight"},
      {"ffn_norm.weight", "post_attention_layernorm.weight"},
      {"ffn_gate.weight", "mlp.gate_proj.weight"},
      {"ffn_up.weight", "mlp.up_proj.weight"},
      {"ffn_down.weight", "mlp.down_proj.weight"}};
  for (auto [a, b] : kMap) {
    if (rest == a) return "model.layers." + layer + "." + b;
  }
  return canon;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: fuzz_seeds DIR\n");
    return 2;
  }
  const fs::path dir = argv[1];
  for (const char* sub : {"gguf", "safetensors", "llama2c", "tokenizer", "store"}) {
    fs::create_directories(dir / sub);
  }
  ModelConfig c = flashlm::fuzz::SeedConfig();
  for (auto dt : {flashlm::layout::DType::kF32, flashlm::layout::DType::kQ8_0}) {
    flashlm::layout::SynthOptions o;
    o.config = c;
    o.dtype = dt;
    o.out_path = (dir / "gguf" / (std::string(DTypeName(dt)) + ".gguf")).string();
    if (auto s = flashlm::layout::SynthesizeGguf(o); !s.ok()) {
      std::fprintf(stderr, "fuzz_seeds: %s\n", s.ToString().c_str());
      return 1;
    }
  }
  // Safetensors with HF names; tied embeddings, so no lm_head.
  ModelConfig tied = c;
  tied.tied_embeddings = true;
  std::string header = "{\"__metadata__\":{\"format\":\"pt\"}";
  uint64_t offset = 0;
  std::string data;
  for (const TensorInfo& t : flashlm::layout::ExpectedLlamaTensors(tied)) {
    const uint64_t bytes = t.num_values() * 4;
    header += ",\"" + HfName(t.name) + "\":{\"dtype\":\"F32\",\"shape\":[";
    for (size_t d = 0; d < t.shape.size(); ++d) {
      header += (d ? "," : "") + std::to_string(t.shape[d]);
    }
    header += "],\"data_offsets\":[" + std::to_string(offset) + "," +
              std::to_string(offset + bytes) + "]}";
    for (uint64_t i = 0; i < t.num_values(); ++i) Put<float>(data, 0.01f * (i % 13));
    offset += bytes;
  }
  header += "}";
  std::string st;
  Put<uint64_t>(st, header.size());
  Write(dir / "safetensors" / "model.safetensors", st + header + data);
  // llama2.c legacy (shared classifier) and version 1 (separate classifier).
  const int32_t hd[7] = {32, 32, 1, 2, 1, 260, 64};
  std::string legacy;
  for (int32_t v : hd) Put<int32_t>(legacy, v);
  const uint64_t floats = 260 * 32 + 2 * 32 + 32 * 32 * 2 + 2 * 16 * 32 + 3 * 32 * 32 + 32;
  legacy.append((floats + 64 * 16) * 4, '\0');
  Write(dir / "llama2c" / "legacy.bin", legacy);
  std::string v1;
  Put<uint32_t>(v1, flashlm::layout::kLlama2cMagic);
  Put<int32_t>(v1, 1);
  for (int32_t v : hd) Put<int32_t>(v1, v);
  v1.push_back('\0');
  v1.resize(256, '\0');
  v1.append((floats + 260 * 32) * 4, '\0');
  Write(dir / "llama2c" / "v1.bin", v1);
  // Tokenizers.
  std::string tok;
  Put<int32_t>(tok, 8);
  for (int i = 0; i < 260; ++i) {
    std::string s = i == 1 ? "\n<s>\n" : i == 2 ? "\n</s>\n" : "t" + std::to_string(i);
    Put<float>(tok, -1.0f * i);
    Put<int32_t>(tok, static_cast<int32_t>(s.size()));
    tok += s;
  }
  Write(dir / "llama2c" / "tokenizer.bin", tok);
  Write(dir / "tokenizer" / "config.json",
        R"({"model_type":"llama","hidden_size":32,"intermediate_size":32,"num_hidden_layers":1,)"
        R"("num_attention_heads":2,"num_key_value_heads":1,"vocab_size":260,)"
        R"("rope_scaling":{"rope_type":"llama3","factor":8.0},"tie_word_embeddings":true})");
  Write(dir / "tokenizer" / "tokenizer.json",
        R"({"added_tokens":[{"id":1,"content":"<s>","special":true}],"pre_tokenizer":null,)"
        R"("model":{"type":"BPE","unk_token":"<unk>","vocab":{"<unk>":0,"<s>":1,"<0x0A>":2,)"
        R"("a":3,"b":4},"merges":["a b",["a","b"]]}})");
  // A SentencePiece model: two pieces and a trainer spec.
  std::string sp;
  for (const char* piece : {"<unk>", "\xE2\x96\x81the"}) {
    std::string msg;
    msg += '\x0a';
    msg += static_cast<char>(std::strlen(piece));
    msg += piece;
    msg += '\x15';
    Put<float>(msg, -1.5f);
    msg += '\x18';
    msg += '\x01';
    sp += '\x0a';
    sp += static_cast<char>(msg.size());
    sp += msg;
  }
  sp += std::string("\x12\x04\xc0\x02\x00\x00", 6);  // trainer_spec {unk_id: 0}
  Write(dir / "tokenizer" / "tokenizer.model", sp);

  // Stores (fuzz_store): the f32 GGUF repacked gate-up-down and the q8_0 one gate+up-down; their
  // catalog records and data file in fuzz_store's input format.
  for (auto dt : {flashlm::layout::DType::kF32, flashlm::layout::DType::kQ8_0}) {
    const std::string name = std::string(DTypeName(dt));
    const fs::path store = dir / ("store-tmp-" + name);
    fs::remove_all(store);
    auto src = flashlm::layout::OpenCheckpoint((dir / "gguf" / (name + ".gguf")).string());
    flashlm::layout::RepackOptions ro;
    ro.alignment_bytes = 512;
    if (dt != flashlm::layout::DType::kF32) {
      ro.bundle_kind = flashlm::layout::BundleKind::kGateSeparate;
    }
    if (!src.ok() || !flashlm::layout::Repack(**src, store.string(), ro).ok()) {
      std::fprintf(stderr, "fuzz_seeds: cannot repack the %s seed\n", name.c_str());
      return 1;
    }
    std::string input;
    auto record = [&](std::string_view key, std::string_view value) {
      input += static_cast<char>(key.size());
      input += key;
      Put<uint32_t>(input, static_cast<uint32_t>(value.size()));
      input += value;
    };
    {
      auto env = flashlm::storage::LmdbEnv::Open((store / "catalog.mdb").string(), {});
      if (!env.ok()) return 1;
      auto txn = (*env)->BeginRead();
      if (!txn.ok()) return 1;
      (void)txn->ForEach("", [&](std::string_view k, flashlm::ConstByteSpan v) {
        record(k, std::string_view(reinterpret_cast<const char*>(v.data()), v.size()));
        return true;
      });
    }
    std::ifstream data(store / flashlm::layout::DataFileName(0), std::ios::binary);
    record("\001data",
           std::string((std::istreambuf_iterator<char>(data)), std::istreambuf_iterator<char>()));
    Write(dir / "store" / (name + ".records"), input);
    fs::remove_all(store);
  }
  return 0;
}
