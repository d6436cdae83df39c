#include "engine/predictor_trainer.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "engine/kernels.h"
#include "storage/aligned_buffer.h"
#include "storage/check.h"

namespace flashlm::engine {
namespace {

float Sigmoid(float v) { return 1.0f / (1.0f + std::exp(-v)); }

// One Adam step over `w` with gradient `g` (moments m, v; t: the step, from 1).
void AdamStep(std::vector<float>& w, const std::vector<float>& g, std::vector<float>& m,
              std::vector<float>& v, float lr, uint64_t t, ThreadPool& pool) {
  constexpr float kB1 = 0.9f, kB2 = 0.999f, kEps = 1e-8f;
  const float c1 = 1.0f - std::pow(kB1, static_cast<float>(t));
  const float c2 = 1.0f - std::pow(kB2, static_cast<float>(t));
  pool.ParallelFor(w.size(), 4096, [&](uint64_t b, uint64_t e, uint32_t) {
    for (uint64_t i = b; i < e; ++i) {
      m[i] = kB1 * m[i] + (1 - kB1) * g[i];
      v[i] = kB2 * v[i] + (1 - kB2) * g[i] * g[i];
      w[i] -= lr * (m[i] / c1) / (std::sqrt(v[i] / c2) + kEps);
    }
  });
}

ConstByteSpan Bytes(const std::vector<float>& v) {
  return ConstByteSpan(reinterpret_cast<const std::byte*>(v.data()), v.size() * sizeof(float));
}

}  // namespace

uint64_t PredictorTrainer::TokenBytes(uint32_t n_layers, uint32_t dim, uint32_t hidden, bool relu) {
  const uint64_t labels = relu ? (hidden + 63) / 64 * 8 : uint64_t{hidden} * sizeof(float);
  return uint64_t{n_layers} * (uint64_t{dim} * sizeof(float) + labels);
}

Result<std::unique_ptr<PredictorTrainer>> PredictorTrainer::Create(uint32_t n_layers, uint32_t dim,
                                                                   uint32_t hidden, bool relu,
                                                                   uint64_t tokens_max) {
  if (n_layers == 0 || dim == 0 || hidden == 0 || tokens_max == 0) {
    return InvalidArgumentError("predictor trainer: zero size");
  }
  std::unique_ptr<PredictorTrainer> t(
      new PredictorTrainer(n_layers, dim, hidden, relu, tokens_max));
  t->words_ = (hidden + 63) / 64;
  t->tokens_.assign(n_layers, 0);
  t->pending_.assign(n_layers, 0);
  t->x_.resize(n_layers);
  if (relu) {
    t->bits_.resize(n_layers);
  } else {
    t->mag_.resize(n_layers);
  }
  for (uint32_t l = 0; l < n_layers; ++l) {  // capacity only: pages are touched as tokens come
    t->x_[l].reserve(tokens_max * dim);
    if (relu) {
      t->bits_[l].reserve(tokens_max * t->words_);
    } else {
      t->mag_[l].reserve(tokens_max * hidden);
    }
  }
  return t;
}

void PredictorTrainer::OnFfnInput(uint32_t layer, std::span<const float> x, uint32_t n_tokens) {
  CHECK_LT(layer, n_layers_);
  const uint64_t take = std::min<uint64_t>(n_tokens, tokens_max_ - tokens_[layer]);
  pending_[layer] = take;
  x_[layer].insert(x_[layer].end(), x.begin(), x.begin() + take * dim_);
}

void PredictorTrainer::OnFfnGate(uint32_t layer, std::span<const float> g, uint32_t) {
  if (!relu_) return;
  for (uint64_t t = 0; t < pending_[layer]; ++t) {
    const size_t at = bits_[layer].size();
    bits_[layer].resize(at + words_, 0);
    for (uint32_t i = 0; i < hidden_; ++i) {
      if (g[t * hidden_ + i] > 0) bits_[layer][at + i / 64] |= uint64_t{1} << (i % 64);
    }
  }
}

void PredictorTrainer::OnFfnActivations(uint32_t layer, std::span<const float> h, uint32_t) {
  if (!relu_) {
    for (uint64_t k = 0; k < pending_[layer] * hidden_; ++k) mag_[layer].push_back(std::fabs(h[k]));
  }
  tokens_[layer] += pending_[layer];
  pending_[layer] = 0;
}

void PredictorTrainer::Labels(uint32_t layer, uint64_t t, float fire_cut, uint8_t* out) const {
  if (relu_) {
    const uint64_t* w = bits_[layer].data() + t * words_;
    for (uint32_t i = 0; i < hidden_; ++i) out[i] = (w[i / 64] >> (i % 64)) & 1;
  } else {
    const float* m = mag_[layer].data() + t * hidden_;
    for (uint32_t i = 0; i < hidden_; ++i) out[i] = m[i] > fire_cut;
  }
}

Result<layout::FfnPredictor> PredictorTrainer::Train(const PredictorTrainOptions& o,
                                                     ThreadPool& pool, Report* report) const {
  if (o.rank == 0 || o.rank > dim_) {
    return InvalidArgumentError("--rank must be in [1, " + std::to_string(dim_) +
                                "] (the model's dim)");
  }
  if (!(o.fire_fraction > 0 && o.fire_fraction < 1)) {
    return InvalidArgumentError("--fire-fraction must be in (0, 1)");
  }
  if (o.epochs == 0 || o.epochs > 10000)
    return InvalidArgumentError("--epochs must be in [1, 10000]");
  if (!(o.learning_rate > 0 && o.learning_rate < 10)) {
    return InvalidArgumentError("--lr must be in (0, 10)");
  }
  if (!(o.heldout > 0 && o.heldout < 1)) return InvalidArgumentError("--heldout must be in (0, 1)");
  if (o.batch == 0) return InvalidArgumentError("predictor batch must be positive");
  const uint64_t n = tokens();
  const uint64_t held = std::max<uint64_t>(1, static_cast<uint64_t>(n * o.heldout));
  if (n < held + 2 || held < 2) {
    return InvalidArgumentError("too few tokens to train and hold out (" + std::to_string(n) +
                                "); give a longer --text");
  }
  const uint64_t train = n - held;
  const uint32_t R = o.rank, D = dim_, H = hidden_, B = o.batch;

  layout::FfnPredictor p;
  p.dim = D;
  p.hidden = H;
  p.rank = R;
  p.relu = relu_;
  p.fire_fraction = relu_ ? 0.0f : o.fire_fraction;
  p.tokens = n;
  if (report != nullptr) {
    *report = Report();
    report->train_tokens = train;
    report->heldout_tokens = held;
  }
  std::mt19937_64 rng(o.seed);
  std::vector<float> z(uint64_t{B} * R), logits(uint64_t{B} * H), g(uint64_t{B} * H),
      dz(uint64_t{B} * R);
  std::vector<uint8_t> y(uint64_t{B} * H);
  const uint64_t scratch_bytes = MatMulScratchBytes(std::max(D, R), B);
  ASSIGN_OR_RETURN(storage::AlignedBuffer scratch,
                   storage::AlignedBuffer::Allocate(std::max<uint64_t>(scratch_bytes, 64), 64));
  const ByteSpan scratch_span = scratch.span().first(scratch_bytes);
  std::vector<uint64_t> order(train);

  for (uint32_t l = 0; l < n_layers_; ++l) {
    layout::FfnPredictorLayer pl;
    // The SiLU labels' cut: the (1 - fire_fraction) quantile of |h| over the training tokens.
    if (!relu_) {
      std::vector<float> m(mag_[l].begin(), mag_[l].begin() + train * H);
      const uint64_t k = std::min<uint64_t>(
          m.size() - 1, static_cast<uint64_t>((1.0 - o.fire_fraction) * m.size()));
      std::nth_element(m.begin(), m.begin() + k, m.end());
      pl.fire_cut = std::max(0.0f, m[k]);
    }
    // Start: A, B small random; bias the training fire rate of each neuron as a logit.
    std::normal_distribution<float> normal(0.0f, 1.0f);
    pl.a.resize(uint64_t{R} * D);
    pl.b.resize(uint64_t{H} * R);
    pl.bias.assign(H, 0.0f);
    for (float& v : pl.a) v = normal(rng) / std::sqrt(static_cast<float>(D));
    for (float& v : pl.b) v = 0.1f * normal(rng) / std::sqrt(static_cast<float>(R));
    {
      std::vector<uint64_t> fires(H, 0);
      std::vector<uint8_t> lab(H);
      for (uint64_t t = 0; t < train; ++t) {
        Labels(l, t, pl.fire_cut, lab.data());
        for (uint32_t i = 0; i < H; ++i) fires[i] += lab[i];
      }
      for (uint32_t i = 0; i < H; ++i) {
        const double r = std::clamp((fires[i] + 0.5) / (train + 1.0), 1e-4, 1 - 1e-4);
        pl.bias[i] = static_cast<float>(std::log(r / (1 - r)));
      }
    }
    std::vector<float> ga(pl.a.size()), gb(pl.b.size()), gbias(H);
    std::vector<float> ma(pl.a.size()), va(pl.a.size()), mb(pl.b.size()), vb(pl.b.size()), mbias(H),
        vbias(H);
    std::vector<float> xb(uint64_t{B} * D);
    // Forward for tokens ids[0..m): logits = B (A x) + bias.
    auto forward = [&](const uint64_t* ids, uint32_t m) {
      for (uint32_t t = 0; t < m; ++t) {
        std::copy_n(x_[l].data() + ids[t] * D, D, xb.data() + uint64_t{t} * D);
      }
      MatMul(MatrixView{layout::DType::kF32, R, D, Bytes(pl.a)}, xb, m, z, scratch_span, pool);
      MatMul(MatrixView{layout::DType::kF32, H, R, Bytes(pl.b)}, z, m, logits, scratch_span, pool);
      for (uint32_t t = 0; t < m; ++t) {
        for (uint32_t i = 0; i < H; ++i) logits[uint64_t{t} * H + i] += pl.bias[i];
      }
    };
    uint64_t step = 0;
    double loss = 0;
    std::iota(order.begin(), order.end(), 0);
    for (uint32_t epoch = 0; epoch < o.epochs; ++epoch) {
      std::shuffle(order.begin(), order.end(), rng);
      loss = 0;
      for (uint64_t s = 0; s < train; s += B) {
        const uint32_t m = static_cast<uint32_t>(std::min<uint64_t>(B, train - s));
        forward(order.data() + s, m);
        for (uint32_t t = 0; t < m; ++t)
          Labels(l, order[s + t], pl.fire_cut, y.data() + uint64_t{t} * H);
        // Mean BCE over the batch; its gradient on the logits is (sigmoid - label) / m.
        for (uint64_t k = 0; k < uint64_t{m} * H; ++k) {
          const float q = Sigmoid(logits[k]);
          g[k] = (q - y[k]) / m;
          loss -= y[k] ? std::log(std::max(q, 1e-7f)) : std::log(std::max(1 - q, 1e-7f));
        }
        // dbias, dB = G^T Z, split over neurons.
        pool.ParallelFor(H, 64, [&](uint64_t b, uint64_t e, uint32_t) {
          for (uint64_t i = b; i < e; ++i) {
            float db = 0;
            float* gbi = gb.data() + i * R;
            std::fill(gbi, gbi + R, 0.0f);
            for (uint32_t t = 0; t < m; ++t) {
              const float gi = g[uint64_t{t} * H + i];
              db += gi;
              if (gi != 0) AxpyF32(gi, z.data() + uint64_t{t} * R, gbi, R);
            }
            gbias[i] = db;
          }
        });
        // dZ = G B, split over tokens.
        pool.ParallelFor(m, 1, [&](uint64_t b, uint64_t e, uint32_t) {
          for (uint64_t t = b; t < e; ++t) {
            float* d = dz.data() + t * R;
            std::fill(d, d + R, 0.0f);
            for (uint32_t i = 0; i < H; ++i) {
              const float gi = g[t * H + i];
              if (gi != 0) AxpyF32(gi, pl.b.data() + uint64_t{i} * R, d, R);
            }
          }
        });
        // dA = dZ^T X, split over rank rows.
        pool.ParallelFor(R, 1, [&](uint64_t b, uint64_t e, uint32_t) {
          for (uint64_t r = b; r < e; ++r) {
            float* d = ga.data() + r * D;
            std::fill(d, d + D, 0.0f);
            for (uint32_t t = 0; t < m; ++t) {
              AxpyF32(dz[uint64_t{t} * R + r], xb.data() + uint64_t{t} * D, d, D);
            }
          }
        });
        ++step;
        AdamStep(pl.a, ga, ma, va, o.learning_rate, step, pool);
        AdamStep(pl.b, gb, mb, vb, o.learning_rate, step, pool);
        AdamStep(pl.bias, gbias, mbias, vbias, o.learning_rate, step, pool);
      }
      loss /= static_cast<double>(train) * H;
    }
    // Held-out quality at each reported cut.
    constexpr size_t kCuts = std::size(kPredictorReportCuts);
    uint64_t tp[kCuts] = {}, pred[kCuts] = {}, pos = 0;
    std::vector<uint64_t> ids(B);
    for (uint64_t s = train; s < n; s += B) {
      const uint32_t m = static_cast<uint32_t>(std::min<uint64_t>(B, n - s));
      for (uint32_t t = 0; t < m; ++t) ids[t] = s + t;
      forward(ids.data(), m);
      for (uint32_t t = 0; t < m; ++t) Labels(l, s + t, pl.fire_cut, y.data() + uint64_t{t} * H);
      for (uint64_t k = 0; k < uint64_t{m} * H; ++k) {
        const float q = Sigmoid(logits[k]);
        pos += y[k];
        for (size_t c = 0; c < kCuts; ++c) {
          const bool hit = q > kPredictorReportCuts[c];
          pred[c] += hit;
          tp[c] += hit && y[k];
        }
      }
    }
    std::vector<PredictorQuality> q(kCuts);
    for (size_t c = 0; c < kCuts; ++c) {
      q[c].cut = kPredictorReportCuts[c];
      q[c].recall = pos ? static_cast<double>(tp[c]) / pos : 1.0;
      q[c].precision = pred[c] ? static_cast<double>(tp[c]) / pred[c] : 1.0;
      q[c].predicted_fraction = static_cast<double>(pred[c]) / (static_cast<double>(held) * H);
      if (kPredictorReportCuts[c] == 0.5f) {
        pl.recall = static_cast<float>(q[c].recall);
        pl.precision = static_cast<float>(q[c].precision);
        pl.predicted_fraction = static_cast<float>(q[c].predicted_fraction);
      }
    }
    for (const std::vector<float>* v : {&pl.a, &pl.b, &pl.bias}) {
      for (float f : *v) {
        if (!std::isfinite(f)) {
          return InvalidArgumentError("training diverged in layer " + std::to_string(l) +
                                      " (a weight is not finite); lower --lr");
        }
      }
    }
    if (report != nullptr) {
      report->layers.push_back(std::move(q));
      report->train_loss.push_back(loss);
    }
    p.layers.push_back(std::move(pl));
  }
  return p;
}

}  // namespace flashlm::engine
