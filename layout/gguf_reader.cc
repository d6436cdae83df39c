#include "layout/gguf_reader.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <unordered_map>
#include <unordered_set>

#include "layout/llama_tensors.h"

namespace flashlm::layout {
namespace {

constexpr uint64_t kChunkBytes = 1 << 20;
constexpr uint64_t kMaxValues = uint64_t{1} << 50;  // per tensor: far beyond any real model
constexpr int kMaxArrayDepth = 4;
constexpr uint32_t kMaxDims = 4;  // GGML_MAX_DIMS

// Sequential reader over a ByteSource with a bounded read-ahead buffer. Every read is checked
// against the source size first, so a bogus length can neither overflow nor allocate past it.
class Cursor {
 public:
  explicit Cursor(ByteSource& src) : src_(src), size_(src.size_bytes()) {}

  uint64_t pos() const { return pos_; }
  uint64_t remaining() const { return size_ - pos_; }

  Status Read(void* dst, uint64_t n, std::string_view what) {
    if (!RangeInside(pos_, n, size_)) {
      return CorruptionError(src_.name() + ": truncated GGUF: " + std::string(what) +
                             " at offset " + std::to_string(pos_) + " needs " + std::to_string(n) +
                             " bytes, file has " + std::to_string(size_ - pos_) + " left");
    }
    auto* out = static_cast<std::byte*>(dst);
    while (n > 0) {
      if (pos_ >= buf_start_ && pos_ < buf_start_ + buf_.size()) {
        const uint64_t k = std::min<uint64_t>(n, buf_start_ + buf_.size() - pos_);
        std::memcpy(out, buf_.data() + (pos_ - buf_start_), k);
        out += k;
        pos_ += k;
        n -= k;
        continue;
      }
      if (n >= kChunkBytes) {
        RETURN_IF_ERROR(src_.ReadAt(pos_, ByteSpan(out, n)));
        pos_ += n;
        return Status::Ok();
      }
      buf_start_ = pos_;
      buf_.resize(std::min<uint64_t>(kChunkBytes, size_ - pos_));
      RETURN_IF_ERROR(src_.ReadAt(buf_start_, buf_));
    }
    return Status::Ok();
  }

  template <typename T>
  Result<T> Get(std::string_view what) {
    T v;
    RETURN_IF_ERROR(Read(&v, sizeof(T), what));
    return v;
  }

  Result<std::string> GetString(std::string_view what) {
    ASSIGN_OR_RETURN(uint64_t len, Get<uint64_t>(what));
    if (len > remaining()) {
      return CorruptionError(src_.name() + ": GGUF " + std::string(what) + " length " +
                             std::to_string(len) + " at offset " + std::to_string(pos_ - 8) +
                             " passes the end of the file");
    }
    std::string s(len, '\0');
    RETURN_IF_ERROR(Read(s.data(), len, what));
    return s;
  }

  const std::string& name() const { return src_.name(); }

