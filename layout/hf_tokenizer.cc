#include "layout/hf_tokenizer.h"

#include <cstring>
#include <nlohmann/json.hpp>

#include "layout/json_util.h"
#include <string_view>

namespace flashlm::layout {
namespace {

constexpr uint64_t kMaxTokenizerBytes = 256 << 20;

Result<std::string> ReadAll(ByteSource& src) {
  if (src.size_bytes() > kMaxTokenizerBytes) {
    return CorruptionError(src.name() + ": tokenizer file is implausibly large");
  }
  std::string s(src.size_bytes(), '\0');
  RETURN_IF_ERROR(src.ReadAt(0, ByteSpan(reinterpret_cast<std::byte*>(s.data()), s.size())));
  return s;
}

// Protobuf wire format: a message is a run of (varint tag = field << 3 | wire type, value).
// Wire types: 0 varint, 1 fixed 64, 2 length-delimited, 5 fixed 32 (3/4, groups, are refused).
class ProtoReader {
 public:
  ProtoReader(std::string_view data, const std::string& name) : d_(data), name_(name) {}
  bool done() const { return pos_ >= d_.size(); }

  Status Varint(uint64_t& v) {
    v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (pos_ >= d_.size()) return Bad("truncated varint");
      const uint8_t b = static_cast<uint8_t>(d_[pos_++]);
      v |= static_cast<uint64_t>(b & 0x7F) << shift;
      if ((b & 0x80) == 0) return Status::Ok();
    }
    return Bad("varint longer than 10 bytes");
  }

  // Reads the next field header. `wire` is 0, 1, 2 or 5.
  Status Tag(uint32_t& field, uint32_t& wire) {
    uint64_t t;
    RETURN_IF_ERROR(Varint(t));
    field = static_cast<uint32_t>(t >> 3);
    wire = static_cast<uint32_t>(t & 7);
    if (wire != 0 && wire != 1 && wire != 2 && wire != 5) {
      return Bad("unsupported wire type " + std::to_string(wire));
    }
    return Status::Ok();
  }

  Status Bytes(std::string_view& out) {
    uint64_t len;
    RETURN_IF_ERROR(Varint(len));
    if (len > d_.size() - pos_) return Bad("length " + std::to_string(len) + " past the end");
    out = d_.substr(pos_, len);
    pos_ += len;
    return Status::Ok();
  }

  Status Fixed32(uint32_t& v) {
    if (d_.size() - pos_ < 4) return Bad("truncated fixed32");
    std::memcpy(&v, d_.data() + pos_, 4);
    pos_ += 4;
    return Status::Ok();
  }

  Status Skip(uint32_t wire) {
    uint64_t v;
    uint32_t f;
    std::string_view s;
    switch (wire) {
      case 0:
        return Varint(v);
      case 1:
        if (d_.size() - pos_ < 8) return Bad("truncated fixed64");
        pos_ += 8;
        return Status::Ok();
      case 2:
        return Bytes(s);
      case 5:
        return Fixed32(f);
    }
    return Bad("bad wire type");
  }

  Status Bad(const std::string& what) const {
    return CorruptionError(name_ + ": SentencePiece model: " + what + " at byte " +
                           std::to_string(pos_));
  }

