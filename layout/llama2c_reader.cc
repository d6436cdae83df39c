#include "layout/llama2c_reader.h"

#include <array>
#include <cstring>
#include <unordered_map>

#include "layout/llama_tensors.h"

namespace flashlm::layout {
namespace {

constexpr uint64_t kV1HeaderBytes = 256;
constexpr uint64_t kLegacyHeaderBytes = 7 * 4;

struct Header {
  int32_t dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len;
};

// (a * b * c) in uint64, or nullopt on overflow.
std::optional<uint64_t> Mul(uint64_t a, uint64_t b, uint64_t c = 1) {
  uint64_t r;
  if (__builtin_mul_overflow(a, b, &r) || __builtin_mul_overflow(r, c, &r)) return std::nullopt;
  return r;
}

class Llama2cCheckpoint final : public Checkpoint {
 public:
  Llama2cCheckpoint(std::unique_ptr<ByteSource> src, ModelConfig config, Vocab vocab)
      : src_(std::move(src)), config_(std::move(config)), vocab_(std::move(vocab)) {}

  std::string_view format() const override { return "llama2c"; }
  const ModelConfig& config() const override { return config_; }
  const Vocab& vocab() const override { return vocab_; }
  const std::vector<TensorInfo>& tensors() const override { return infos_; }

  void Add(TensorInfo info, uint64_t offset) {
    index_[info.name] = infos_.size();
    infos_.push_back(std::move(info));
    offsets_.push_back(offset);
  }

  Status ReadTensor(const TensorInfo& info, ByteSpan out) override {
    auto it = index_.find(info.name);
    if (it == index_.end()) return NotFoundError("llama2.c: no tensor " + info.name);
    const TensorInfo& mine = infos_[it->second];
    if (out.size() != mine.size_bytes()) {
      return InvalidArgumentError("llama2.c: buffer for " + info.name + " has the wrong size");
    }
    return src_->ReadAt(offsets_[it->second], out);
  }