 private:
  ByteSource& src_;
  uint64_t size_;
  uint64_t pos_ = 0;
  std::vector<std::byte> buf_;
  uint64_t buf_start_ = 0;
};

Status ReadValue(Cursor& c, GgufType type, GgufValue& v, int depth, const std::string& key);

Status ReadScalar(Cursor& c, GgufType type, GgufValue& v, const std::string& key) {
  v.type = type;
  switch (type) {
    case GgufType::kU8: {
      ASSIGN_OR_RETURN(v.u, c.Get<uint8_t>(key));
      return Status::Ok();
    }
    case GgufType::kI8: {
      ASSIGN_OR_RETURN(v.i, c.Get<int8_t>(key));
      return Status::Ok();
    }
    case GgufType::kU16: {
      ASSIGN_OR_RETURN(v.u, c.Get<uint16_t>(key));
      return Status::Ok();
    }
    case GgufType::kI16: {
      ASSIGN_OR_RETURN(v.i, c.Get<int16_t>(key));
      return Status::Ok();
    }
    case GgufType::kU32: {
      ASSIGN_OR_RETURN(v.u, c.Get<uint32_t>(key));
      return Status::Ok();
    }
    case GgufType::kI32: {
      ASSIGN_OR_RETURN(v.i, c.Get<int32_t>(key));
      return Status::Ok();
    }
    case GgufType::kU64: {
      ASSIGN_OR_RETURN(v.u, c.Get<uint64_t>(key));
      return Status::Ok();
    }
    case GgufType::kI64: {
      ASSIGN_OR_RETURN(v.i, c.Get<int64_t>(key));
      return Status::Ok();
    }
    case GgufType::kF32: {
      ASSIGN_OR_RETURN(v.f, c.Get<float>(key));
      return Status::Ok();
    }
    case GgufType::kF64: {
      ASSIGN_OR_RETURN(v.f, c.Get<double>(key));
      return Status::Ok();
    }
    case GgufType::kBool: {
      ASSIGN_OR_RETURN(uint8_t b, c.Get<uint8_t>(key));
      if (b > 1)
        return CorruptionError(c.name() + ": GGUF bool " + key + " is " + std::to_string(b));
      v.u = b;
      return Status::Ok();
    }
    case GgufType::kString: {
      ASSIGN_OR_RETURN(v.s, c.GetString(key));
      return Status::Ok();
    }
    case GgufType::kArray:
      break;
  }
  return InternalError("ReadScalar: not a scalar");
}

Status ReadValue(Cursor& c, GgufType type, GgufValue& v, int depth, const std::string& key) {
  if (type != GgufType::kArray) return ReadScalar(c, type, v, key);
  if (depth >= kMaxArrayDepth) {
    return CorruptionError(c.name() + ": GGUF metadata " + key + " nests arrays too deeply");
  }
  v.type = GgufType::kArray;
  ASSIGN_OR_RETURN(uint32_t elem, c.Get<uint32_t>(key));
  if (elem >= kGgufTypeCount) {
    return CorruptionError(c.name() + ": GGUF metadata " + key + " has unknown array type " +
                           std::to_string(elem));
  }
  v.elem_type = static_cast<GgufType>(elem);
  ASSIGN_OR_RETURN(v.count, c.Get<uint64_t>(key));
  // Each element takes at least this many bytes, so a count the file cannot hold is refused
  // before anything is allocated.
  const uint32_t scalar = GgufScalarBytes(v.elem_type);
  const uint64_t min_elem = scalar ? scalar : (v.elem_type == GgufType::kString ? 8 : 12);
  if (v.count > c.remaining() / min_elem) {
    return CorruptionError(c.name() + ": GGUF array " + key + " claims " + std::to_string(v.count) +
                           " elements, more than the file holds");
  }
  if (scalar) {
    v.raw.resize(v.count * scalar);
    RETURN_IF_ERROR(c.Read(v.raw.data(), v.raw.size(), key));
    if (v.elem_type == GgufType::kBool) {
      for (std::byte b : v.raw) {
        if (static_cast<uint8_t>(b) > 1) {
          return CorruptionError(c.name() + ": GGUF bool array " + key + " holds a non-bool");
        }
      }
    }
  } else if (v.elem_type == GgufType::kString) {
    v.strings.reserve(v.count);
    for (uint64_t k = 0; k < v.count; ++k) {
      ASSIGN_OR_RETURN(std::string s, c.GetString(key));
      v.strings.push_back(std::move(s));
    }
  } else {
    v.arrays.resize(v.count);
    for (uint64_t k = 0; k < v.count; ++k) {
      RETURN_IF_ERROR(ReadValue(c, GgufType::kArray, v.arrays[k], depth + 1, key));
    }
  }
  return Status::Ok();
}

}  // namespace

const GgufValue* GgufFile::Find(std::string_view key) const {
  for (const GgufKV& kv : metadata) {
    if (kv.key == key) return &kv.value;
  }
  return nullptr;
}

Result<GgufFile> GgufFile::Parse(ByteSource& src) {
  Cursor c(src);
  GgufFile f;
  const std::string& name = src.name();
  ASSIGN_OR_RETURN(uint32_t magic, c.Get<uint32_t>("magic"));
  if (magic != kGgufMagic) return CorruptionError(name + ": bad GGUF magic");
  ASSIGN_OR_RETURN(f.version, c.Get<uint32_t>("version"));
  if (f.version == 1) return NotSupportedError(name + ": GGUF version 1 is not supported");
  if (f.version != 2 && f.version != 3) {
    return NotSupportedError(name + ": GGUF version " + std::to_string(f.version) +
                             " is not supported (expected 2 or 3; big-endian files are refused)");
  }
  ASSIGN_OR_RETURN(uint64_t n_tensors, c.Get<uint64_t>("tensor count"));
  ASSIGN_OR_RETURN(uint64_t n_kv, c.Get<uint64_t>("metadata count"));
  if (n_kv > c.remaining() / 13) {  // key length 8 + type 4 + at least 1 byte of value
    return CorruptionError(name + ": GGUF metadata count " + std::to_string(n_kv) +
                           " is more than the file can hold");
  }
  std::unordered_set<std::string> keys;
  f.metadata.reserve(n_kv);
  for (uint64_t k = 0; k < n_kv; ++k) {
    GgufKV kv;
    ASSIGN_OR_RETURN(kv.key, c.GetString("metadata key"));
    if (!keys.insert(kv.key).second) {
      return CorruptionError(name + ": duplicate GGUF metadata key " + kv.key);
    }
    ASSIGN_OR_RETURN(uint32_t type, c.Get<uint32_t>(kv.key));
    if (type >= kGgufTypeCount) {
      return CorruptionError(name + ": GGUF metadata " + kv.key + " has unknown value type " +
                             std::to_string(type));
    }
    RETURN_IF_ERROR(ReadValue(c, static_cast<GgufType>(type), kv.value, 0, kv.key));
    f.metadata.push_back(std::move(kv));
  }
  if (const GgufValue* a = f.Find("general.alignment")) {
    std::optional<uint64_t> v = a->type == GgufType::kU32 ? a->AsUint() : std::nullopt;
    if (!v || !IsPowerOfTwo(*v) || *v > (1u << 20)) {
      return CorruptionError(name + ": GGUF general.alignment must be a u32 power of two");
    }
    f.alignment = *v;
  }
  if (n_tensors > c.remaining() / 24) {  // name length 8 + n_dims 4 + type 4 + offset 8
    return CorruptionError(name + ": GGUF tensor count " + std::to_string(n_tensors) +
                           " is more than the file can hold");
  }
  std::unordered_set<std::string> names;
  std::vector<uint64_t> relative_offsets;
  f.tensors.reserve(n_tensors);
  for (uint64_t k = 0; k < n_tensors; ++k) {
    GgufTensor t;
    ASSIGN_OR_RETURN(t.name, c.GetString("tensor name"));
    if (!names.insert(t.name).second) {
      return CorruptionError(name + ": duplicate GGUF tensor " + t.name);
    }
    ASSIGN_OR_RETURN(uint32_t n_dims, c.Get<uint32_t>(t.name));
    if (n_dims == 0 || n_dims > kMaxDims) {
      return CorruptionError(name + ": GGUF tensor " + t.name + " has " + std::to_string(n_dims) +
                             " dimensions (expected 1 to 4)");
    }
    uint64_t values = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      ASSIGN_OR_RETURN(uint64_t ne, c.Get<uint64_t>(t.name));
      if (ne == 0 || ne > kMaxValues || __builtin_mul_overflow(values, ne, &values) ||
          values > kMaxValues) {
        return CorruptionError(name + ": GGUF tensor " + t.name + " has an invalid or " +
                               "overflowing dimension " + std::to_string(ne));
      }
      t.ne.push_back(ne);
    }
    ASSIGN_OR_RETURN(t.ggml_type, c.Get<uint32_t>(t.name));
    std::optional<DType> dt = DTypeFromGgml(t.ggml_type);
    if (!dt) {
      return NotSupportedError(name + ": GGUF tensor " + t.name + " has type " +
                               GgmlTypeName(t.ggml_type) + ", which flashlm does not read");
    }
    t.dtype = *dt;
    if (t.ne[0] % DTypeBlockValues(t.dtype) != 0) {
      return CorruptionError(name + ": GGUF tensor " + t.name + " row of " +
                             std::to_string(t.ne[0]) + " values is not whole " +
                             std::string(DTypeName(t.dtype)) + " blocks");
    }
    t.size_bytes = values / t.ne[0] * RowBytes(t.dtype, t.ne[0]);  // < 2^53: no overflow
    ASSIGN_OR_RETURN(uint64_t off, c.Get<uint64_t>(t.name));
    if (off % f.alignment != 0) {
      return CorruptionError(name + ": GGUF tensor " + t.name + " offset " + std::to_string(off) +
                             " is not aligned to " + std::to_string(f.alignment));
    }
    relative_offsets.push_back(off);
    f.tensors.push_back(std::move(t));
  }
  f.data_offset_bytes = AlignUp(c.pos(), f.alignment);
  const uint64_t file_size = src.size_bytes();
  for (size_t k = 0; k < f.tensors.size(); ++k) {
    GgufTensor& t = f.tensors[k];
    if (f.data_offset_bytes > file_size ||
        !RangeInside(relative_offsets[k], t.size_bytes, file_size - f.data_offset_bytes)) {
      return CorruptionError(
          name + ": GGUF tensor " + t.name + " (offset " + std::to_string(relative_offsets[k]) +
          ", " + std::to_string(t.size_bytes) + " bytes) lies outside the data section");
    }
    t.offset_bytes = f.data_offset_bytes + relative_offsets[k];
  }
  return f;
}

