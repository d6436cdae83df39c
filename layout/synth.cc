#include "layout/synth.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "layout/byte_source.h"
#include "layout/gguf_reader.h"
#include "layout/gguf_writer.h"
#include "layout/llama_tensors.h"

namespace flashlm::layout {
namespace {

uint64_t SplitMix(uint64_t& state) {
  uint64_t z = (state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Approximately N(0, 1): the sum of four 16-bit uniforms, centred and scaled to unit variance.
float Normal(uint64_t& state) {
  const uint64_t r = SplitMix(state);
  const float sum =
      static_cast<float>((r & 0xFFFF) + ((r >> 16) & 0xFFFF) + ((r >> 32) & 0xFFFF) + (r >> 48)) *
      (1.0f / 65536.0f);
  return (sum - 2.0f) * 1.7320508f;  // variance of the sum is 4/12
}

// z with Phi(z) = p, by bisection (p in (0, 1)).
double InverseNormalCdf(double p) {
  double lo = -10, hi = 10;
  for (int i = 0; i < 80; ++i) {
    const double mid = 0.5 * (lo + hi);
    if (0.5 * std::erfc(-mid / std::sqrt(2.0)) < p) {
      lo = mid;
    } else {
      hi = mid;
    }
  }
  return 0.5 * (lo + hi);
}

// The generated vocabulary: <unk>, <s>, </s>, 256 byte tokens, then distinct pieces.
void AddGeneratedVocab(GgufWriter& w, uint32_t vocab_size) {
  std::vector<std::string> tokens = {"<unk>", "<s>", "</s>"};
  std::vector<float> scores = {0, 0, 0};
  std::vector<int32_t> types = {Vocab::kUnknown, Vocab::kControl, Vocab::kControl};
  for (int b = 0; b < 256; ++b) {
    char buf[8];
    std::snprintf(buf, sizeof(buf), "<0x%02X>", b);
    tokens.push_back(buf);
    scores.push_back(0);
    types.push_back(Vocab::kByte);
  }
  const std::string space = "\xE2\x96\x81";
  std::vector<std::string> pieces = {space};
  for (char c = 33; c < 127; ++c) pieces.push_back(std::string(1, c));
  for (char c = 33; c < 127; ++c) pieces.push_back(space + c);
  for (uint64_t k = 26; tokens.size() + pieces.size() < vocab_size; ++k) {
    std::string s;  // base-26 letters, at least two of them: never equal to the pieces above
    for (uint64_t x = k; x > 0; x /= 26) s.insert(s.begin(), static_cast<char>('a' + x % 26));
    pieces.push_back(space + s);
    pieces.push_back(s);
  }
  for (size_t i = 0; tokens.size() < vocab_size; ++i) {
    tokens.push_back(pieces[i]);
    scores.push_back(-static_cast<float>(i));
    types.push_back(Vocab::kNormal);
  }
  w.AddMetadata("tokenizer.ggml.model", GgufValue::Str("llama"));
  w.AddMetadata("tokenizer.ggml.tokens", GgufValue::StrArray(std::move(tokens)));
  w.AddMetadata("tokenizer.ggml.scores", GgufValue::NumArray(GgufType::kF32, scores));
  w.AddMetadata("tokenizer.ggml.token_type", GgufValue::NumArray(GgufType::kI32, types));
  w.AddMetadata("tokenizer.ggml.bos_token_id", GgufValue::U32(1));
  w.AddMetadata("tokenizer.ggml.eos_token_id", GgufValue::U32(2));
  w.AddMetadata("tokenizer.ggml.unknown_token_id", GgufValue::U32(0));
  w.AddMetadata("tokenizer.ggml.add_bos_token", GgufValue::Bool(true));
  w.AddMetadata("tokenizer.ggml.add_eos_token", GgufValue::Bool(false));
}

uint32_t FileType(DType t) {  // llama.cpp's general.file_type (LLAMA_FTYPE_*)
  switch (t) {
    case DType::kF32:
      return 0;
    case DType::kF16:
      return 1;
    case DType::kQ4_0:
      return 2;
    case DType::kQ8_0:
      return 7;
    case DType::kBF16:
      return 32;
    case DType::kQ4_K:
      return 14;  // MOSTLY_Q4_K_S
    case DType::kQ6_K:
      return 18;
    default:
      return 0;
  }
}

}  // namespace

Result<ModelConfig> SynthShape(std::string_view name) {
  struct Shape {
    std::string_view name;
    uint32_t dim, hidden, layers, heads, kv_heads, vocab, ctx;
  };
  static constexpr Shape kShapes[] = {
      {"tiny", 64, 256, 2, 4, 2, 512, 256},         {"15m", 288, 768, 6, 6, 6, 32000, 256},
      {"110m", 768, 2048, 12, 12, 12, 32000, 1024}, {"1b", 2048, 5632, 22, 32, 4, 32000, 2048},
      {"7b", 4096, 11008, 32, 32, 32, 32000, 4096},
  };
  for (const Shape& s : kShapes) {
    if (s.name != name) continue;
    ModelConfig c;
    c.dim = s.dim;
    c.hidden_dim = s.hidden;
    c.n_layers = s.layers;
    c.n_heads = s.heads;
    c.n_kv_heads = s.kv_heads;
    c.head_dim = s.dim / s.heads;
    c.vocab_size = s.vocab;
    c.max_seq_len = s.ctx;
    return c;
  }
  return InvalidArgumentError("unknown shape '" + std::string(name) +
                              "' (expected tiny, 15m, 110m, 1b or 7b)");
}

std::vector<float> SynthFireProbabilities(uint32_t hidden, float fire_rate, float hot_skew,
                                          uint64_t seed) {
  std::vector<uint32_t> rank(hidden);
  for (uint32_t i = 0; i < hidden; ++i) rank[i] = i;
  uint64_t state = seed;
  for (uint32_t i = hidden; i > 1; --i) std::swap(rank[i - 1], rank[SplitMix(state) % i]);
  std::vector<double> w(hidden);
  for (uint32_t i = 0; i < hidden; ++i) w[i] = std::pow(rank[i] + 1.0, -hot_skew);
  auto mean_at = [&](double c) {
    double s = 0;
    for (double x : w) s += std::clamp(c * x, 1e-6, 0.999);
    return s / hidden;
  };
  double lo = 0, hi = 1;
  while (mean_at(hi) < fire_rate && hi < 1e12) hi *= 2;
  for (int i = 0; i < 100; ++i) {
    const double mid = 0.5 * (lo + hi);
    (mean_at(mid) < fire_rate ? lo : hi) = mid;
  }
  std::vector<float> p(hidden);
  for (uint32_t i = 0; i < hidden; ++i)
    p[i] = static_cast<float>(std::clamp(hi * w[i], 1e-6, 0.999));
  return p;
}

Status SynthesizeGguf(const SynthOptions& o) {
  ModelConfig c = o.config;
  const bool shape_relu = c.activation == Activation::kRelu && o.fire_rate > 0;
  if (o.fire_rate < 0 || o.fire_rate >= 1 || !std::isfinite(o.fire_rate)) {
    return InvalidArgumentError("synth: --fire-rate must be in [0, 1)");
  }
  if (o.fire_rate > 0 && c.activation != Activation::kRelu) {
    return InvalidArgumentError("synth: --fire-rate needs --activation relu");
  }
  if (!(o.hot_skew >= 0) || o.hot_skew > 10) {
    return InvalidArgumentError("synth: --hot-skew must be in [0, 10]");
  }
  GgufWriter w;
  GgufFile vocab_file;
  if (!o.vocab_from.empty()) {
    ASSIGN_OR_RETURN(std::unique_ptr<ByteSource> src, OpenFileSource(o.vocab_from));
    ASSIGN_OR_RETURN(vocab_file, GgufFile::Parse(*src));
    const GgufValue* tokens = vocab_file.Find("tokenizer.ggml.tokens");
    if (tokens == nullptr || tokens->elem_type != GgufType::kString) {
      return InvalidArgumentError(o.vocab_from + ": no tokenizer.ggml.tokens to copy");
    }
    if (tokens->count > UINT32_MAX) return InvalidArgumentError(o.vocab_from + ": vocab too big");
    c.vocab_size = static_cast<uint32_t>(tokens->count);  // the vocabulary decides
  } else if (c.vocab_size < 260) {
    return InvalidArgumentError(
        "synth: a generated vocab needs --vocab >= 260 (3 special and "
        "256 byte tokens come first); or use --vocab-from");
  }
  RETURN_IF_ERROR(c.Validate());

  const std::string a = "llama.";
  w.AddMetadata("general.architecture", GgufValue::Str("llama"));
  w.AddMetadata("general.name", GgufValue::Str("flashlm-synth"));
  w.AddMetadata("general.file_type", GgufValue::U32(o.q4_k_m ? 15 /* MOSTLY_Q4_K_M */
                                                                 : FileType(o.dtype)));
  w.AddMetadata(a + "context_length", GgufValue::U32(c.max_seq_len));
  w.AddMetadata(a + "embedding_length", GgufValue::U32(c.dim));
  w.AddMetadata(a + "block_count", GgufValue::U32(c.n_layers));
  w.AddMetadata(a + "feed_forward_length", GgufValue::U32(c.hidden_dim));
  w.AddMetadata(a + "rope.dimension_count", GgufValue::U32(c.head_dim));
  w.AddMetadata(a + "attention.head_count", GgufValue::U32(c.n_heads));
  w.AddMetadata(a + "attention.head_count_kv", GgufValue::U32(c.n_kv_heads));
  if (c.head_dim != c.dim / c.n_heads) {
    w.AddMetadata(a + "attention.key_length", GgufValue::U32(c.head_dim));
    w.AddMetadata(a + "attention.value_length", GgufValue::U32(c.head_dim));
  }
  w.AddMetadata(a + "attention.layer_norm_rms_epsilon", GgufValue::F32(c.norm_eps));
  w.AddMetadata(a + "rope.freq_base", GgufValue::F32(c.rope_theta));
  w.AddMetadata(a + "vocab_size", GgufValue::U32(c.vocab_size));
  if (c.activation == Activation::kRelu) {
    w.AddMetadata("flashlm.activation", GgufValue::Str("relu"));
    if (shape_relu) {
      w.AddMetadata("flashlm.synth.fire_rate", GgufValue::F32(o.fire_rate));
      w.AddMetadata("flashlm.synth.hot_skew", GgufValue::F32(o.hot_skew));
    }
  }
  w.AddMetadata("flashlm.synth.seed", GgufValue::U64(o.seed));
  if (o.vocab_from.empty()) {
    AddGeneratedVocab(w, c.vocab_size);
  } else {
    for (GgufKV& kv : vocab_file.metadata) {
      if (kv.key.starts_with("tokenizer.")) w.AddMetadata(kv.key, std::move(kv.value));
    }
  }

  c.tied_embeddings = false;
  std::vector<TensorInfo> tensors = ExpectedLlamaTensors(c);
  uint64_t total_bytes = 0;
  for (TensorInfo& t : tensors) {
    t.dtype = t.shape.size() == 1 ? DType::kF32 : o.dtype;
    if (o.q4_k_m && t.shape.size() == 2) {
      t.dtype = t.name == "output.weight" || t.name.ends_with("ffn_down.weight") ? DType::kQ6_K
                                                                                 : DType::kQ4_K;
    }
    if (t.dtype != DType::kF32 && t.cols() % DTypeBlockValues(t.dtype) != 0) {
      return InvalidArgumentError("synth: " + t.name + " rows of " + std::to_string(t.cols()) +
                                  " values are not whole " + std::string(DTypeName(t.dtype)) +
                                  " blocks; pick sizes divisible by " +
                                  std::to_string(DTypeBlockValues(t.dtype)) + " or --dtype f32");
    }
    w.AddTensor(t.name, t.dtype, t.shape);
    total_bytes += t.size_bytes();
  }
  RETURN_IF_ERROR(w.Begin(o.out_path));

  // Shaping constants (see the header): channel 0 holds bias_value in every position.
  const double bias_value = 0.5 * std::sqrt(static_cast<double>(c.dim));
  const double rms = std::sqrt((bias_value * bias_value + (c.dim - 1)) / c.dim);
  const double x0 = bias_value / rms;  // channel 0 after RMSNorm
  const double noise = std::sqrt(std::max(1.0, c.dim - x0 * x0) / c.dim);  // std of the rest

  const float residual_scale = 1.0f / std::sqrt(2.0f * c.n_layers);
  std::vector<float> row;         // [cols] f32
  std::vector<std::byte> packed;  // [RowBytes(dtype, cols)]
  std::vector<float> gate_bias;   // [hidden] channel-0 weight of each gate row
  uint64_t done_bytes = 0;
  for (size_t k = 0; k < tensors.size(); ++k) {
    const TensorInfo& t = tensors[k];
    uint64_t state = o.seed * 0x2545F4914F6CDD1Dull + k * 0x9E3779B97F4A7C15ull + 1;
    const std::string_view n = t.name;
    const bool is_norm = t.shape.size() == 1;
    const bool is_embd = n == "token_embd.weight";
    const bool is_residual_out =
        n.ends_with("attn_output.weight") || n.ends_with("ffn_down.weight");
    const bool is_gate = n.ends_with("ffn_gate.weight");
    float scale = is_embd ? 1.0f : 1.0f / std::sqrt(static_cast<float>(t.cols()));
    if (is_residual_out) scale *= residual_scale;
    if (is_gate && shape_relu) {
      const std::vector<float> p =
          SynthFireProbabilities(c.hidden_dim, o.fire_rate, o.hot_skew, state ^ 0xABCDEFull);
      gate_bias.resize(c.hidden_dim);
      for (uint32_t i = 0; i < c.hidden_dim; ++i) {
        gate_bias[i] = static_cast<float>(InverseNormalCdf(p[i]) * noise / x0);
      }
    }
    row.resize(t.cols());
    packed.resize(RowBytes(t.dtype, t.cols()));
    for (uint64_t r = 0; r < t.rows(); ++r) {
      for (float& x : row) x = is_norm ? 1.0f : Normal(state) * scale;
      if (shape_relu) {
        if (is_embd) row[0] = static_cast<float>(bias_value);
        if (is_residual_out && r == 0) std::fill(row.begin(), row.end(), 0.0f);
        if (is_gate) row[0] = gate_bias[r];
      }
      RETURN_IF_ERROR(QuantizeRow(t.dtype, row, packed));
      RETURN_IF_ERROR(w.Append(packed));
    }
    done_bytes += t.size_bytes();
    if (o.progress) o.progress(done_bytes, total_bytes, t.name);
  }
  return w.Finish();
}

}  // namespace flashlm::layout
