#include "layout/store_format.h"

#include <cstdio>
#include <limits>
#include <type_traits>

namespace flashlm::layout {

std::string DataFileName(uint32_t file_index) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "data-%05u.bin", file_index);
  return buf;
}

std::string LayerKey(std::string_view prefix, uint32_t layer) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "%05u", layer);
  return std::string(prefix) + buf;
}

std::string_view CodecName(Codec c) {
  switch (c) {
    case Codec::kNone:
      return "none";
    case Codec::kZstd:
      return "zstd";
  }
  return "unknown";
}

std::string_view BundleKindName(BundleKind k) {
  switch (k) {
    case BundleKind::kGateUpDown:
      return "gate-up-down";
    case BundleKind::kGateSeparate:
      return "gate+up-down";
  }
  return "unknown";
}

}  // namespace flashlm::layout

// ---- catalog value codecs ----
#include <cstring>
#include <nlohmann/json.hpp>
#include <utility>

#include "layout/json_util.h"

namespace flashlm::layout {
namespace {

using nlohmann::json;

// Typed, non-throwing field getters: a mistyped or missing field is Corruption naming it.
template <typename T>
Status GetNumber(const json& j, const char* key, T* out, bool required = true) {
  auto it = j.find(key);
  if (it == j.end()) {
    return required ? CorruptionError(std::string("catalog JSON lacks field '") + key + "'")
                    : Status::Ok();
  }
  if (!it->is_number())
    return CorruptionError(std::string("catalog JSON field '") + key + "' is not a number");
  if constexpr (std::is_integral_v<T>) {
    if (!it->is_number_integer()) {
      return CorruptionError(std::string("catalog JSON field '") + key + "' is not an integer");
    }
    if (it->is_number_unsigned() ? !std::in_range<T>(it->get<uint64_t>())
                                 : !std::in_range<T>(it->get<int64_t>())) {
      return CorruptionError(std::string("catalog JSON field '") + key + "' out of range");
    }
    const int64_t v =
        it->is_number_unsigned() ? static_cast<int64_t>(it->get<uint64_t>()) : it->get<int64_t>();
    *out = static_cast<T>(v);
  } else {
    *out = static_cast<T>(it->get<double>());
  }
  return Status::Ok();
}

Status GetBool(const json& j, const char* key, bool* out) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_boolean()) {
    return CorruptionError(std::string("catalog JSON field '") + key + "' missing or not a bool");
  }
  *out = it->get<bool>();
  return Status::Ok();
}

Status GetString(const json& j, const char* key, std::string* out) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_string()) {
    return CorruptionError(std::string("catalog JSON field '") + key + "' missing or not a string");
  }
  *out = it->get<std::string>();
  return Status::Ok();
}

Result<json> ParseObject(std::string_view text, const char* what) {
  Result<json> parsed = ParseUntrustedJson(text, std::string("catalog ") + what);
  if (!parsed.ok()) return parsed.status();
  json j = std::move(*parsed);
  if (!j.is_object()) {
    return CorruptionError(std::string("catalog ") + what + " is not a JSON object");
  }
  return j;
}

}  // namespace

std::string EncodeStringList(const std::vector<std::string>& list) {
  std::string out;
  auto put32 = [&](uint32_t v) { out.append(reinterpret_cast<const char*>(&v), 4); };
  put32(static_cast<uint32_t>(list.size()));
  for (const std::string& s : list) {
    put32(static_cast<uint32_t>(s.size()));
    out += s;
  }
  return out;
}

Result<std::vector<std::string>> DecodeStringList(ConstByteSpan bytes) {
  uint64_t pos = 0;
  auto get32 = [&](uint32_t* v) {
    if (bytes.size() - pos < 4) return false;
    std::memcpy(v, bytes.data() + pos, 4);
    pos += 4;
    return true;
  };
  uint32_t n = 0;
  if (!get32(&n)) return CorruptionError("string list: truncated count");
  // Each entry takes at least 4 bytes: bound the count before reserving.
  if (n > (bytes.size() - pos) / 4) return CorruptionError("string list: count exceeds data");
  std::vector<std::string> out;
  out.reserve(n);
  for (uint32_t i = 0; i < n; ++i) {
    uint32_t len = 0;
    if (!get32(&len)) return CorruptionError("string list: truncated length");
    if (len > bytes.size() - pos) return CorruptionError("string list: entry runs past the end");
    out.emplace_back(reinterpret_cast<const char*>(bytes.data() + pos), len);
    pos += len;
  }
  if (pos != bytes.size()) return CorruptionError("string list: trailing bytes");
  return out;
}