namespace {

Result<uint32_t> GetU32(const GgufFile& f, const std::string& key, std::optional<uint32_t> dflt,
                        const std::string& name) {
  const GgufValue* v = f.Find(key);
  if (v == nullptr) {
    if (dflt) return *dflt;
    return CorruptionError(name + ": GGUF metadata " + key + " is missing");
  }
  std::optional<uint64_t> u = v->AsUint();
  if (!u || *u > UINT32_MAX) {
    return CorruptionError(name + ": GGUF metadata " + key + " is not a u32 (type " +
                           std::string(GgufTypeName(v->type)) + ")");
  }
  return static_cast<uint32_t>(*u);
}

Result<float> GetF32(const GgufFile& f, const std::string& key, float dflt,
                     const std::string& name) {
  const GgufValue* v = f.Find(key);
  if (v == nullptr) return dflt;
  std::optional<double> d = v->AsDouble();
  if (!d || !std::isfinite(*d)) {
    return CorruptionError(name + ": GGUF metadata " + key + " is not a finite number");
  }
  return static_cast<float>(*d);
}

const GgufTensor* FindGgufTensor(const GgufFile& f, std::string_view name) {
  for (const GgufTensor& t : f.tensors) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

}  // namespace

Result<ModelConfig> GgufModelConfig(const GgufFile& f) {
  const std::string name = "GGUF";
  const GgufValue* arch = f.Find("general.architecture");
  if (arch == nullptr || arch->type != GgufType::kString) {
    return CorruptionError("GGUF: general.architecture is missing or not a string");
  }
  if (arch->s != "llama") {
    return NotSupportedError("GGUF architecture '" + arch->s + "' is not supported (only llama)");
  }
  ModelConfig c;
  const std::string p = "llama.";
  ASSIGN_OR_RETURN(c.dim, GetU32(f, p + "embedding_length", std::nullopt, name));
  ASSIGN_OR_RETURN(c.hidden_dim, GetU32(f, p + "feed_forward_length", std::nullopt, name));
  ASSIGN_OR_RETURN(c.n_layers, GetU32(f, p + "block_count", std::nullopt, name));
  ASSIGN_OR_RETURN(c.n_heads, GetU32(f, p + "attention.head_count", std::nullopt, name));
  if (const GgufValue* kv = f.Find(p + "attention.head_count_kv");
      kv != nullptr && kv->type == GgufType::kArray) {
    // Per-layer head counts: flashlm runs only uniform layers.
    if (!kv->IsNumericArray() || kv->count == 0) {
      return CorruptionError("GGUF: llama.attention.head_count_kv array is malformed");
    }
    for (uint64_t k = 1; k < kv->count; ++k) {
      if (kv->ArrayInt(k) != kv->ArrayInt(0)) {
        return NotSupportedError("GGUF: per-layer head_count_kv differs between layers");
      }
    }
    const int64_t v = kv->ArrayInt(0);
    if (v <= 0 || v > UINT32_MAX) return CorruptionError("GGUF: bad head_count_kv");
    c.n_kv_heads = static_cast<uint32_t>(v);
  } else {
    ASSIGN_OR_RETURN(c.n_kv_heads, GetU32(f, p + "attention.head_count_kv", c.n_heads, name));
  }
  if (c.n_heads == 0) return InvalidArgumentError("GGUF: llama.attention.head_count is 0");
  ASSIGN_OR_RETURN(c.head_dim, GetU32(f, p + "attention.key_length", c.dim / c.n_heads, name));
  ASSIGN_OR_RETURN(uint32_t v_len, GetU32(f, p + "attention.value_length", c.head_dim, name));
  ASSIGN_OR_RETURN(uint32_t rope_dim, GetU32(f, p + "rope.dimension_count", c.head_dim, name));
  if (v_len != c.head_dim || rope_dim != c.head_dim) {
    return NotSupportedError("GGUF: value_length or rope.dimension_count differs from head_dim");
  }
  ASSIGN_OR_RETURN(c.max_seq_len, GetU32(f, p + "context_length", 2048, name));
  ASSIGN_OR_RETURN(c.rope_theta, GetF32(f, p + "rope.freq_base", 10000.0f, name));
  ASSIGN_OR_RETURN(c.norm_eps, GetF32(f, p + "attention.layer_norm_rms_epsilon", 1e-5f, name));
  if (const GgufValue* st = f.Find(p + "rope.scaling.type")) {
    if (st->type != GgufType::kString) return CorruptionError("GGUF: rope.scaling.type");
    if (st->s == "linear") {
      c.rope_scaling.type = RopeScalingType::kLinear;
      ASSIGN_OR_RETURN(c.rope_scaling.factor, GetF32(f, p + "rope.scaling.factor", 1.0f, name));
    } else if (st->s != "none") {
      return NotSupportedError("GGUF: rope scaling type '" + st->s + "' is not supported");
    }
  }
  if (const GgufValue* act = f.Find("flashlm.activation")) {
    if (act->type != GgufType::kString || (act->s != "silu" && act->s != "relu")) {
      return CorruptionError("GGUF: flashlm.activation must be \"silu\" or \"relu\"");
    }
    c.activation = act->s == "relu" ? Activation::kRelu : Activation::kSilu;
  }
  c.tied_embeddings = FindGgufTensor(f, "output.weight") == nullptr;
  if (const GgufTensor* emb = FindGgufTensor(f, "token_embd.weight"); emb && emb->ne.size() == 2) {
    if (emb->ne[1] > UINT32_MAX) return CorruptionError("GGUF: token_embd.weight too large");
    c.vocab_size = static_cast<uint32_t>(emb->ne[1]);
  }
  ASSIGN_OR_RETURN(uint32_t declared_vocab, GetU32(f, p + "vocab_size", c.vocab_size, name));
  if (c.vocab_size == 0) c.vocab_size = declared_vocab;
  if (declared_vocab != c.vocab_size) {
    return CorruptionError("GGUF: llama.vocab_size " + std::to_string(declared_vocab) +
                           " differs from token_embd.weight rows " + std::to_string(c.vocab_size));
  }
  RETURN_IF_ERROR(ValidateLoadedConfig(c, "GGUF"));
  return c;
}

Result<Vocab> GgufVocab(const GgufFile& f) {
  Vocab v;
  const GgufValue* model = f.Find("tokenizer.ggml.model");
  if (model == nullptr) return v;
  if (model->type != GgufType::kString) {
    return CorruptionError("GGUF: tokenizer.ggml.model is not a string");
  }
  if (model->s == "llama") {
    v.kind = Vocab::Kind::kSentencePiece;
  } else if (model->s == "gpt2") {
    v.kind = Vocab::Kind::kGpt2Bpe;
    v.add_space_prefix = false;
  } else if (model->s == "no_vocab" || model->s == "none") {
    return v;
  } else {
    return NotSupportedError("GGUF tokenizer model '" + model->s + "' is not supported");
  }
  const GgufValue* tokens = f.Find("tokenizer.ggml.tokens");
  if (tokens == nullptr || tokens->type != GgufType::kArray ||
      tokens->elem_type != GgufType::kString || tokens->count == 0) {
    return CorruptionError("GGUF: tokenizer.ggml.tokens is missing or not a string array");
  }
  v.tokens = tokens->strings;
  const uint64_t n = v.tokens.size();
  v.scores.assign(n, 0.0f);
  v.types.assign(n, Vocab::kNormal);
  if (const GgufValue* s = f.Find("tokenizer.ggml.scores")) {
    if (!s->IsNumericArray() || s->count != n) {
      return CorruptionError("GGUF: tokenizer.ggml.scores does not match the token count");
    }
    for (uint64_t k = 0; k < n; ++k) v.scores[k] = static_cast<float>(s->ArrayDouble(k));
  }
  if (const GgufValue* t = f.Find("tokenizer.ggml.token_type")) {
    if (!t->IsNumericArray() || t->count != n) {
      return CorruptionError("GGUF: tokenizer.ggml.token_type does not match the token count");
    }
    for (uint64_t k = 0; k < n; ++k) v.types[k] = static_cast<int32_t>(t->ArrayInt(k));
  }
  if (const GgufValue* m = f.Find("tokenizer.ggml.merges")) {
    if (m->type != GgufType::kArray || m->elem_type != GgufType::kString) {
      return CorruptionError("GGUF: tokenizer.ggml.merges is not a string array");
    }
    v.merges = m->strings;
  }
  auto id = [&](const char* key, int32_t& out) -> Status {
    const GgufValue* x = f.Find(key);
    if (x == nullptr) return Status::Ok();
    std::optional<uint64_t> u = x->AsUint();
    if (!u || *u >= n) {
      return CorruptionError(std::string("GGUF: ") + key + " is not a valid token id");
    }
    out = static_cast<int32_t>(*u);
    return Status::Ok();
  };
  RETURN_IF_ERROR(id("tokenizer.ggml.bos_token_id", v.bos_id));
  RETURN_IF_ERROR(id("tokenizer.ggml.eos_token_id", v.eos_id));
  // llama.cpp tolerates a pad / unknown id outside the vocabulary (some converters write -1 or
  // the vocabulary size); treat it as "none" rather than refusing the file.
  if (!id("tokenizer.ggml.unknown_token_id", v.unk_id).ok()) v.unk_id = -1;
  if (!id("tokenizer.ggml.padding_token_id", v.pad_id).ok()) v.pad_id = -1;
  auto flag = [&](const char* key, bool& out) -> Status {
    const GgufValue* x = f.Find(key);
    if (x == nullptr) return Status::Ok();
    if (x->type != GgufType::kBool) return CorruptionError(std::string("GGUF: ") + key);
    out = x->u != 0;
    return Status::Ok();
  };
  RETURN_IF_ERROR(flag("tokenizer.ggml.add_bos_token", v.add_bos));
  RETURN_IF_ERROR(flag("tokenizer.ggml.add_space_prefix", v.add_space_prefix));
  return v;
}

namespace {

class GgufCheckpoint final : public Checkpoint {
 public:
  GgufCheckpoint(std::unique_ptr<ByteSource> src, GgufFile file, ModelConfig config, Vocab vocab,
                 std::vector<TensorInfo> infos, std::vector<uint64_t> offsets)
      : src_(std::move(src)),
        file_(std::move(file)),
        config_(std::move(config)),
        vocab_(std::move(vocab)),
        infos_(std::move(infos)),
        offsets_(std::move(offsets)) {
    for (size_t k = 0; k < infos_.size(); ++k) index_[infos_[k].name] = k;
  }

