#include "layout/safetensors_reader.h"

#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <unordered_map>

#include "layout/hf_tokenizer.h"
#include "layout/json_util.h"
#include "layout/llama2c_reader.h"
#include "layout/llama_tensors.h"

namespace flashlm::layout {
namespace {

using Json = nlohmann::json;

constexpr uint64_t kMaxHeaderBytes = 100 << 20;  // the safetensors format's own limit
Result<Json> ParseJson(std::string_view text, const std::string& what) {
  return ParseUntrustedJson(text, what);
}

Result<std::string> ReadTextFile(const std::filesystem::path& p, uint64_t max_bytes) {
  ASSIGN_OR_RETURN(std::unique_ptr<ByteSource> src, OpenFileSource(p.string()));
  if (src->size_bytes() > max_bytes) return CorruptionError(p.string() + ": file too large");
  std::string s(src->size_bytes(), '\0');
  RETURN_IF_ERROR(src->ReadAt(0, ByteSpan(reinterpret_cast<std::byte*>(s.data()), s.size())));
  return s;
}

Result<DType> SafetensorsDType(const std::string& s, const std::string& what) {
  if (s == "F32") return DType::kF32;
  if (s == "F16") return DType::kF16;
  if (s == "BF16") return DType::kBF16;
  return NotSupportedError(what + " has dtype " + s + ", which flashlm does not read");
}

// String field of a JSON object, `dflt` when absent or not a string (never throws).
std::string StrField(const Json& obj, const char* key, std::string dflt = "") {
  auto it = obj.find(key);
  return it != obj.end() && it->is_string() ? it->get<std::string>() : dflt;
}

}  // namespace

Result<SafetensorsFile> SafetensorsFile::Parse(ByteSource& src) {
  const std::string& name = src.name();
  const uint64_t size = src.size_bytes();
  if (size < 8) return CorruptionError(name + ": truncated safetensors header");
  uint64_t n;
  RETURN_IF_ERROR(src.ReadAt(0, ByteSpan(reinterpret_cast<std::byte*>(&n), 8)));
  if (n > kMaxHeaderBytes || n > size - 8) {
    return CorruptionError(name + ": safetensors header length " + std::to_string(n) +
                           " passes the end of the file (" + std::to_string(size) + " bytes)");
  }
  std::string header(n, '\0');
  RETURN_IF_ERROR(src.ReadAt(8, ByteSpan(reinterpret_cast<std::byte*>(header.data()), n)));
  ASSIGN_OR_RETURN(Json j, ParseJson(header, name + ": safetensors header"));
  if (!j.is_object()) return CorruptionError(name + ": safetensors header is not an object");
  const uint64_t data_start = 8 + n;
  const uint64_t data_size = size - data_start;
  SafetensorsFile f;
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (it.key() == "__metadata__") continue;
    const std::string what = name + ": tensor " + it.key();
    const Json& t = it.value();
    if (!t.is_object()) return CorruptionError(what + " is not an object");
    auto dt = t.find("dtype");
    auto sh = t.find("shape");
    auto off = t.find("data_offsets");
    if (dt == t.end() || !dt->is_string() || sh == t.end() || !sh->is_array() || off == t.end() ||
        !off->is_array() || off->size() != 2 || !(*off)[0].is_number_unsigned() ||
        !(*off)[1].is_number_unsigned()) {
      return CorruptionError(what + " lacks a string dtype, a shape array or two data_offsets");
    }
    Tensor x;
    x.name = it.key();
    ASSIGN_OR_RETURN(x.dtype, SafetensorsDType(dt->get<std::string>(), what));
    if (sh->size() > 8) return CorruptionError(what + " has too many dimensions");
    uint64_t values = 1;
    for (const Json& d : *sh) {
      if (!d.is_number_unsigned()) return CorruptionError(what + ": shape is not integers");
      if (__builtin_mul_overflow(values, d.get<uint64_t>(), &values) ||
          values > (uint64_t{1} << 60)) {
        return CorruptionError(what + ": shape overflows 64 bits");
      }
      x.shape.push_back(d.get<uint64_t>());
    }
    const uint64_t begin = (*off)[0].get<uint64_t>(), end = (*off)[1].get<uint64_t>();
    const uint64_t want = values * (x.dtype == DType::kF32 ? 4 : 2);
    if (end < begin || end > data_size) {
      return CorruptionError(what + ": data_offsets [" + std::to_string(begin) + ", " +
                             std::to_string(end) + "] lie outside the data (" +
                             std::to_string(data_size) + " bytes)");
    }
    if (end - begin != want) {
      return CorruptionError(what + ": data_offsets span " + std::to_string(end - begin) +
                             " bytes but shape " + ShapeString(x.shape) + " needs " +
                             std::to_string(want));
    }
    x.offset_bytes = data_start + begin;
    x.size_bytes = want;
    f.tensors.push_back(std::move(x));
  }
  return f;
}