 private:
  std::string_view d_;
  const std::string& name_;
  size_t pos_ = 0;
};

Status ParsePiece(std::string_view msg, const std::string& name, Vocab& v) {
  ProtoReader r(msg, name);
  std::string piece;
  float score = 0;
  int32_t type = Vocab::kNormal;
  while (!r.done()) {
    uint32_t field, wire;
    RETURN_IF_ERROR(r.Tag(field, wire));
    if (field == 1 && wire == 2) {
      std::string_view s;
      RETURN_IF_ERROR(r.Bytes(s));
      piece.assign(s);
    } else if (field == 2 && wire == 5) {
      uint32_t bits = 0;
      RETURN_IF_ERROR(r.Fixed32(bits));
      std::memcpy(&score, &bits, 4);
    } else if (field == 3 && wire == 0) {
      uint64_t t;
      RETURN_IF_ERROR(r.Varint(t));
      if (t < 1 || t > 6) return r.Bad("piece type " + std::to_string(t));
      type = static_cast<int32_t>(t);
    } else {
      RETURN_IF_ERROR(r.Skip(wire));
    }
  }
  v.tokens.push_back(std::move(piece));
  v.scores.push_back(score);
  v.types.push_back(type);
  return Status::Ok();
}

Status ParseTrainerSpec(std::string_view msg, const std::string& name, Vocab& v) {
  ProtoReader r(msg, name);
  while (!r.done()) {
    uint32_t field, wire;
    RETURN_IF_ERROR(r.Tag(field, wire));
    if (wire == 0 && field >= 40 && field <= 43) {
      uint64_t x;
      RETURN_IF_ERROR(r.Varint(x));
      const int32_t id = static_cast<int32_t>(static_cast<uint32_t>(x));  // int32, two's complement
      if (field == 40) v.unk_id = id;
      if (field == 41) v.bos_id = id;
      if (field == 42) v.eos_id = id;
      if (field == 43) v.pad_id = id;
    } else {
      RETURN_IF_ERROR(r.Skip(wire));
    }
  }
  return Status::Ok();
}

Status ParseNormalizerSpec(std::string_view msg, const std::string& name, Vocab& v) {
  ProtoReader r(msg, name);
  while (!r.done()) {
    uint32_t field, wire;
    RETURN_IF_ERROR(r.Tag(field, wire));
    if (field == 3 && wire == 0) {
      uint64_t x;
      RETURN_IF_ERROR(r.Varint(x));
      v.add_space_prefix = x != 0;
    } else {
      RETURN_IF_ERROR(r.Skip(wire));
    }
  }
  return Status::Ok();
}

bool IsByteToken(std::string_view s) {
  auto hex = [](char c) { return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'F'); };
  return s.size() == 6 && s.starts_with("<0x") && s[5] == '>' && hex(s[3]) && hex(s[4]);
}

}  // namespace

Result<Vocab> ParseSentencePieceModel(ByteSource& src) {
  ASSIGN_OR_RETURN(std::string data, ReadAll(src));
  Vocab v;
  v.kind = Vocab::Kind::kSentencePiece;
  v.pad_id = -1;
  ProtoReader r(data, src.name());
  while (!r.done()) {
    uint32_t field, wire;
    RETURN_IF_ERROR(r.Tag(field, wire));
    std::string_view msg;
    if (wire == 2 && (field == 1 || field == 2 || field == 3)) {
      RETURN_IF_ERROR(r.Bytes(msg));
      if (field == 1) RETURN_IF_ERROR(ParsePiece(msg, src.name(), v));
      if (field == 2) RETURN_IF_ERROR(ParseTrainerSpec(msg, src.name(), v));
      if (field == 3) RETURN_IF_ERROR(ParseNormalizerSpec(msg, src.name(), v));
    } else {
      RETURN_IF_ERROR(r.Skip(wire));
    }
  }
  if (v.tokens.empty()) return CorruptionError(src.name() + ": SentencePiece model has no pieces");
  const int32_t n = static_cast<int32_t>(v.tokens.size());
  for (int32_t* id : {&v.bos_id, &v.eos_id, &v.unk_id, &v.pad_id}) {
    if (*id >= n || *id < -1) *id = -1;
  }
  return v;
}

