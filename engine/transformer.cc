#include "engine/transformer.h"

#include <algorithm>
#include <cmath>
#include <numbers>
#include <string>

#include "engine/kernels.h"

namespace flashlm::engine {
namespace {

// Inverse frequency of rotary pair i (of head_dim/2), after the config's scaling.
float RopeFrequency(const layout::ModelConfig& c, uint32_t i) {
  float freq = 1.0f / std::pow(c.rope_theta, static_cast<float>(2 * i) / c.head_dim);
  const layout::RopeScaling& s = c.rope_scaling;
  switch (s.type) {
    case layout::RopeScalingType::kNone:
      break;
    case layout::RopeScalingType::kLinear:
      freq /= s.factor;
      break;
    case layout::RopeScalingType::kLlama3: {
      const float old_len = static_cast<float>(s.original_max_position);
      const float low_wavelen = old_len / s.low_freq_factor;
      const float high_wavelen = old_len / s.high_freq_factor;
      const float wavelen = 2.0f * std::numbers::pi_v<float> / freq;
      if (wavelen < high_wavelen) {
        // high frequency: unchanged
      } else if (wavelen > low_wavelen) {
        freq /= s.factor;
      } else {
        const float smooth =
            (old_len / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
        freq = (1.0f - smooth) * freq / s.factor + smooth * freq;
      }
      break;
    }
  }
  return freq;
}

}  // namespace

Result<std::unique_ptr<Transformer>> Transformer::Create(WeightStore& weights, ThreadPool& pool,
                                                         const TransformerOptions& options) {
  std::unique_ptr<Transformer> t(new Transformer(weights, pool));
  const layout::ModelConfig& c = weights.config();
  t->config_ = c;
  uint32_t model_max = c.max_seq_len;
  if (model_max == 0) return InvalidArgumentError("model declares no maximum context");
  t->max_context_ = options.max_context == 0 ? model_max : options.max_context;
  if (t->max_context_ > model_max) {
    return InvalidArgumentError("context " + std::to_string(t->max_context_) +
                                " exceeds the model's maximum " + std::to_string(model_max));
  }
  if (options.max_batch == 0) return InvalidArgumentError("max_batch must be positive");
  t->max_batch_ = std::min(options.max_batch, t->max_context_);
  t->all_logits_ = options.all_logits;
  t->q_dim_ = c.n_heads * c.head_dim;
  t->kv_dim_ = c.n_kv_heads * c.head_dim;
  const uint64_t b = t->max_batch_;
  t->x_.assign(b * c.dim, 0.0f);
  t->xb_.assign(b * std::max(c.dim, t->q_dim_), 0.0f);
  t->q_.assign(b * t->q_dim_, 0.0f);
  t->k_.assign(b * t->kv_dim_, 0.0f);
  t->v_.assign(b * t->kv_dim_, 0.0f);
  t->att_out_.assign(b * t->q_dim_, 0.0f);
  t->proj_.assign(b * c.dim, 0.0f);
  t->hb_.assign(b * c.hidden_dim, 0.0f);
  t->hb2_.assign(b * c.hidden_dim, 0.0f);
  t->scores_.assign(uint64_t{pool.size()} * t->max_context_, 0.0f);
  t->logits_.assign((options.all_logits ? b : 1) * c.vocab_size, 0.0f);
  const uint64_t cache = uint64_t{c.n_layers} * t->max_context_ * t->kv_dim_;
  t->key_cache_.assign(cache, 0.0f);
  t->value_cache_.assign(cache, 0.0f);
  const uint32_t half = c.head_dim / 2;
  t->rope_cos_.resize(uint64_t{t->max_context_} * half);
  t->rope_sin_.resize(uint64_t{t->max_context_} * half);
  for (uint32_t i = 0; i < half; ++i) {
    const float freq = RopeFrequency(c, i);
    for (uint32_t p = 0; p < t->max_context_; ++p) {
      const float angle = static_cast<float>(p) * freq;
      t->rope_cos_[uint64_t{p} * half + i] = std::cos(angle);
      t->rope_sin_[uint64_t{p} * half + i] = std::sin(angle);
    }
  }
  const uint32_t widest = std::max({c.dim, c.hidden_dim, t->q_dim_});
  const uint64_t scratch_bytes = MatMulScratchBytes(widest, t->max_batch_) + 64;
  t->scratch_ = std::make_unique<std::byte[]>(scratch_bytes);
  const uint64_t misalign = reinterpret_cast<uintptr_t>(t->scratch_.get()) % 64;
  const uint64_t skip = misalign ? 64 - misalign : 0;
  t->scratch_span_ = ByteSpan(t->scratch_.get() + skip, scratch_bytes - skip);
  return t;
}

void Transformer::Rope(float* v, uint32_t n_heads, uint32_t pos) const {
  const uint32_t hd = config_.head_dim, half = hd / 2;
  const float* cs = rope_cos_.data() + uint64_t{pos} * half;
  const float* sn = rope_sin_.data() + uint64_t{pos} * half;
  for (uint32_t h = 0; h < n_heads; ++h) {
    float* head = v + uint64_t{h} * hd;
    for (uint32_t i = 0; i < half; ++i) {
      const float a = head[2 * i], b = head[2 * i + 1];
      head[2 * i] = a * cs[i] - b * sn[i];
      head[2 * i + 1] = a * sn[i] + b * cs[i];
    }
  }
}

// Causal attention for the n tokens of the batch at positions pos..pos+n-1, whose K/V are
// already in the cache. Work items are (token, head) pairs; each thread has its own score row.
void Transformer::Attention(uint32_t layer, uint32_t n, uint32_t pos) {
  const layout::ModelConfig& c = config_;
  const uint32_t hd = c.head_dim, group = c.n_heads / c.n_kv_heads;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  const float* kc = key_cache_.data() + uint64_t{layer} * max_context_ * kv_dim_;
  const float* vc = value_cache_.data() + uint64_t{layer} * max_context_ * kv_dim_;
  pool_.ParallelFor(uint64_t{n} * c.n_heads, 1, [&](uint64_t begin, uint64_t end, uint32_t th) {
    float* scores = scores_.data() + uint64_t{th} * max_context_;
    for (uint64_t item = begin; item < end; ++item) {
      const uint32_t t = static_cast<uint32_t>(item / c.n_heads);
      const uint32_t h = static_cast<uint32_t>(item % c.n_heads);
      const uint32_t kvh = h / group;
      const uint32_t len = pos + t + 1;
      const float* q = q_.data() + uint64_t{t} * q_dim_ + uint64_t{h} * hd;
      for (uint32_t p = 0; p < len; ++p) {
        scores[p] = DotF32(q, kc + uint64_t{p} * kv_dim_ + uint64_t{kvh} * hd, hd) * scale;
      }
      Softmax(std::span<float>(scores, len));
      float* out = att_out_.data() + uint64_t{t} * q_dim_ + uint64_t{h} * hd;
      std::fill(out, out + hd, 0.0f);
      for (uint32_t p = 0; p < len; ++p) {
        AxpyF32(scores[p], vc + uint64_t{p} * kv_dim_ + uint64_t{kvh} * hd, out, hd);
      }
    }
  });
}

Result<std::span<const float>> Transformer::Forward(std::span<const int32_t> tokens, uint32_t pos) {
  const layout::ModelConfig& c = config_;
  const uint32_t n = static_cast<uint32_t>(tokens.size());
  if (n == 0) return InvalidArgumentError("Forward: empty batch");
  if (n > max_batch_) return InvalidArgumentError("Forward: batch larger than max_batch");
  if (uint64_t{pos} + n > max_context_) {
    return InvalidArgumentError("Forward: position beyond the context of " +
                                std::to_string(max_context_));
  }
  for (uint32_t t = 0; t < n; ++t) {
    if (tokens[t] < 0 || static_cast<uint32_t>(tokens[t]) >= c.vocab_size) {
      return InvalidArgumentError("Forward: token id out of range");
    }
    RETURN_IF_ERROR(weights_.EmbedToken(static_cast<uint32_t>(tokens[t]),
                                        std::span<float>(x_.data() + uint64_t{t} * c.dim, c.dim)));
  }
  const bool relu = c.activation == layout::Activation::kRelu;
  for (uint32_t l = 0; l < c.n_layers; ++l) {
    ASSIGN_OR_RETURN(LayerWeights w, weights_.AcquireLayer(l));
    // Attention block.
    for (uint32_t t = 0; t < n; ++t) {
      RmsNorm(std::span<const float>(x_.data() + uint64_t{t} * c.dim, c.dim), w.attn_norm,
              c.norm_eps, std::span<float>(xb_.data() + uint64_t{t} * c.dim, c.dim));
    }
    MatMul(w.wq, xb_, n, q_, scratch_span_, pool_);
    MatMul(w.wk, xb_, n, k_, scratch_span_, pool_);
    MatMul(w.wv, xb_, n, v_, scratch_span_, pool_);
    float* kc = key_cache_.data() + uint64_t{l} * max_context_ * kv_dim_;
    float* vc = value_cache_.data() + uint64_t{l} * max_context_ * kv_dim_;
    for (uint32_t t = 0; t < n; ++t) {
      Rope(q_.data() + uint64_t{t} * q_dim_, c.n_heads, pos + t);
      Rope(k_.data() + uint64_t{t} * kv_dim_, c.n_kv_heads, pos + t);
      std::copy_n(k_.data() + uint64_t{t} * kv_dim_, kv_dim_, kc + uint64_t{pos + t} * kv_dim_);
      std::copy_n(v_.data() + uint64_t{t} * kv_dim_, kv_dim_, vc + uint64_t{pos + t} * kv_dim_);
    }
    Attention(l, n, pos);
    MatMul(w.wo, att_out_, n, proj_, scratch_span_, pool_);
    for (uint64_t i = 0; i < uint64_t{n} * c.dim; ++i) x_[i] += proj_[i];
    // FFN block: act(gate x) * (up x), then down.
    for (uint32_t t = 0; t < n; ++t) {
      RmsNorm(std::span<const float>(x_.data() + uint64_t{t} * c.dim, c.dim), w.ffn_norm,
              c.norm_eps, std::span<float>(xb_.data() + uint64_t{t} * c.dim, c.dim));
    }
    if (w.ffn != nullptr) {  // out-of-core bundles: the store computes the FFN
      RETURN_IF_ERROR(w.ffn->Forward(l, std::span<const float>(xb_.data(), uint64_t{n} * c.dim), n,
                                     std::span<float>(proj_.data(), uint64_t{n} * c.dim)));
    } else {
      MatMul(w.gate, xb_, n, hb_, scratch_span_, pool_);
      MatMul(w.up, xb_, n, hb2_, scratch_span_, pool_);
      SwiGlu(std::span<float>(hb_.data(), uint64_t{n} * c.hidden_dim),
             std::span<const float>(hb2_.data(), uint64_t{n} * c.hidden_dim), relu);
      if (ffn_observer_ != nullptr) {
        ffn_observer_->OnFfnActivations(
            l, std::span<const float>(hb_.data(), uint64_t{n} * c.hidden_dim), n);
      }
      MatMul(w.down, hb_, n, proj_, scratch_span_, pool_);
    }
    for (uint64_t i = 0; i < uint64_t{n} * c.dim; ++i) x_[i] += proj_[i];
    weights_.ReleaseLayer(l);
  }
  // Final norm and classifier: every token with all_logits, else the last one only.
  const uint32_t first = all_logits_ ? 0 : n - 1;
  const uint32_t rows = n - first;
  for (uint32_t t = first; t < n; ++t) {
    RmsNorm(std::span<const float>(x_.data() + uint64_t{t} * c.dim, c.dim), weights_.output_norm(),
            c.norm_eps, std::span<float>(xb_.data() + uint64_t{t - first} * c.dim, c.dim));
  }
  if (ClassifierProvider* streamed = weights_.classifier_provider()) {
    RETURN_IF_ERROR(streamed->Logits(std::span<const float>(xb_.data(), uint64_t{rows} * c.dim),
                                     rows, logits_));
  } else {
    MatMul(weights_.classifier(), xb_, rows, logits_, scratch_span_, pool_);
  }
  return std::span<const float>(logits_.data(), uint64_t{rows} * c.vocab_size);
}

}  // namespace flashlm::engine