uint64_t HfRowForCanonical(uint64_t row, uint32_t head_dim) {
  const uint64_t h = row / head_dim, w = row % head_dim;
  return h * head_dim + (w % 2) * (head_dim / 2) + w / 2;
}

Result<ModelConfig> ParseHfConfig(std::string_view text) {
  ASSIGN_OR_RETURN(Json j, ParseJson(text, "config.json"));
  if (!j.is_object()) return CorruptionError("config.json is not an object");
  std::string model_type = StrField(j, "model_type");
  std::string arch;
  if (auto a = j.find("architectures");
      a != j.end() && a->is_array() && !a->empty() && (*a)[0].is_string()) {
    arch = (*a)[0].get<std::string>();
  }
  const bool llama =
      model_type == "llama" || model_type == "mistral" ||
      (model_type.empty() && (arch == "LlamaForCausalLM" || arch == "MistralForCausalLM"));
  if (!llama) {
    return NotSupportedError("config.json: model_type '" + model_type + "' (architecture '" + arch +
                             "') is not supported (only LLaMA-family models)");
  }
  ModelConfig c;
  auto u32 = [&](const char* key, uint32_t& out, std::optional<uint32_t> dflt) -> Status {
    auto it = j.find(key);
    if (it == j.end() || it->is_null()) {
      if (dflt) {
        out = *dflt;
        return Status::Ok();
      }
      return CorruptionError(std::string("config.json: ") + key + " is missing");
    }
    if (!it->is_number_unsigned() || it->get<uint64_t>() > UINT32_MAX) {
      return CorruptionError(std::string("config.json: ") + key + " is not a u32");
    }
    out = static_cast<uint32_t>(it->get<uint64_t>());
    return Status::Ok();
  };
  auto f32 = [&](const char* key, float& out, float dflt) -> Status {
    auto it = j.find(key);
    if (it == j.end() || it->is_null()) {
      out = dflt;
      return Status::Ok();
    }
    if (!it->is_number()) return CorruptionError(std::string("config.json: ") + key);
    out = it->get<float>();
    return Status::Ok();
  };
  RETURN_IF_ERROR(u32("hidden_size", c.dim, std::nullopt));
  RETURN_IF_ERROR(u32("intermediate_size", c.hidden_dim, std::nullopt));
  RETURN_IF_ERROR(u32("num_hidden_layers", c.n_layers, std::nullopt));
  RETURN_IF_ERROR(u32("num_attention_heads", c.n_heads, std::nullopt));
  if (c.n_heads == 0) return CorruptionError("config.json: num_attention_heads is 0");
  RETURN_IF_ERROR(u32("num_key_value_heads", c.n_kv_heads, c.n_heads));
  RETURN_IF_ERROR(u32("head_dim", c.head_dim, c.dim / c.n_heads));
  RETURN_IF_ERROR(u32("vocab_size", c.vocab_size, std::nullopt));
  RETURN_IF_ERROR(u32("max_position_embeddings", c.max_seq_len, 2048));
  RETURN_IF_ERROR(f32("rms_norm_eps", c.norm_eps, 1e-6f));
  RETURN_IF_ERROR(f32("rope_theta", c.rope_theta, 10000.0f));
  const std::string act = StrField(j, "hidden_act", "silu");
  if (act == "silu") {
    c.activation = Activation::kSilu;
  } else if (act == "relu") {
    c.activation = Activation::kRelu;
  } else {
    return NotSupportedError("config.json: hidden_act '" + act + "' is not supported");
  }
  auto flag = [&](const char* key) {
    auto it = j.find(key);
    return it != j.end() && it->is_boolean() && it->get<bool>();
  };
  if (flag("attention_bias") || flag("mlp_bias")) {
    return NotSupportedError("config.json: attention/MLP biases are not supported");
  }
  c.tied_embeddings = flag("tie_word_embeddings");
  if (auto rs = j.find("rope_scaling"); rs != j.end() && !rs->is_null()) {
    if (!rs->is_object()) return CorruptionError("config.json: rope_scaling is not an object");
    std::string type = StrField(*rs, "rope_type", StrField(*rs, "type"));
    const float factor =
        rs->contains("factor") && (*rs)["factor"].is_number() ? (*rs)["factor"].get<float>() : 1.0f;
    if (type == "linear") {
      c.rope_scaling.type = RopeScalingType::kLinear;
      c.rope_scaling.factor = factor;
    } else if (type == "llama3") {
      c.rope_scaling.type = RopeScalingType::kLlama3;
      c.rope_scaling.factor = factor;
      if (auto v = rs->find("low_freq_factor"); v != rs->end() && v->is_number()) {
        c.rope_scaling.low_freq_factor = v->get<float>();
      }
      if (auto v = rs->find("high_freq_factor"); v != rs->end() && v->is_number()) {
        c.rope_scaling.high_freq_factor = v->get<float>();
      }
      if (auto v = rs->find("original_max_position_embeddings");
          v != rs->end() && v->is_number_unsigned() && v->get<uint64_t>() <= UINT32_MAX) {
        c.rope_scaling.original_max_position = static_cast<uint32_t>(v->get<uint64_t>());
      }
    } else if (type != "default") {
      return NotSupportedError("config.json: rope_scaling type '" + type + "' is not supported");
    }
  }
  RETURN_IF_ERROR(ValidateLoadedConfig(c, "config.json"));
  return c;
}

