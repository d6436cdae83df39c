// Test-only helpers for the engine suites: an in-memory layout::Checkpoint, a reader for the
// llama2.c legacy checkpoint (so the engine can be tested before and independently of the
// layout readers), and an independent scalar forward pass in the style of llama2.c's reference
// algorithm, written for these tests.
#ifndef FLASHLM_TESTS_ENGINE_TEST_MODELS_H_
#define FLASHLM_TESTS_ENGINE_TEST_MODELS_H_

#include <cmath>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "engine/kernels.h"
#include "engine/thread_pool.h"
#include "layout/checkpoint.h"
#include "layout/dtype.h"
#include "storage/check.h"

namespace flashlm::engine::testing {

class MemoryCheckpoint : public layout::Checkpoint {
 public:
  std::string_view format() const override { return "memory"; }
  const layout::ModelConfig& config() const override { return config_; }
  const layout::Vocab& vocab() const override { return vocab_; }
  const std::vector<layout::TensorInfo>& tensors() const override { return infos_; }
  Status ReadTensor(const layout::TensorInfo& info, ByteSpan out) override {
    auto it = data_.find(info.name);
    if (it == data_.end()) return NotFoundError(info.name);
    if (out.size() != it->second.size()) return InvalidArgumentError("size");
    std::memcpy(out.data(), it->second.data(), out.size());
    return Status::Ok();
  }
  // Adds an f32 tensor stored as `dtype`.
  void Add(const std::string& name, std::vector<uint64_t> shape, const std::vector<float>& values,
           layout::DType dtype = layout::DType::kF32) {
    layout::TensorInfo info{name, dtype, shape};
    std::vector<std::byte> bytes(info.size_bytes());
    const uint64_t cols = info.cols(), rb = layout::RowBytes(dtype, cols);
    for (uint64_t r = 0; r < info.rows(); ++r) {
      CHECK_OK(layout::QuantizeRow(dtype, std::span<const float>(values.data() + r * cols, cols),
                                   ByteSpan(bytes.data() + r * rb, rb)));
    }
    data_[name] = std::move(bytes);
    infos_.push_back(info);
  }
  layout::ModelConfig config_;
  layout::Vocab vocab_;
  std::vector<layout::TensorInfo> infos_;
  std::map<std::string, std::vector<std::byte>> data_;
};

// f32 weights of a model, in llama2.c's order and names, for the scalar reference.
struct RefWeights {
  layout::ModelConfig c;
  std::vector<float> emb, rms_att, wq, wk, wv, wo, rms_ffn, w1, w2, w3, rms_final, wcls;
};

// Reads a llama2.c legacy checkpoint (7 x int32 header, f32 weights).
inline bool ReadLlama2c(const std::string& path, RefWeights& w) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return false;
  int32_t h[7];
  in.read(reinterpret_cast<char*>(h), sizeof(h));
  auto& c = w.c;
  c.dim = h[0];
  c.hidden_dim = h[1];
  c.n_layers = h[2];
  c.n_heads = h[3];
  c.n_kv_heads = h[4];
  const bool shared = h[5] > 0;
  c.vocab_size = std::abs(h[5]);
  c.max_seq_len = h[6];
  c.head_dim = c.dim / c.n_heads;
  c.tied_embeddings = shared;
  const uint64_t L = c.n_layers, d = c.dim, kv = uint64_t{c.n_kv_heads} * c.head_dim,
                 hid = c.hidden_dim;
  auto rd = [&](std::vector<float>& v, uint64_t n) {
    v.resize(n);
    in.read(reinterpret_cast<char*>(v.data()), n * 4);
  };
  rd(w.emb, c.vocab_size * d);
  rd(w.rms_att, L * d);
  rd(w.wq, L * d * d);
  rd(w.wk, L * kv * d);
  rd(w.wv, L * kv * d);
  rd(w.wo, L * d * d);
  rd(w.rms_ffn, L * d);
  rd(w.w1, L * hid * d);
  rd(w.w2, L * d * hid);
  rd(w.w3, L * hid * d);
  rd(w.rms_final, d);
  std::vector<float> skip;
  rd(skip, uint64_t{c.max_seq_len} * c.head_dim);  // freq_cis_real, imag
  if (shared)
    w.wcls = w.emb;
  else
    rd(w.wcls, c.vocab_size * d);
  return static_cast<bool>(in);
}