  std::string_view format() const override { return "gguf"; }
  const ModelConfig& config() const override { return config_; }
  const Vocab& vocab() const override { return vocab_; }
  const std::vector<TensorInfo>& tensors() const override { return infos_; }

  Status ReadTensor(const TensorInfo& info, ByteSpan out) override {
    auto it = index_.find(info.name);
    if (it == index_.end()) return NotFoundError("GGUF: no tensor " + info.name);
    const TensorInfo& mine = infos_[it->second];
    if (out.size() != mine.size_bytes()) {
      return InvalidArgumentError("GGUF: buffer for " + info.name + " has " +
                                  std::to_string(out.size()) + " bytes, tensor has " +
                                  std::to_string(mine.size_bytes()));
    }
    return src_->ReadAt(offsets_[it->second], out);
  }

 private:
  std::unique_ptr<ByteSource> src_;
  GgufFile file_;
  ModelConfig config_;
  Vocab vocab_;
  std::vector<TensorInfo> infos_;
  std::vector<uint64_t> offsets_;
  std::unordered_map<std::string, size_t> index_;
};

}  // namespace

Result<std::unique_ptr<Checkpoint>> OpenGguf(std::unique_ptr<ByteSource> src) {
  const std::string name = src->name();
  ASSIGN_OR_RETURN(GgufFile file, GgufFile::Parse(*src));
  Result<ModelConfig> config = GgufModelConfig(file);
  if (!config.ok()) return config.status().WithContext(name);
  Result<Vocab> vocab = GgufVocab(file);
  if (!vocab.ok()) return vocab.status().WithContext(name);
  if (!vocab->empty() && vocab->tokens.size() != config->vocab_size) {
    return CorruptionError(name + ": GGUF has " + std::to_string(vocab->tokens.size()) +
                           " tokens but token_embd.weight has " +
                           std::to_string(config->vocab_size) + " rows");
  }
  std::vector<TensorInfo> infos;
  std::vector<uint64_t> offsets;
  for (const GgufTensor& t : file.tensors) {
    if (t.ne.size() > 2) {
      bool flat = true;
      for (size_t d = 2; d < t.ne.size(); ++d) flat = flat && t.ne[d] == 1;
      if (!flat) {
        return NotSupportedError(name + ": GGUF tensor " + t.name + " has more than 2 dimensions");
      }
    }
    TensorInfo info{t.name, t.dtype, {}};
    info.shape =
        t.ne.size() == 1 ? std::vector<uint64_t>{t.ne[0]} : std::vector<uint64_t>{t.ne[1], t.ne[0]};
    infos.push_back(std::move(info));
    offsets.push_back(t.offset_bytes);
  }
  RETURN_IF_ERROR(CheckLlamaTensors(*config, infos, name));
  return std::unique_ptr<Checkpoint>(
      std::make_unique<GgufCheckpoint>(std::move(src), std::move(file), std::move(*config),
                                       std::move(*vocab), std::move(infos), std::move(offsets)));
}

}  // namespace flashlm::layout