namespace {

// "model.layers.3.self_attn.q_proj.weight" -> "blk.3.attn_q.weight"; "" for names to skip;
// nullopt for names flashlm does not know.
std::optional<std::string> CanonicalName(const std::string& hf) {
  static const std::map<std::string, std::string, std::less<>> kTop = {
      {"model.embed_tokens.weight", "token_embd.weight"},
      {"model.norm.weight", "output_norm.weight"},
      {"lm_head.weight", "output.weight"}};
  static const std::map<std::string, std::string, std::less<>> kLayer = {
      {"input_layernorm.weight", "attn_norm.weight"},
      {"self_attn.q_proj.weight", "attn_q.weight"},
      {"self_attn.k_proj.weight", "attn_k.weight"},
      {"self_attn.v_proj.weight", "attn_v.weight"},
      {"self_attn.o_proj.weight", "attn_output.weight"},
      {"post_attention_layernorm.weight", "ffn_norm.weight"},
      {"mlp.gate_proj.weight", "ffn_gate.weight"},
      {"mlp.up_proj.weight", "ffn_up.weight"},
      {"mlp.down_proj.weight", "ffn_down.weight"},
      {"self_attn.rotary_emb.inv_freq", ""}};
  if (auto it = kTop.find(hf); it != kTop.end()) return it->second;
  constexpr std::string_view kPrefix = "model.layers.";
  if (!hf.starts_with(kPrefix)) return std::nullopt;
  size_t p = kPrefix.size(), q = p;
  while (q < hf.size() && q - p < 6 && hf[q] >= '0' && hf[q] <= '9') ++q;
  if (q == p || q >= hf.size() || hf[q] != '.') return std::nullopt;
  auto it = kLayer.find(std::string_view(hf).substr(q + 1));
  if (it == kLayer.end()) return std::nullopt;
  if (it->second.empty()) return std::string();
  return "blk." + std::to_string(std::stoul(hf.substr(p, q - p))) + "." + it->second;
}

class HfCheckpoint final : public Checkpoint {
 public:
  struct Entry {
    size_t source;
    uint64_t offset_bytes;
    bool unpermute;  // q/k rows in rotate-half order
  };

  std::string_view format() const override { return "safetensors"; }
  const ModelConfig& config() const override { return config_; }
  const Vocab& vocab() const override { return vocab_; }
  const std::vector<TensorInfo>& tensors() const override { return infos_; }