// Random weights for a given shape (seeded), scaled to keep activations tame.
// A small LLaMA shape for kernel-level tests: dim 48, hidden 100 (not a multiple of 32, so
// block rows are zero-padded), 3 layers, 6 heads of 8 (2 KV heads with gqa), vocab 67.
inline layout::ModelConfig SmallConfig(bool gqa, bool tied, layout::Activation act) {
  layout::ModelConfig c;
  c.dim = 48;
  c.hidden_dim = 100;
  c.n_layers = 3;
  c.n_heads = 6;
  c.n_kv_heads = gqa ? 2 : 6;
  c.head_dim = 8;
  c.vocab_size = 67;
  c.max_seq_len = 40;
  c.tied_embeddings = tied;
  c.activation = act;
  return c;
}

inline RefWeights RandomWeights(const layout::ModelConfig& c, uint32_t seed) {
  RefWeights w;
  w.c = c;
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  const uint64_t L = c.n_layers, d = c.dim, q = uint64_t{c.n_heads} * c.head_dim,
                 kv = uint64_t{c.n_kv_heads} * c.head_dim, hid = c.hidden_dim;
  auto fill = [&](std::vector<float>& v, uint64_t n, float scale, float base = 0.0f) {
    v.resize(n);
    for (float& x : v) x = base + scale * nd(rng);
  };
  fill(w.emb, c.vocab_size * d, 1.0f);
  fill(w.rms_att, L * d, 0.1f, 1.0f);
  fill(w.wq, L * q * d, 1.0f / std::sqrt(float(d)));
  fill(w.wk, L * kv * d, 1.0f / std::sqrt(float(d)));
  fill(w.wv, L * kv * d, 1.0f / std::sqrt(float(d)));
  fill(w.wo, L * d * q, 1.0f / std::sqrt(float(q)));
  fill(w.rms_ffn, L * d, 0.1f, 1.0f);
  fill(w.w1, L * hid * d, 1.0f / std::sqrt(float(d)));
  fill(w.w2, L * d * hid, 1.0f / std::sqrt(float(hid)));
  fill(w.w3, L * hid * d, 1.0f / std::sqrt(float(d)));
  fill(w.rms_final, d, 0.1f, 1.0f);
  if (c.tied_embeddings)
    w.wcls = w.emb;
  else
    fill(w.wcls, c.vocab_size * d, 1.0f / std::sqrt(float(d)));
  return w;
}

// The same weights as a canonical Checkpoint, matrices stored as `dtype`.
inline std::unique_ptr<MemoryCheckpoint> ToCheckpoint(const RefWeights& w, layout::DType dtype) {
  auto ck = std::make_unique<MemoryCheckpoint>();
  const auto& c = w.c;
  ck->config_ = c;
  const uint64_t d = c.dim, q = uint64_t{c.n_heads} * c.head_dim,
                 kv = uint64_t{c.n_kv_heads} * c.head_dim, hid = c.hidden_dim;
  auto slice = [](const std::vector<float>& v, uint64_t l, uint64_t n) {
    return std::vector<float>(v.begin() + l * n, v.begin() + (l + 1) * n);
  };
  ck->Add("token_embd.weight", {c.vocab_size, d}, w.emb, dtype);
  ck->Add("output_norm.weight", {d}, w.rms_final);
  if (!c.tied_embeddings) ck->Add("output.weight", {c.vocab_size, d}, w.wcls, dtype);
  for (uint32_t l = 0; l < c.n_layers; ++l) {
    const std::string p = "blk." + std::to_string(l) + ".";
    ck->Add(p + "attn_norm.weight", {d}, slice(w.rms_att, l, d));
    ck->Add(p + "attn_q.weight", {q, d}, slice(w.wq, l, q * d), dtype);
    ck->Add(p + "attn_k.weight", {kv, d}, slice(w.wk, l, kv * d), dtype);
    ck->Add(p + "attn_v.weight", {kv, d}, slice(w.wv, l, kv * d), dtype);
    ck->Add(p + "attn_output.weight", {d, q}, slice(w.wo, l, d * q), dtype);
    ck->Add(p + "ffn_norm.weight", {d}, slice(w.rms_ffn, l, d));
    ck->Add(p + "ffn_gate.weight", {hid, d}, slice(w.w1, l, hid * d), dtype);
    ck->Add(p + "ffn_up.weight", {hid, d}, slice(w.w3, l, hid * d), dtype);
    ck->Add(p + "ffn_down.weight", {d, hid}, slice(w.w2, l, d * hid), dtype);
  }
  return ck;
}