 private:
  std::unique_ptr<ByteSource> src_;
  ModelConfig config_;
  Vocab vocab_;
  std::vector<TensorInfo> infos_;
  std::vector<uint64_t> offsets_;
  std::unordered_map<std::string, size_t> index_;
};

}  // namespace

bool LooksLikeLlama2cV1(ConstByteSpan head) {
  if (head.size() < 4) return false;
  uint32_t magic;
  std::memcpy(&magic, head.data(), 4);
  return magic == kLlama2cMagic;
}

Result<std::unique_ptr<Checkpoint>> OpenLlama2c(std::unique_ptr<ByteSource> model,
                                                std::unique_ptr<ByteSource> tokenizer) {
  const std::string name = model->name();
  const uint64_t file_size = model->size_bytes();
  std::array<std::byte, kV1HeaderBytes> head{};
  const uint64_t head_bytes = std::min<uint64_t>(file_size, kV1HeaderBytes);
  RETURN_IF_ERROR(model->ReadAt(0, std::span(head).first(head_bytes)));
  const bool v1 = LooksLikeLlama2cV1(std::span(head).first(head_bytes));
  Header h{};
  bool shared = false;
  uint64_t header_bytes = 0;
  if (v1) {
    if (file_size < kV1HeaderBytes) {
      return CorruptionError(name + ": truncated llama2.c version-1 header");
    }
    int32_t version;
    std::memcpy(&version, head.data() + 4, 4);
    if (version != 1) {
      return NotSupportedError(name + ": llama2.c version " + std::to_string(version) +
                               " is not supported (only float32 version 1 and legacy)");
    }
    std::memcpy(&h, head.data() + 8, sizeof(h));
    const uint8_t flag = static_cast<uint8_t>(head[8 + sizeof(h)]);
    if (flag > 1) return CorruptionError(name + ": llama2.c shared_classifier flag is not 0/1");
    shared = flag == 1;
    if (h.vocab_size <= 0) return CorruptionError(name + ": llama2.c vocab_size must be > 0");
    header_bytes = kV1HeaderBytes;
  } else {
    if (file_size < kLegacyHeaderBytes) {
      return CorruptionError(name + ": truncated llama2.c header (" + std::to_string(file_size) +
                             " bytes)");
    }
    std::memcpy(&h, head.data(), sizeof(h));
    shared = h.vocab_size > 0;
    if (h.vocab_size == INT32_MIN) return CorruptionError(name + ": llama2.c bad vocab_size");
    h.vocab_size = h.vocab_size < 0 ? -h.vocab_size : h.vocab_size;
    header_bytes = kLegacyHeaderBytes;
  }
  auto positive = [&](int32_t v, const char* field) -> Status {
    if (v <= 0) {
      return CorruptionError(name + ": llama2.c header " + field + " is " + std::to_string(v));
    }
    return Status::Ok();
  };
  RETURN_IF_ERROR(positive(h.dim, "dim"));
  RETURN_IF_ERROR(positive(h.hidden_dim, "hidden_dim"));
  RETURN_IF_ERROR(positive(h.n_layers, "n_layers"));
  RETURN_IF_ERROR(positive(h.n_heads, "n_heads"));
  RETURN_IF_ERROR(positive(h.n_kv_heads, "n_kv_heads"));
  RETURN_IF_ERROR(positive(h.vocab_size, "vocab_size"));
  RETURN_IF_ERROR(positive(h.seq_len, "seq_len"));
  if (h.dim % h.n_heads != 0) {
    return CorruptionError(name + ": llama2.c dim " + std::to_string(h.dim) +
                           " is not a multiple of n_heads " + std::to_string(h.n_heads));
  }
  ModelConfig c;
  c.dim = h.dim;
  c.hidden_dim = h.hidden_dim;
  c.n_layers = h.n_layers;
  c.n_heads = h.n_heads;
  c.n_kv_heads = h.n_kv_heads;
  c.head_dim = h.dim / h.n_heads;
  c.vocab_size = h.vocab_size;
  c.max_seq_len = h.seq_len;
  c.tied_embeddings = shared;
  RETURN_IF_ERROR(ValidateLoadedConfig(c, name + ": llama2.c header"));

  // Layout: a list of (tensor name pattern, per-layer?, rows, cols) in file order.
  const uint64_t L = c.n_layers, D = c.dim, F = c.hidden_dim, V = c.vocab_size;
  const uint64_t kv = static_cast<uint64_t>(c.n_kv_heads) * c.head_dim;
  struct Block {
    const char* name;  // canonical suffix; nullptr for skipped data
    bool per_layer;
    uint64_t rows, cols;
  };
  std::vector<Block> blocks;
  const Block emb{"token_embd.weight", false, V, D}, att_norm{"attn_norm.weight", true, 1, D},
      q{"attn_q.weight", true, D, D}, k{"attn_k.weight", true, kv, D},
      v{"attn_v.weight", true, kv, D}, o{"attn_output.weight", true, D, D},
      ffn_norm{"ffn_norm.weight", true, 1, D}, w1{"ffn_gate.weight", true, F, D},
      w2{"ffn_down.weight", true, D, F}, w3{"ffn_up.weight", true, F, D},
      final_norm{"output_norm.weight", false, 1, D};
  if (v1) {
    blocks = {att_norm, ffn_norm, final_norm, emb, q, k, v, o, w1, w2, w3};
  } else {
    blocks = {
        emb,      att_norm,   q,
        k,        v,          o,
        ffn_norm, w1,         w2,
        w3,       final_norm, Block{nullptr, false, static_cast<uint64_t>(h.seq_len), c.head_dim}};
  }
  if (!shared) blocks.push_back(Block{"output.weight", false, V, D});

  // First pass: sizes and the total, checked against the file before anything is built (an
  // untrusted header may claim thousands of layers).
  std::vector<uint64_t> starts, one_bytes;
  uint64_t offset = header_bytes;
  for (const Block& b : blocks) {
    // Every count is < 2^31, so a few products fit; check anyway, the header is untrusted.
    std::optional<uint64_t> one = Mul(b.rows, b.cols, 4);
    std::optional<uint64_t> all = one ? Mul(*one, b.per_layer ? L : 1) : std::nullopt;
    starts.push_back(offset);
    if (!all || __builtin_add_overflow(offset, *all, &offset)) {
      return CorruptionError(name + ": llama2.c header sizes overflow");
    }
    one_bytes.push_back(*one);
  }
  if (offset != file_size) {
    return CorruptionError(name + ": llama2.c file is " + std::to_string(file_size) +
                           " bytes but its header describes " + std::to_string(offset) +
                           " (truncated, or not a llama2.c checkpoint)");
  }
  Vocab vocab;
  if (tokenizer) {
    Result<Vocab> r = ParseLlama2cTokenizer(*tokenizer, c.vocab_size);
    if (!r.ok()) return r.status();
    vocab = std::move(*r);
  }
  auto ckpt = std::make_unique<Llama2cCheckpoint>(std::move(model), c, std::move(vocab));
  for (size_t i = 0; i < blocks.size(); ++i) {
    const Block& b = blocks[i];
    if (b.name == nullptr) continue;
    for (uint64_t l = 0; l < (b.per_layer ? L : 1); ++l) {
      std::string tname = b.per_layer ? "blk." + std::to_string(l) + "." + b.name : b.name;
      std::vector<uint64_t> shape =
          b.rows == 1 ? std::vector<uint64_t>{b.cols} : std::vector<uint64_t>{b.rows, b.cols};
      ckpt->Add(TensorInfo{std::move(tname), DType::kF32, std::move(shape)},
                starts[i] + l * one_bytes[i]);
    }
  }
  RETURN_IF_ERROR(CheckLlamaTensors(ckpt->config(), ckpt->tensors(), name));
  return std::unique_ptr<Checkpoint>(std::move(ckpt));
}

Result<Vocab> ParseLlama2cTokenizer(ByteSource& src, uint32_t vocab_size) {
  const std::string& name = src.name();
  const uint64_t size = src.size_bytes();
  // Read whole: tokenizer files are small (the 32000-token Llama vocab is 434 KB).
  if (size > (uint64_t{256} << 20)) {
    return CorruptionError(name + ": llama2.c tokenizer is implausibly large");
  }
  std::vector<std::byte> buf(size);
  RETURN_IF_ERROR(src.ReadAt(0, buf));
  uint64_t pos = 0;
  auto get = [&](void* dst, uint64_t n, uint32_t token) -> Status {
    if (!RangeInside(pos, n, size)) {
      return CorruptionError(name + ": llama2.c tokenizer truncated at token " +
                             std::to_string(token) + " of " + std::to_string(vocab_size));
    }
    std::memcpy(dst, buf.data() + pos, n);
    pos += n;
    return Status::Ok();
  };
  int32_t max_len;
  RETURN_IF_ERROR(get(&max_len, 4, 0));
  if (max_len <= 0) return CorruptionError(name + ": llama2.c tokenizer max_token_length <= 0");
  Vocab v;
  v.kind = Vocab::Kind::kSentencePiece;
  v.tokens.reserve(vocab_size);
  // vocab_size 0: every token up to the end of the file (a tokenizer.bin on its own).
  for (uint32_t t = 0; vocab_size == 0 ? pos < size : t < vocab_size; ++t) {
    float score;
    int32_t len;
    RETURN_IF_ERROR(get(&score, 4, t));
    RETURN_IF_ERROR(get(&len, 4, t));
    if (len < 0 || len > max_len) {
      return CorruptionError(name + ": llama2.c token " + std::to_string(t) + " has length " +
                             std::to_string(len) + " (max_token_length " + std::to_string(max_len) +
                             ")");
    }
    if (static_cast<uint64_t>(len) > size - pos) {
      return CorruptionError(name + ": llama2.c tokenizer truncated at token " + std::to_string(t) +
                             " of " + std::to_string(vocab_size));
    }
    std::string raw(static_cast<size_t>(len), '\0');
    RETURN_IF_ERROR(get(raw.data(), raw.size(), t));
    // llama2.c writes BOS/EOS as "\n<s>\n" / "\n</s>\n" and spaces as ' '.
    if (raw.size() > 2 && raw.front() == '\n' && raw.back() == '\n' && raw[1] == '<') {
      raw = raw.substr(1, raw.size() - 2);
    }
    std::string piece;
    for (char ch : raw) {
      if (ch == ' ') {
        piece += "\xE2\x96\x81";
      } else {
        piece += ch;
      }
    }
    int32_t type = Vocab::kNormal;
    if (piece == "<unk>") {
      type = Vocab::kUnknown;
    } else if (piece == "<s>" || piece == "</s>") {
      type = Vocab::kControl;
    } else if (piece.size() == 6 && piece.starts_with("<0x") && piece.back() == '>') {
      type = Vocab::kByte;
    }
    v.tokens.push_back(std::move(piece));
    v.scores.push_back(score);
    v.types.push_back(type);
  }
  if (v.tokens.size() < 3) {
    return CorruptionError(name + ": llama2.c tokenizer has fewer than 3 tokens (unk, BOS, EOS)");
  }
  return v;
}

Result<Vocab> ReadLlama2cTokenizer(const std::string& path, uint32_t vocab_size) {
  ASSIGN_OR_RETURN(std::unique_ptr<ByteSource> src, OpenFileSource(path));
  return ParseLlama2cTokenizer(*src, vocab_size);
}

}  // namespace flashlm::layout