  Status ReadTensor(const TensorInfo& info, ByteSpan out) override {
    auto it = index_.find(info.name);
    if (it == index_.end()) return NotFoundError("safetensors: no tensor " + info.name);
    const TensorInfo& mine = infos_[it->second];
    const Entry& e = entries_[it->second];
    if (out.size() != mine.size_bytes()) {
      return InvalidArgumentError("safetensors: buffer for " + info.name + " has the wrong size");
    }
    if (!e.unpermute) return sources_[e.source]->ReadAt(e.offset_bytes, out);
    // Canonical row r is HF row HfRowForCanonical(r): read the HF rows whole, then reorder.
    std::vector<std::byte> hf(out.size());  // [rows][row_bytes], HF row order
    RETURN_IF_ERROR(sources_[e.source]->ReadAt(e.offset_bytes, hf));
    const uint64_t row_bytes = RowBytes(mine.dtype, mine.cols());
    for (uint64_t r = 0; r < mine.rows(); ++r) {
      const uint64_t src_row = HfRowForCanonical(r, config_.head_dim);
      std::memcpy(out.data() + r * row_bytes, hf.data() + src_row * row_bytes, row_bytes);
    }
    return Status::Ok();
  }

  ModelConfig config_;
  Vocab vocab_;
  std::vector<std::unique_ptr<ByteSource>> sources_;
  std::vector<TensorInfo> infos_;
  std::vector<Entry> entries_;
  std::unordered_map<std::string, size_t> index_;
};

// Adds the tensors of one parsed file to `ckpt`.
Status AddFile(HfCheckpoint& ckpt, const SafetensorsFile& file, size_t source,
               const std::string& name, bool& saw_lm_head) {
  for (const SafetensorsFile::Tensor& t : file.tensors) {
    std::optional<std::string> canon = CanonicalName(t.name);
    if (!canon) {
      return NotSupportedError(name + ": unexpected tensor " + t.name +
                               " (not part of a LLaMA model)");
    }
    if (canon->empty()) continue;
    if (ckpt.index_.count(*canon)) return CorruptionError(name + ": duplicate tensor " + t.name);
    if (t.shape.empty() || t.shape.size() > 2) {
      return CorruptionError(name + ": tensor " + t.name + " has shape " + ShapeString(t.shape));
    }
    saw_lm_head |= *canon == "output.weight";
    const bool qk = canon->ends_with(".attn_q.weight") || canon->ends_with(".attn_k.weight");
    ckpt.index_[*canon] = ckpt.infos_.size();
    ckpt.infos_.push_back(TensorInfo{*canon, t.dtype, t.shape});
    ckpt.entries_.push_back(HfCheckpoint::Entry{source, t.offset_bytes, qk});
  }
  return Status::Ok();
}

Status FinishHf(HfCheckpoint& ckpt, bool saw_lm_head, const std::string& name) {
  if (saw_lm_head) {
    ckpt.config_.tied_embeddings = false;
  } else if (!ckpt.config_.tied_embeddings) {
    return CorruptionError(name + ": missing tensor lm_head.weight (tie_word_embeddings is false)");
  }
  // A q/k tensor whose rows are not whole heads cannot be un-permuted; CheckLlamaTensors below
  // would catch the shape, but check first so the permutation never indexes out of range.
  RETURN_IF_ERROR(CheckLlamaTensors(ckpt.config_, ckpt.infos_, name));
  return Status::Ok();
}

}  // namespace

Result<std::unique_ptr<Checkpoint>> OpenSafetensorsSource(const ModelConfig& config,
                                                          std::unique_ptr<ByteSource> src) {
  const std::string name = src->name();
  ASSIGN_OR_RETURN(SafetensorsFile file, SafetensorsFile::Parse(*src));
  auto ckpt = std::make_unique<HfCheckpoint>();
  ckpt->config_ = config;
  ckpt->sources_.push_back(std::move(src));
  bool saw_lm_head = false;
  RETURN_IF_ERROR(AddFile(*ckpt, file, 0, name, saw_lm_head));
  RETURN_IF_ERROR(FinishHf(*ckpt, saw_lm_head, name));
  return std::unique_ptr<Checkpoint>(std::move(ckpt));
}