// Scalar reference forward pass, one token at a time, in double-free plain float arithmetic,
// following the published llama2.c algorithm (RMSNorm, interleaved RoPE with theta 10000^(-i/hd),
// causal softmax attention with GQA, SwiGLU). Holds its own KV cache.
class ReferenceModel {
 public:
  explicit ReferenceModel(const RefWeights& w) : w_(w) {
    const auto& c = w.c;
    kv_ = uint64_t{c.n_kv_heads} * c.head_dim;
    kcache_.assign(uint64_t{c.n_layers} * c.max_seq_len * kv_, 0.0f);
    vcache_ = kcache_;
  }
  // Optional: called with each layer's FFN hidden vector act(gate x) * (up x) (hidden_dim values).
  std::function<void(uint32_t layer, const std::vector<float>& h)> on_ffn;

  std::vector<float> Forward(int token, int pos) {
    const auto& c = w_.c;
    const int d = c.dim, hd = c.head_dim, q_dim = c.n_heads * hd, hid = c.hidden_dim;
    const int group = c.n_heads / c.n_kv_heads;
    std::vector<float> x(w_.emb.begin() + uint64_t(token) * d,
                         w_.emb.begin() + uint64_t(token + 1) * d);
    std::vector<float> xb(d), q(q_dim), k(kv_), v(kv_), att(pos + 1), o(q_dim), h1(hid), h3(hid);
    auto rms = [&](const std::vector<float>& in, const float* g, std::vector<float>& out) {
      float ss = 0;
      for (int i = 0; i < d; ++i) ss += in[i] * in[i];
      ss = 1.0f / std::sqrt(ss / d + c.norm_eps);
      for (int i = 0; i < d; ++i) out[i] = g[i] * (ss * in[i]);
    };
    auto mv = [](const float* W, const float* in, float* out, int rows, int cols) {
      for (int r = 0; r < rows; ++r) {
        float s = 0;
        for (int j = 0; j < cols; ++j) s += W[uint64_t(r) * cols + j] * in[j];
        out[r] = s;
      }
    };
    auto rope = [&](float* vec, int n) {
      for (int i = 0; i < n; i += 2) {
        const int j = i % hd;
        const float freq = 1.0f / std::pow(c.rope_theta, j / float(hd));
        const float val = pos * freq, fc = std::cos(val), fs = std::sin(val);
        const float a = vec[i], b = vec[i + 1];
        vec[i] = a * fc - b * fs;
        vec[i + 1] = a * fs + b * fc;
      }
    };
    for (uint32_t l = 0; l < c.n_layers; ++l) {
      rms(x, &w_.rms_att[uint64_t(l) * d], xb);
      mv(&w_.wq[uint64_t(l) * q_dim * d], xb.data(), q.data(), q_dim, d);
      mv(&w_.wk[uint64_t(l) * kv_ * d], xb.data(), k.data(), kv_, d);
      mv(&w_.wv[uint64_t(l) * kv_ * d], xb.data(), v.data(), kv_, d);
      rope(q.data(), q_dim);
      rope(k.data(), kv_);
      float* kc = &kcache_[(uint64_t(l) * c.max_seq_len + pos) * kv_];
      float* vc = &vcache_[(uint64_t(l) * c.max_seq_len + pos) * kv_];
      std::copy(k.begin(), k.end(), kc);
      std::copy(v.begin(), v.end(), vc);
      for (uint32_t h = 0; h < c.n_heads; ++h) {
        const int kvh = h / group;
        float mx = -1e30f;
        for (int t = 0; t <= pos; ++t) {
          const float* kt = &kcache_[(uint64_t(l) * c.max_seq_len + t) * kv_ + kvh * hd];
          float s = 0;
          for (int i = 0; i < hd; ++i) s += q[h * hd + i] * kt[i];
          att[t] = s / std::sqrt(float(hd));
          mx = std::max(mx, att[t]);
        }
        float sum = 0;
        for (int t = 0; t <= pos; ++t) sum += (att[t] = std::exp(att[t] - mx));
        for (int i = 0; i < hd; ++i) o[h * hd + i] = 0;
        for (int t = 0; t <= pos; ++t) {
          const float* vt = &vcache_[(uint64_t(l) * c.max_seq_len + t) * kv_ + kvh * hd];
          for (int i = 0; i < hd; ++i) o[h * hd + i] += att[t] / sum * vt[i];
        }
      }
      std::vector<float> proj(d);
      mv(&w_.wo[uint64_t(l) * d * q_dim], o.data(), proj.data(), d, q_dim);
      for (int i = 0; i < d; ++i) x[i] += proj[i];
      rms(x, &w_.rms_ffn[uint64_t(l) * d], xb);
      mv(&w_.w1[uint64_t(l) * hid * d], xb.data(), h1.data(), hid, d);
      mv(&w_.w3[uint64_t(l) * hid * d], xb.data(), h3.data(), hid, d);
      for (int i = 0; i < hid; ++i) {
        const float g = h1[i];
        const float a = c.activation == layout::Activation::kRelu ? std::max(g, 0.0f)
                                                                  : g / (1.0f + std::exp(-g));
        h1[i] = a * h3[i];
      }
      if (on_ffn) on_ffn(l, h1);
      mv(&w_.w2[uint64_t(l) * d * hid], h1.data(), proj.data(), d, hid);
      for (int i = 0; i < d; ++i) x[i] += proj[i];
    }
    rms(x, w_.rms_final.data(), xb);
    std::vector<float> logits(c.vocab_size);
    mv(w_.wcls.data(), xb.data(), logits.data(), c.vocab_size, d);
    return logits;
  }

 private:
  const RefWeights& w_;
  uint64_t kv_;
  std::vector<float> kcache_, vcache_;
};

// Empty when MatMul over `m` gives, bit for bit, MatMul over `plain` (the same matrix as stored
// row-major) for 1 and for 4 random tokens; else which token count differed.
inline std::string ProductsDiffer(const MatrixView& m, const MatrixView& plain, std::mt19937& rng,
                                  ThreadPool& pool) {
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (uint32_t tokens : {1u, 4u}) {
    std::vector<float> x(uint64_t{tokens} * m.cols);
    for (float& v : x) v = nd(rng);
    std::vector<std::byte> scratch(MatMulScratchBytes(m.cols, tokens));
    std::vector<float> want(uint64_t{tokens} * m.rows), got(want.size());
    MatMul(plain, x, tokens, want, scratch, pool);
    MatMul(m, x, tokens, got, scratch, pool);
    if (std::memcmp(got.data(), want.data(), got.size() * sizeof(float)) != 0) {
      return "products differ for " + std::to_string(tokens) + " tokens";
    }
  }
  return "";
}

}  // namespace flashlm::engine::testing

#endif  // FLASHLM_TESTS_ENGINE_TEST_MODELS_H_