Result<Vocab> ParseTokenizerJson(ByteSource& src) {
  using Json = nlohmann::json;
  const std::string& name = src.name();
  ASSIGN_OR_RETURN(std::string text, ReadAll(src));
  ASSIGN_OR_RETURN(Json j, ParseUntrustedJson(text, name));
  if (!j.is_object()) return CorruptionError(name + ": malformed JSON");
  auto model = j.find("model");
  if (model == j.end() || !model->is_object()) return CorruptionError(name + ": no model object");
  auto type = model->find("type");
  const std::string model_type =
      type != model->end() && type->is_string() ? type->get<std::string>() : "";
  if (model_type != "BPE") {
    return NotSupportedError(name + ": tokenizer model type '" + model_type +
                             "' is not supported (only BPE)");
  }
  auto vocab = model->find("vocab");
  if (vocab == model->end() || !vocab->is_object()) {
    return CorruptionError(name + ": model.vocab is not an object");
  }
  // Ids may have holes (filled with unused tokens) but must be unique and bounded.
  std::vector<std::pair<uint64_t, std::string>> entries;
  uint64_t n = 0;
  auto add = [&](uint64_t id, std::string s) -> Status {
    if (id >= (1u << 24)) return CorruptionError(name + ": token id " + std::to_string(id));
    entries.emplace_back(id, std::move(s));
    n = std::max(n, id + 1);
    return Status::Ok();
  };
  for (auto it = vocab->begin(); it != vocab->end(); ++it) {
    if (!it->is_number_unsigned()) return CorruptionError(name + ": bad id for " + it.key());
    RETURN_IF_ERROR(add(it->get<uint64_t>(), it.key()));
  }
  std::vector<std::pair<uint64_t, bool>> added;  // id, special
  if (auto at = j.find("added_tokens"); at != j.end() && at->is_array()) {
    for (const Json& t : *at) {
      if (!t.is_object() || !t.contains("id") || !t["id"].is_number_unsigned() ||
          !t.contains("content") || !t["content"].is_string()) {
        return CorruptionError(name + ": malformed added_tokens entry");
      }
      const uint64_t id = t["id"].get<uint64_t>();
      const bool special =
          t.contains("special") && t["special"].is_boolean() && t["special"].get<bool>();
      RETURN_IF_ERROR(add(id, t["content"].get<std::string>()));
      added.emplace_back(id, special);
    }
  }
  if (n == 0) return CorruptionError(name + ": empty vocabulary");
  if (n > 4 * entries.size() + 1024) {  // holes are rare; a sparse id would allocate for nothing
    return CorruptionError(name + ": token ids up to " + std::to_string(n - 1) + " for only " +
                           std::to_string(entries.size()) + " tokens");
  }
  Vocab v;
  v.tokens.assign(n, std::string());
  v.scores.assign(n, 0.0f);
  v.types.assign(n, Vocab::kUnused);
  std::vector<bool> set(n, false);
  for (auto& [id, s] : entries) {
    if (set[id] && v.tokens[id] != s) {
      return CorruptionError(name + ": token id " + std::to_string(id) + " is used twice");
    }
    set[id] = true;
    v.types[id] = IsByteToken(s) ? Vocab::kByte : Vocab::kNormal;
    v.scores[id] = -static_cast<float>(id);
    v.tokens[id] = std::move(s);
  }
  for (uint64_t id = 0; id < n; ++id) {
    if (!set[id]) v.tokens[id] = "<unused" + std::to_string(id) + ">";
  }
  for (auto [id, special] : added) {
    v.types[id] = special ? Vocab::kControl : Vocab::kUserDefined;
    v.scores[id] = 0.0f;
  }
  // Byte-level BPE has a ByteLevel pre-tokenizer somewhere in its pipeline.
  const bool byte_level = j.contains("pre_tokenizer") &&
                          j["pre_tokenizer"].dump().find("\"ByteLevel\"") != std::string::npos;
  if (byte_level) {
    v.kind = Vocab::Kind::kGpt2Bpe;
    v.add_space_prefix = false;
    for (float& s : v.scores) s = 0.0f;
  } else {
    v.kind = Vocab::Kind::kSentencePiece;
  }
  if (auto merges = model->find("merges"); merges != model->end() && merges->is_array()) {
    for (const Json& m : *merges) {
      if (m.is_string()) {
        v.merges.push_back(m.get<std::string>());
      } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
        v.merges.push_back(m[0].get<std::string>() + " " + m[1].get<std::string>());
      } else {
        return CorruptionError(name + ": malformed merges entry");
      }
    }
  }
  auto find_id = [&](std::string_view s) -> int32_t {
    for (uint64_t id = 0; id < n; ++id) {
      if (v.tokens[id] == s) return static_cast<int32_t>(id);
    }
    return -1;
  };
  if (auto unk = model->find("unk_token"); unk != model->end() && unk->is_string()) {
    v.unk_id = find_id(unk->get<std::string>());
    if (v.unk_id >= 0) v.types[v.unk_id] = Vocab::kUnknown;
  } else {
    v.unk_id = -1;
  }
  v.bos_id = find_id(v.kind == Vocab::Kind::kSentencePiece ? "<s>" : "<|begin_of_text|>");
  v.eos_id = find_id(v.kind == Vocab::Kind::kSentencePiece ? "</s>" : "<|end_of_text|>");
  v.pad_id = -1;
  return v;
}

}  // namespace flashlm::layout