Result<std::unique_ptr<Checkpoint>> OpenHuggingFace(std::string_view path,
                                                    const OpenOptions& options) {
  namespace fs = std::filesystem;
  fs::path dir(path);
  std::vector<fs::path> files;
  if (!fs::is_directory(dir)) {  // a single .safetensors file
    files.push_back(dir);
    dir = dir.parent_path();
  }
  const fs::path config_path = dir / "config.json";
  if (!fs::exists(config_path)) {
    return NotFoundError(dir.string() + ": no config.json beside the safetensors");
  }
  ASSIGN_OR_RETURN(std::string config_text, ReadTextFile(config_path, 1 << 20));
  Result<ModelConfig> config = ParseHfConfig(config_text);
  if (!config.ok()) return config.status().WithContext(dir.string());
  if (files.empty()) {
    const fs::path index = dir / "model.safetensors.index.json";
    if (fs::exists(index)) {
      ASSIGN_OR_RETURN(std::string text, ReadTextFile(index, 64 << 20));
      ASSIGN_OR_RETURN(Json j, ParseJson(text, index.string()));
      auto wm = j.is_object() ? j.find("weight_map") : j.end();
      if (wm == j.end() || !wm->is_object()) {
        return CorruptionError(index.string() + ": no weight_map object");
      }
      std::map<std::string, int> seen;
      for (auto it = wm->begin(); it != wm->end(); ++it) {
        if (!it->is_string()) return CorruptionError(index.string() + ": bad weight_map entry");
        const std::string shard = it->get<std::string>();
        if (shard.find('/') != std::string::npos || shard.starts_with(".")) {
          return CorruptionError(index.string() + ": shard name " + shard + " leaves the folder");
        }
        if (seen.emplace(shard, 0).second) files.push_back(dir / shard);
      }
    } else if (fs::exists(dir / "model.safetensors")) {
      files.push_back(dir / "model.safetensors");
    } else {
      return NotFoundError(dir.string() + ": no model.safetensors or model.safetensors.index.json");
    }
  }
  auto ckpt = std::make_unique<HfCheckpoint>();
  ckpt->config_ = *config;
  bool saw_lm_head = false;
  for (const fs::path& f : files) {
    ASSIGN_OR_RETURN(std::unique_ptr<ByteSource> src, OpenFileSource(f.string()));
    ASSIGN_OR_RETURN(SafetensorsFile parsed, SafetensorsFile::Parse(*src));
    RETURN_IF_ERROR(AddFile(*ckpt, parsed, ckpt->sources_.size(), f.string(), saw_lm_head));
    ckpt->sources_.push_back(std::move(src));
  }
  RETURN_IF_ERROR(FinishHf(*ckpt, saw_lm_head, dir.string()));

  fs::path tok;
  if (!options.tokenizer_path.empty()) {
    tok = options.tokenizer_path;
  } else if (fs::exists(dir / "tokenizer.model")) {
    tok = dir / "tokenizer.model";
  } else if (fs::exists(dir / "tokenizer.json")) {
    tok = dir / "tokenizer.json";
  }
  if (!tok.empty()) {
    ASSIGN_OR_RETURN(std::unique_ptr<ByteSource> src, OpenFileSource(tok.string()));
    Result<Vocab> v =
        tok.extension() == ".json" ? ParseTokenizerJson(*src) : ParseSentencePieceModel(*src);
    if (!v.ok() && tok.extension() != ".json") {
      // A tokenizer given by the caller may also be a llama2.c tokenizer.bin (what --tokenizer
      // documents); the SentencePiece error is the one reported when it is neither.
      Result<Vocab> l2c = ReadLlama2cTokenizer(tok.string(), ckpt->config_.vocab_size);
      if (l2c.ok()) v = std::move(l2c);
    }
    if (!v.ok()) return v.status();
    ckpt->vocab_ = std::move(*v);
    // config.json's special ids override the tokenizer's defaults.
    if (auto j = ParseUntrustedJson(config_text, "config.json"); j.ok() && j->is_object()) {
      for (auto [key, field] : {std::pair{"bos_token_id", &ckpt->vocab_.bos_id},
                                std::pair{"eos_token_id", &ckpt->vocab_.eos_id}}) {
        auto it = j->find(key);
        if (it != j->end() && it->is_number_unsigned() &&
            it->get<uint64_t>() < ckpt->vocab_.tokens.size()) {
          *field = static_cast<int32_t>(it->get<uint64_t>());
        }
      }
    }
    if (ckpt->vocab_.tokens.size() > ckpt->config_.vocab_size) {
      return CorruptionError(
          tok.string() + ": tokenizer has " + std::to_string(ckpt->vocab_.tokens.size()) +
          " tokens, more than the model's vocab_size " + std::to_string(ckpt->config_.vocab_size));
    }
  }
  return std::unique_ptr<Checkpoint>(std::move(ckpt));
}

}  // namespace flashlm::layout