std::string EncodeConfigJson(const ModelConfig& c) {
  json j;
  j["architecture"] = c.architecture;
  j["dim"] = c.dim;
  j["hidden_dim"] = c.hidden_dim;
  j["n_layers"] = c.n_layers;
  j["n_heads"] = c.n_heads;
  j["n_kv_heads"] = c.n_kv_heads;
  j["head_dim"] = c.head_dim;
  j["vocab_size"] = c.vocab_size;
  j["max_seq_len"] = c.max_seq_len;
  j["rope_theta"] = c.rope_theta;
  j["norm_eps"] = c.norm_eps;
  j["rope_scaling"] = {{"type", static_cast<int>(c.rope_scaling.type)},
                       {"factor", c.rope_scaling.factor},
                       {"low_freq_factor", c.rope_scaling.low_freq_factor},
                       {"high_freq_factor", c.rope_scaling.high_freq_factor},
                       {"original_max_position", c.rope_scaling.original_max_position}};
  j["activation"] = static_cast<int>(c.activation);
  j["tied_embeddings"] = c.tied_embeddings;
  return j.dump(2);
}

Result<ModelConfig> DecodeConfigJson(std::string_view text) {
  ASSIGN_OR_RETURN(json j, ParseObject(text, "config"));
  ModelConfig c;
  RETURN_IF_ERROR(GetString(j, "architecture", &c.architecture));
  RETURN_IF_ERROR(GetNumber(j, "dim", &c.dim));
  RETURN_IF_ERROR(GetNumber(j, "hidden_dim", &c.hidden_dim));
  RETURN_IF_ERROR(GetNumber(j, "n_layers", &c.n_layers));
  RETURN_IF_ERROR(GetNumber(j, "n_heads", &c.n_heads));
  RETURN_IF_ERROR(GetNumber(j, "n_kv_heads", &c.n_kv_heads));
  RETURN_IF_ERROR(GetNumber(j, "head_dim", &c.head_dim));
  RETURN_IF_ERROR(GetNumber(j, "vocab_size", &c.vocab_size));
  RETURN_IF_ERROR(GetNumber(j, "max_seq_len", &c.max_seq_len));
  RETURN_IF_ERROR(GetNumber(j, "rope_theta", &c.rope_theta));
  RETURN_IF_ERROR(GetNumber(j, "norm_eps", &c.norm_eps));
  auto rs = j.find("rope_scaling");
  if (rs == j.end() || !rs->is_object())
    return CorruptionError("catalog config lacks rope_scaling");
  int type = 0, act = 0;
  RETURN_IF_ERROR(GetNumber(*rs, "type", &type));
  if (type < 0 || type > 2) return CorruptionError("catalog config: unknown rope_scaling type");
  c.rope_scaling.type = static_cast<RopeScalingType>(type);
  RETURN_IF_ERROR(GetNumber(*rs, "factor", &c.rope_scaling.factor));
  RETURN_IF_ERROR(GetNumber(*rs, "low_freq_factor", &c.rope_scaling.low_freq_factor));
  RETURN_IF_ERROR(GetNumber(*rs, "high_freq_factor", &c.rope_scaling.high_freq_factor));
  RETURN_IF_ERROR(GetNumber(*rs, "original_max_position", &c.rope_scaling.original_max_position));
  RETURN_IF_ERROR(GetNumber(j, "activation", &act));
  if (act < 0 || act > 1) return CorruptionError("catalog config: unknown activation");
  c.activation = static_cast<Activation>(act);
  RETURN_IF_ERROR(GetBool(j, "tied_embeddings", &c.tied_embeddings));
  return c;
}

std::string EncodeVocabMetaJson(const Vocab& v) {
  json j;
  j["kind"] = static_cast<int>(v.kind);
  j["n_tokens"] = v.tokens.size();
  j["bos_id"] = v.bos_id;
  j["eos_id"] = v.eos_id;
  j["unk_id"] = v.unk_id;
  j["pad_id"] = v.pad_id;
  j["add_bos"] = v.add_bos;
  j["add_space_prefix"] = v.add_space_prefix;
  return j.dump(2);
}

Status DecodeVocabMetaJson(std::string_view text, Vocab* v) {
  ASSIGN_OR_RETURN(json j, ParseObject(text, "vocab/meta"));
  int kind = 0;
  RETURN_IF_ERROR(GetNumber(j, "kind", &kind));
  if (kind < 0 || kind > 2) return CorruptionError("catalog vocab/meta: unknown kind");
  v->kind = static_cast<Vocab::Kind>(kind);
  RETURN_IF_ERROR(GetNumber(j, "bos_id", &v->bos_id));
  RETURN_IF_ERROR(GetNumber(j, "eos_id", &v->eos_id));
  RETURN_IF_ERROR(GetNumber(j, "unk_id", &v->unk_id));
  RETURN_IF_ERROR(GetNumber(j, "pad_id", &v->pad_id));
  RETURN_IF_ERROR(GetBool(j, "add_bos", &v->add_bos));
  RETURN_IF_ERROR(GetBool(j, "add_space_prefix", &v->add_space_prefix));
  return Status::Ok();
}

}  // namespace flashlm::layout
