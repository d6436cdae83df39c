#include "engine/activation_counter.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>

#include "engine/generator.h"
#include "storage/check.h"

namespace flashlm::engine {
namespace {

// |x| as a sort key; NaN ranks below every number so that the comparator stays a strict order
// (std::nth_element misbehaves otherwise) and a NaN never counts as a top neuron.
inline float Magnitude(float x) { return std::isnan(x) ? -1.0f : std::fabs(x); }

}  // namespace

FiringOptions DefaultFiringOptions(const layout::ModelConfig& config) {
  FiringOptions o;
  o.rule = config.activation == layout::Activation::kRelu ? FiringRule::kNonZero
                                                          : FiringRule::kTopFraction;
  return o;
}

ActivationCounter::ActivationCounter(uint32_t n_layers, uint32_t hidden_dim,
                                     const FiringOptions& options)
    : n_layers_(n_layers), hidden_dim_(hidden_dim), options_(options) {}

Result<std::unique_ptr<ActivationCounter>> ActivationCounter::Create(uint32_t n_layers,
                                                                     uint32_t hidden_dim,
                                                                     const FiringOptions& options) {
  if (n_layers == 0 || hidden_dim == 0) {
    return InvalidArgumentError("activation counter: no layers or no FFN neurons");
  }
  if (options.rule == FiringRule::kTopFraction &&
      !(options.top_fraction > 0.0 && options.top_fraction <= 1.0)) {
    return InvalidArgumentError("top fraction must be in (0, 1]");
  }
  if (options.rule == FiringRule::kThreshold &&
      !(std::isfinite(options.threshold) && options.threshold >= 0.0f)) {
    return InvalidArgumentError("firing threshold must be a finite number >= 0");
  }
  std::unique_ptr<ActivationCounter> c(new ActivationCounter(n_layers, hidden_dim, options));
  if (options.rule == FiringRule::kTopFraction) {
    const long k = std::lround(options.top_fraction * hidden_dim);
    c->top_k_ = static_cast<uint32_t>(std::clamp<long>(k, 1, hidden_dim));
    c->order_.resize(hidden_dim);
    std::iota(c->order_.begin(), c->order_.end(), 0u);
  }
  c->counts_.assign(uint64_t{n_layers} * hidden_dim, 0);
  c->tokens_.assign(n_layers, 0);
  return c;
}

std::span<const uint64_t> ActivationCounter::counts(uint32_t layer) const {
  CHECK_LT(layer, n_layers_);
  return std::span<const uint64_t>(counts_).subspan(uint64_t{layer} * hidden_dim_, hidden_dim_);
}

void ActivationCounter::OnFfnActivations(uint32_t layer, std::span<const float> h,
                                         uint32_t n_tokens) {
  CHECK_LT(layer, n_layers_);
  CHECK_EQ(h.size(), uint64_t{n_tokens} * hidden_dim_);
  uint64_t* counts = counts_.data() + uint64_t{layer} * hidden_dim_;
  for (uint32_t t = 0; t < n_tokens; ++t) {
    const float* row = h.data() + uint64_t{t} * hidden_dim_;
    switch (options_.rule) {
      case FiringRule::kNonZero:
        for (uint32_t i = 0; i < hidden_dim_; ++i) counts[i] += row[i] != 0.0f;
        break;
      case FiringRule::kThreshold:
        for (uint32_t i = 0; i < hidden_dim_; ++i) {
          counts[i] += std::fabs(row[i]) > options_.threshold;
        }
        break;
      case FiringRule::kTopFraction: {
        // (magnitude descending, index ascending) is a strict total order, so the first top_k_
        // after nth_element are the same set whatever order_ held before.
        auto before = [row](uint32_t a, uint32_t b) {
          const float ma = Magnitude(row[a]), mb = Magnitude(row[b]);
          return ma > mb || (ma == mb && a < b);
        };
        if (top_k_ < hidden_dim_) {
          std::nth_element(order_.begin(), order_.begin() + top_k_, order_.end(), before);
        }
        for (uint32_t j = 0; j < top_k_; ++j) ++counts[order_[j]];
        break;
      }
    }
  }
  tokens_[layer] += n_tokens;
}

Result<layout::ActivationStats> ActivationCounter::Frequencies() const {
  layout::ActivationStats stats;
  stats.layers.resize(n_layers_);
  for (uint32_t l = 0; l < n_layers_; ++l) {
    if (tokens_[l] == 0) {
      return FailedPreconditionError("no FFN activations observed in layer " + std::to_string(l));
    }
    const std::span<const uint64_t> c = counts(l);
    std::vector<float>& f = stats.layers[l];
    f.resize(hidden_dim_);
    for (uint32_t i = 0; i < hidden_dim_; ++i) {
      f[i] = static_cast<float>(static_cast<double>(c[i]) / static_cast<double>(tokens_[l]));
    }
  }
  return stats;
}

Status ForwardInWindows(Transformer& model, std::span<const int32_t> tokens, uint32_t ctx) {
  if (tokens.empty()) return InvalidArgumentError("no tokens to run");
  if (ctx == 0 || ctx > model.max_context()) {
    return InvalidArgumentError("window must be in [1, " + std::to_string(model.max_context()) +
                                "] tokens");
  }
  for (size_t w0 = 0; w0 < tokens.size(); w0 += ctx) {
    const size_t wlen = std::min<size_t>(ctx, tokens.size() - w0);
    RETURN_IF_ERROR(Prefill(model, tokens.subspan(w0, wlen), 0).status());
  }
  return Status::Ok();
}

}  // namespace flashlm::engine
