#include "engine/transformer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <numbers>
#include <string>

#include "engine/classifier_stream.h"
#include "engine/kernels.h"
#include "engine/neuron_source.h"
#include "storage/check.h"

namespace flashlm::engine {
namespace {

// Bundles per BundleFfnKernel::Accumulate call: bounds the kernel's scratch, independent of how
// the store batches them.
constexpr uint32_t kKernelChunk = 256;

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

uint32_t ContextOf(const layout::ModelConfig& c, const TransformerOptions& o) {
  return o.max_context == 0 ? c.max_seq_len : o.max_context;
}

}  // namespace

WeightsShape WeightsShape::Of(WeightStore& weights) {
  WeightsShape s;
  if (NeuronSource* n = weights.neurons()) s.bundles = n->geometry();
  if (ClassifierStream* c = weights.classifier_stream()) s.classifier_block_rows = c->rows_max();
  return s;
}

std::string_view FfnSparsityName(FfnSparsity s) {
  switch (s) {
    case FfnSparsity::kAuto:
      return "auto";
    case FfnSparsity::kDense:
      return "dense";
    case FfnSparsity::kRelu:
      return "relu";
    case FfnSparsity::kThreshold:
      return "threshold";
    case FfnSparsity::kPredictor:
      return "predictor";
  }
  return "?";
}

namespace {

// kAuto resolved; kRelu where it cannot apply is left for Create to refuse.
FfnSparsity ResolveSparsity(const layout::ModelConfig& c, FfnSparsity s, const WeightsShape& shape) {
  if (s != FfnSparsity::kAuto) return s;
  return shape.bundles && !shape.bundles->has_gate() && c.activation == layout::Activation::kRelu
             ? FfnSparsity::kRelu
             : FfnSparsity::kDense;
}

}  // namespace

// Offsets of every buffer in the arena (see the member comments in the header for shapes).
struct Transformer::Layout {
  ArenaLayout arena;
  uint32_t batch = 0, logit_rows = 0;
  uint64_t x = 0, xb = 0, q = 0, k = 0, v = 0, att_out = 0, proj = 0, hb = 0, hb2 = 0, scores = 0,
           selected = 0, logits = 0, block_out = 0, rope_cos = 0, rope_sin = 0, scratch = 0,
           positions = 0, sequences = 0, seq_first = 0, seq_next = 0, last_logit = 0, fired = 0,
           item_scores = 0, item_selected = 0, item_chosen = 0, needed = 0, act_pos = 0,
           importance = 0, imp_row = 0, order = 0, keep_mask = 0, act_seq = 0, cand_pos = 0,
           cand_seq = 0, lazy_rows = 0, pred_z = 0, pred_scores = 0;
  uint64_t scratch_bytes = 0;
  bool hb_used = false, hb2_used = false;
  uint64_t kernel_bytes = 0;
};

namespace {

// DRAM the predictor's layers hold (f32, or f16 matrices).
uint64_t PredictorBytes(const layout::FfnPredictor& p) {
  return p.layers.size() * p.LayerBytes(!p.layers.empty() && p.layers[0].f16());
}

}  // namespace

Transformer::Layout Transformer::MakeLayout(const layout::ModelConfig& c,
                                            const TransformerOptions& o, uint32_t threads,
                                            const WeightsShape& shape, uint32_t ctx) {
  Layout l;
  const uint64_t b = std::min(o.max_batch, ctx);
  const uint64_t q_dim = uint64_t{c.n_heads} * c.head_dim;
  const uint64_t kv_dim = uint64_t{c.n_kv_heads} * c.head_dim;
  l.batch = static_cast<uint32_t>(b);
  l.logit_rows = static_cast<uint32_t>(o.all_logits ? b : std::min<uint64_t>(o.max_sequences, b));
  ArenaLayout& a = l.arena;
  l.x = a.AddFloats(b * c.dim);
  l.xb = a.AddFloats(b * std::max<uint64_t>(c.dim, q_dim));
  l.q = a.AddFloats(b * q_dim);
  l.k = a.AddFloats(b * kv_dim);
  l.v = a.AddFloats(b * kv_dim);
  l.att_out = a.AddFloats(b * q_dim);
  l.proj = a.AddFloats(b * c.dim);
  l.hb_used = !shape.bundles || o.observe_ffn;
  l.hb2_used = !shape.bundles || o.observe_ffn;  // with bundles: the observed gate
  if (l.hb_used) l.hb = a.AddFloats(b * c.hidden_dim);
  if (l.hb2_used) l.hb2 = a.AddFloats(b * c.hidden_dim);
  l.scores = a.AddFloats(uint64_t{threads} * (c.n_heads / c.n_kv_heads) * ctx);
  l.selected = a.Add(uint64_t{threads} * ctx * sizeof(uint32_t));
  l.logits = a.AddFloats(uint64_t{l.logit_rows} * c.vocab_size);
  if (shape.classifier_block_rows > 0) {
    l.block_out = a.AddFloats(uint64_t{l.logit_rows} * shape.classifier_block_rows);
  }
  l.rope_cos = a.AddFloats(uint64_t{ctx} * (c.head_dim / 2));
  l.rope_sin = a.AddFloats(uint64_t{ctx} * (c.head_dim / 2));
  const uint32_t widest = std::max({c.dim, c.hidden_dim, static_cast<uint32_t>(q_dim)});
  l.scratch_bytes = MatMulScratchBytes(widest, l.batch);
  l.scratch = a.Add(l.scratch_bytes);
  l.positions = a.Add(b * sizeof(uint32_t));
  l.sequences = a.Add(b * sizeof(uint32_t));
  l.seq_first = a.Add(uint64_t{o.max_sequences} * sizeof(uint32_t));
  l.seq_next = a.Add(uint64_t{o.max_sequences} * sizeof(uint32_t));
  l.last_logit = a.Add(sizeof(uint32_t));
  if (o.selective_fetch || o.select_pages) {
    l.item_scores = a.AddFloats(uint64_t{c.n_heads} * ctx);
    l.item_selected = a.Add(uint64_t{c.n_heads} * ctx * sizeof(uint32_t));
    l.item_chosen = a.Add(uint64_t{c.n_heads} * sizeof(uint32_t));
    l.needed = a.Add(ctx);
  }
  if (o.lazy.enabled()) {
    l.act_pos = a.Add(b * sizeof(uint32_t));
    l.act_seq = a.Add(b * sizeof(uint32_t));
    l.cand_pos = a.Add(b * sizeof(uint32_t));
    l.cand_seq = a.Add(b * sizeof(uint32_t));
    l.lazy_rows = a.Add(uint64_t{l.logit_rows} * sizeof(uint32_t));
    l.importance = a.AddFloats(ctx);
    l.imp_row = a.AddFloats(ctx);
    l.order = a.Add(uint64_t{ctx} * sizeof(uint32_t));
    l.keep_mask = a.Add(ctx);
  }
  const FfnSparsity sparsity = ResolveSparsity(c, o.sparsity, shape);
  if (shape.bundles && (sparsity == FfnSparsity::kRelu || sparsity == FfnSparsity::kThreshold ||
                        sparsity == FfnSparsity::kPredictor)) {
    l.fired = a.Add(uint64_t{c.hidden_dim} * sizeof(uint32_t));
  }
  if (shape.bundles && (sparsity == FfnSparsity::kPredictor || o.lookahead) && o.ffn_predictor) {
    l.pred_z = a.AddFloats(b * o.ffn_predictor->rank);
    l.pred_scores = a.AddFloats(b * c.hidden_dim);
  }
  if (shape.bundles) {
    l.kernel_bytes = BundleFfnKernel::ScratchBytes(*shape.bundles, c.hidden_dim, l.batch,
                                                   std::min(kKernelChunk, c.hidden_dim), threads);
  }
  return l;
}

uint64_t Transformer::BytesNeeded(const layout::ModelConfig& c, const TransformerOptions& o,
                                  uint32_t threads, const WeightsShape& shape) {
  const Layout l = MakeLayout(c, o, threads, shape, ContextOf(c, o));
  const uint64_t aux =
      o.lazy.enabled() ? cache::LazyAuxCache::BytesNeeded(c.dim, ContextOf(c, o), o.max_sequences)
                       : 0;
  return l.arena.resident_bytes() + l.kernel_bytes + aux + PredictorBytesNeeded(o);
}

uint64_t Transformer::PredictorBytesNeeded(const TransformerOptions& o) {
  // The predictor's weights, shared with the caller but held for the Transformer's life.
  return (o.sparsity == FfnSparsity::kPredictor || o.lookahead) && o.ffn_predictor
             ? PredictorBytes(*o.ffn_predictor)
             : 0;
}

uint64_t Transformer::resident_bytes() const {
  return arena_.size_bytes() + (ffn_kernel_ ? ffn_kernel_->resident_bytes() : 0) +
         (aux_ ? aux_->resident_bytes() : 0) + (predictor_ ? PredictorBytes(*predictor_) : 0);
}

Result<std::unique_ptr<Transformer>> Transformer::Create(WeightStore& weights, ThreadPool& pool,
                                                         const TransformerOptions& options,
                                                         KvCache* kv) {
  std::unique_ptr<Transformer> t(new Transformer(weights, pool));
  const layout::ModelConfig& c = weights.config();
  t->config_ = c;
  const uint32_t model_max = c.max_seq_len;
  if (model_max == 0) return InvalidArgumentError("model declares no maximum context");
  t->max_context_ = ContextOf(c, options);
  if (t->max_context_ > model_max) {
    return InvalidArgumentError("context " + std::to_string(t->max_context_) +
                                " exceeds the model's maximum " + std::to_string(model_max));
  }
  if (options.max_batch == 0) return InvalidArgumentError("max_batch must be positive");
  if (options.max_sequences == 0) return InvalidArgumentError("max_sequences must be positive");
  if (options.lazy.enabled()) {
    RETURN_IF_ERROR(ValidateLazy(options.lazy, c.n_layers));
  }
  if (kv == nullptr) {
    ASSIGN_OR_RETURN(t->own_kv_,
                     FlatKvCache::Create(c, t->max_context_, options.max_sequences));
    kv = t->own_kv_.get();
  }
  if (kv->max_positions() < t->max_context_ || kv->max_sequences() < options.max_sequences ||
      kv->kv_dim() != c.n_kv_heads * c.head_dim) {
    return InvalidArgumentError("KV cache smaller than the context and sequences asked for");
  }
  t->kv_ = kv;
  const WeightsShape shape = WeightsShape::Of(weights);
  t->sparsity_ = ResolveSparsity(c, options.sparsity, shape);
  if (t->sparsity_ == FfnSparsity::kRelu) {
    if (c.activation != layout::Activation::kRelu) {
      return InvalidArgumentError("--sparsity relu is exact only for ReLU models; this one uses " +
                                  std::string(c.activation == layout::Activation::kSilu
                                                  ? "SiLU"
                                                  : "another activation"));
    }
    if (!shape.bundles || shape.bundles->has_gate()) {
      return InvalidArgumentError(
          "--sparsity relu needs a store with gate+up-down bundles (flashlm repack --bundle "
          "gate+up-down): with gate-up-down bundles every bundle is read to learn its gate");
    }
  }
  if (t->sparsity_ == FfnSparsity::kThreshold) {
    if (!shape.bundles || shape.bundles->has_gate()) {
      return InvalidArgumentError(
          "--sparsity threshold needs a store with gate+up-down bundles (flashlm repack --bundle "
          "gate+up-down): with gate-up-down bundles every bundle is read to learn its gate");
    }
    if (options.ffn_thresholds.size() != c.n_layers) {
      return InvalidArgumentError("--sparsity threshold: " +
                                  std::to_string(options.ffn_thresholds.size()) +
                                  " thresholds for " + std::to_string(c.n_layers) + " layers");
    }
    for (float cut : options.ffn_thresholds) {
      if (!std::isfinite(cut) || cut < 0) {
        return InvalidArgumentError("--sparsity threshold: thresholds must be finite and >= 0");
      }
    }
    t->thresholds_ = options.ffn_thresholds;
  }
  const bool predicts = t->sparsity_ == FfnSparsity::kPredictor;
  if (options.lookahead && !(shape.bundles && (predicts || t->sparsity_ == FfnSparsity::kRelu ||
                                               t->sparsity_ == FfnSparsity::kThreshold))) {
    return InvalidArgumentError(
        "--lookahead needs a store and a sparse FFN (--sparsity relu, threshold or predictor)");
  }
  if (predicts || options.lookahead) {
    const std::string what = predicts ? "--sparsity predictor" : "--lookahead";
    if (!shape.bundles) {
      return InvalidArgumentError(what + " needs a store (flashlm repack the model)");
    }
    const layout::FfnPredictor* p = options.ffn_predictor.get();
    if (p == nullptr || p->layers.size() != c.n_layers || p->dim != c.dim ||
        p->hidden != c.hidden_dim || p->rank == 0 || p->rank > c.dim) {
      return InvalidArgumentError(
          what + ": no predictor, or one whose shape disagrees with the model");
    }
    for (const layout::FfnPredictorLayer& pl : p->layers) {
      const uint64_t a_size = pl.f16() ? pl.a_f16.size() : pl.a.size();
      const uint64_t b_size = pl.f16() ? pl.b_f16.size() : pl.b.size();
      if (a_size != uint64_t{p->rank} * p->dim || b_size != uint64_t{p->hidden} * p->rank ||
          pl.bias.size() != p->hidden || pl.f16() != p->layers[0].f16()) {
        return InvalidArgumentError(what + ": a layer's matrices disagree with it");
      }
    }
    // A probability cut as a score (logit) cut.
    auto logit = [](float cut) {
      return cut <= 0.0f   ? -std::numeric_limits<float>::infinity()
             : cut >= 1.0f ? std::numeric_limits<float>::infinity()
                           : std::log(cut / (1.0f - cut));
    };
    if (!(options.predictor_cut >= 0.0f && options.predictor_cut <= 1.0f)) {
      return InvalidArgumentError("--predictor-cut must be in [0, 1]");
    }
    if (!(options.lookahead_cut >= 0.0f && options.lookahead_cut <= 1.0f)) {
      return InvalidArgumentError("--lookahead must be in [0, 1]");
    }
    t->predictor_ = options.ffn_predictor;
    t->predictor_logit_cut_ = logit(options.predictor_cut);
    t->lookahead_ = options.lookahead;
    t->lookahead_logit_cut_ = logit(options.lookahead_cut);
  }
  const Layout l = MakeLayout(c, options, pool.size(), shape, t->max_context_);
  t->max_batch_ = l.batch;
  t->logit_rows_max_ = l.logit_rows;
  t->all_logits_ = options.all_logits;
  t->q_dim_ = c.n_heads * c.head_dim;
  t->kv_dim_ = c.n_kv_heads * c.head_dim;
  ASSIGN_OR_RETURN(t->arena_, Arena::Create(l.arena));
  const uint64_t b = l.batch, ctx = t->max_context_, half = c.head_dim / 2;
  Arena& a = t->arena_;
  t->x_ = a.Floats(l.x, b * c.dim);
  t->xb_ = a.Floats(l.xb, b * std::max(c.dim, t->q_dim_));
  t->q_ = a.Floats(l.q, b * t->q_dim_);
  t->k_ = a.Floats(l.k, b * t->kv_dim_);
  t->v_ = a.Floats(l.v, b * t->kv_dim_);
  t->att_out_ = a.Floats(l.att_out, b * t->q_dim_);
  t->proj_ = a.Floats(l.proj, b * c.dim);
  if (l.hb_used) t->hb_ = a.Floats(l.hb, b * c.hidden_dim);
  if (l.hb2_used) t->hb2_ = a.Floats(l.hb2, b * c.hidden_dim);
  t->scores_ = a.Floats(l.scores, uint64_t{pool.size()} * (c.n_heads / c.n_kv_heads) * ctx);
  t->selected_ = {reinterpret_cast<uint32_t*>(a.Bytes(l.selected, 0).data()),
                  uint64_t{pool.size()} * ctx};
  t->logits_ = a.Floats(l.logits, uint64_t{l.logit_rows} * c.vocab_size);
  if (shape.classifier_block_rows > 0) {
    t->block_out_ = a.Floats(l.block_out, uint64_t{l.logit_rows} * shape.classifier_block_rows);
  }
  t->rope_cos_ = a.Floats(l.rope_cos, ctx * half);
  t->rope_sin_ = a.Floats(l.rope_sin, ctx * half);
  t->scratch_ = a.Bytes(l.scratch, l.scratch_bytes);
  auto u32 = [&a](uint64_t offset, uint64_t count) {
    return std::span<uint32_t>(reinterpret_cast<uint32_t*>(a.Bytes(offset, 0).data()), count);
  };
  t->positions_ = u32(l.positions, b);
  t->sequences_ = u32(l.sequences, b);
  t->seq_first_ = u32(l.seq_first, options.max_sequences);
  t->seq_next_ = u32(l.seq_next, options.max_sequences);
  t->last_logit_ = u32(l.last_logit, 1);
  if (l.fired != 0) t->fired_ = u32(l.fired, c.hidden_dim);
  if (t->predictor_) {
    t->pred_z_ = a.Floats(l.pred_z, b * t->predictor_->rank);
    t->pred_scores_ = a.Floats(l.pred_scores, b * c.hidden_dim);
  }
  t->selective_fetch_ = options.selective_fetch;
  t->select_pages_ = options.select_pages;
  t->select_shared_ = options.select_pages && options.select_pages_shared;
  if (options.selective_fetch || options.select_pages) {
    t->item_scores_ = a.Floats(l.item_scores, uint64_t{c.n_heads} * ctx);
    t->item_selected_ = u32(l.item_selected, uint64_t{c.n_heads} * ctx);
    t->item_chosen_ = u32(l.item_chosen, c.n_heads);
    t->needed_ = {reinterpret_cast<uint8_t*>(a.Bytes(l.needed, 0).data()), ctx};
  }
  for (uint32_t i = 0; i < half; ++i) {
    const float freq = RopeFrequency(c, i);
    for (uint32_t p = 0; p < ctx; ++p) {
      const float angle = static_cast<float>(p) * freq;
      t->rope_cos_[uint64_t{p} * half + i] = std::cos(angle);
      t->rope_sin_[uint64_t{p} * half + i] = std::sin(angle);
    }
  }
  if (options.lazy.enabled()) {
    ASSIGN_OR_RETURN(t->aux_, cache::LazyAuxCache::Create(c.n_layers, c.dim, t->max_context_,
                                                          options.max_sequences));
    t->act_pos_ = u32(l.act_pos, b);
    t->act_seq_ = u32(l.act_seq, b);
    t->cand_pos_ = u32(l.cand_pos, b);
    t->cand_seq_ = u32(l.cand_seq, b);
    t->lazy_rows_ = u32(l.lazy_rows, l.logit_rows);
    t->importance_ = a.Floats(l.importance, ctx);
    t->imp_row_ = a.Floats(l.imp_row, ctx);
    t->order_ = u32(l.order, ctx);
    t->keep_mask_ = {reinterpret_cast<uint8_t*>(a.Bytes(l.keep_mask, 0).data()), ctx};
    t->lazy_fraction_.assign(c.n_layers, 0.0f);
    const std::vector<uint32_t> layers =
        options.lazy.layers.empty() ? DefaultLazyLayers(c.n_layers) : options.lazy.layers;
    const float m = static_cast<float>(layers.size());
    for (size_t i = 0; i < layers.size(); ++i) {
      t->lazy_fraction_[layers[i]] =
          i + 1 == layers.size()
              ? options.lazy.keep
              : 1.0f - (1.0f - options.lazy.keep) * static_cast<float>(i + 1) / m;
    }
    t->layer_tokens_.assign(c.n_layers, 0);
  }
  t->token_layer_flops_ = 2 * (uint64_t{c.dim} * t->q_dim_ * 2 + uint64_t{c.dim} * t->kv_dim_ * 2 +
                               uint64_t{c.dim} * c.hidden_dim * 3);
  if (shape.bundles) {
    ASSIGN_OR_RETURN(t->ffn_kernel_,
                     BundleFfnKernel::Create(*shape.bundles, c.hidden_dim, l.batch,
                                             std::min(kKernelChunk, c.hidden_dim),
                                             c.activation == layout::Activation::kRelu, pool));
  }
  return t;
}

Status Transformer::set_page_selection(const PageSelectionPolicy* selection) {
  if (selection != nullptr && (!select_pages_ || kv_->bound_page_tokens() == 0)) {
    return FailedPreconditionError(
        "page selection needs TransformerOptions::select_pages and a KV cache keeping K page "
        "bounds (--kv-select pages over a paged KV cache)");
  }
  page_selection_ = selection;
  return Status::Ok();
}

Status Transformer::set_ffn_observer(FfnObserver* observer) {
  if (observer != nullptr && hb_.empty()) {
    return FailedPreconditionError(
        "observing a neuron-bundle FFN needs TransformerOptions::observe_ffn");
  }
  ffn_observer_ = observer;
  return Status::Ok();
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

// Phase 1: scores[p] = softmax(q . k_p / sqrt(head_dim)) over positions p < len.
void Transformer::AttentionScores(uint32_t layer, uint32_t seq, uint32_t len, const float* q,
                                  uint32_t kvh, float* scores) const {
  const uint32_t hd = config_.head_dim;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  const bool masking = Masking();
  for (uint32_t p = 0; p < len;) {
    if (masking && !aux_->present(layer, seq, p)) {  // never written: its K page may not be
      ++p;                                           // resident (K spilled) or exist at all
      continue;
    }
    const KvRows rows = kv_->Keys(layer, seq, p, len - p);
    KvDotRun(q, rows, kvh * hd, hd, scale, scores + p);
    p += rows.count;
  }
  if (masking) {  // positions this layer never computed take no part (LazyOptions)
    for (uint32_t p = 0; p < len; ++p) {
      if (!aux_->present(layer, seq, p)) scores[p] = -std::numeric_limits<float>::infinity();
    }
  }
  Softmax(std::span<float>(scores, len));
}

// Phase 3: out = sum of scores[p] * v_p over the selected positions (every p < len when `all`).
void Transformer::AttentionValues(uint32_t layer, uint32_t seq, uint32_t len,
                                  const float* scores, std::span<const uint32_t> selected,
                                  bool all, uint32_t kvh, float* out) const {
  const uint32_t hd = config_.head_dim;
  std::fill(out, out + hd, 0.0f);
  if (all) {
    const bool masking = Masking();
    for (uint32_t p = 0; p < len;) {
      if (masking && !aux_->present(layer, seq, p)) {  // never written: skipped (its page may not
        ++p;                                           // exist in a paged cache)
        continue;
      }
      const KvRows rows = kv_->Values(layer, seq, p, len - p);
      if (!masking) {
        KvAxpyRun(scores + p, rows, kvh * hd, out, hd);
      } else {
        for (uint32_t i = 0; i < rows.count; ++i) {
          if (!aux_->present(layer, seq, p + i)) continue;
          KvAxpy(scores[p + i], rows, i, kvh * hd, out, hd);
        }
      }
      p += rows.count;
    }
    return;
  }
  // Renormalised over the kept positions (see AttentionPolicy).
  float mass = 0;
  for (uint32_t p : selected) mass += scores[p];
  const float inv = 1.0f / mass;
  for (uint32_t p : selected) {
    const KvRows row = kv_->Values(layer, seq, p, 1);
    KvAxpy(scores[p] * inv, row, 0, kvh * hd, out, hd);
  }
}

// K or V rows per block of AttentionGroup: 64 rows of a 128-value f32 head are 32 KiB, within
// L1 while the group's heads pass over them.
constexpr uint32_t kGroupBlockRows = 64;

void Transformer::AttentionGroup(uint32_t layer, uint32_t seq, uint32_t len, const float* q,
                                 uint32_t kvh, uint32_t group, float* scores, float* out) const {
  const uint32_t hd = config_.head_dim;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  // The rows [i, i + count) of a run, as a run of their own.
  const auto block = [](const KvRows& run, uint32_t i, uint32_t count) {
    return KvRows{run.data + uint64_t{i} * run.stride_bytes, run.stride_bytes, count, run.dtype};
  };
  for (uint32_t p = 0; p < len;) {
    const KvRows rows = kv_->Keys(layer, seq, p, len - p);
    for (uint32_t i = 0; i < rows.count; i += kGroupBlockRows) {
      const KvRows b = block(rows, i, std::min(kGroupBlockRows, rows.count - i));
      for (uint32_t h = 0; h < group; ++h) {
        KvDotRun(q + uint64_t{h} * hd, b, kvh * hd, hd, scale,
                 scores + uint64_t{h} * max_context_ + p + i);
      }
    }
    p += rows.count;
  }
  for (uint32_t h = 0; h < group; ++h) {
    Softmax(std::span<float>(scores + uint64_t{h} * max_context_, len));
  }
  std::fill(out, out + uint64_t{group} * hd, 0.0f);
  for (uint32_t p = 0; p < len;) {
    const KvRows rows = kv_->Values(layer, seq, p, len - p);
    for (uint32_t i = 0; i < rows.count; i += kGroupBlockRows) {
      const KvRows b = block(rows, i, std::min(kGroupBlockRows, rows.count - i));
      for (uint32_t h = 0; h < group; ++h) {
        KvAxpyRun(scores + uint64_t{h} * max_context_ + p + i, b, kvh * hd, out + uint64_t{h} * hd,
                  hd);
      }
    }
    p += rows.count;
  }
}

// Positions the layer never computed have probability 0 and rank last: the policy picks one
// only when fewer than its N positions have a non-zero probability. They are dropped (their V
// row does not exist), which changes no sum (a weight of 0), so the selection is the policy's
// top N among the positions the layer holds. Keeping every position stays `len` (exact path).
uint32_t Transformer::DropAbsent(uint32_t layer, uint32_t seq, uint32_t len, uint32_t chosen,
                                 std::span<uint32_t> selected) const {
  if (!Masking() || chosen == len) return chosen;
  uint32_t kept = 0;
  for (uint32_t i = 0; i < chosen; ++i) {
    if (aux_->present(layer, seq, selected[i])) selected[kept++] = selected[i];
  }
  CHECK_GE(kept, 1u);  // the attending token holds its own position
  return kept;
}

// Causal attention for every token of the batch: work items are (token, head) pairs, or, for
// exact attention with grouped-query heads, (token, KV head) pairs (AttentionGroup: the same
// values); each thread has its own score and selection rows.
void Transformer::Attention(uint32_t layer, const TokenBatch& batch) {
  const layout::ModelConfig& c = config_;
  const uint32_t n = static_cast<uint32_t>(batch.positions.size());
  const uint32_t hd = c.head_dim, group = c.n_heads / c.n_kv_heads;
  if (group > 1 && policy_ == nullptr && !Masking()) {  // exact: a KV head's group at a time
    pool_.ParallelFor(uint64_t{n} * c.n_kv_heads, 1,
                      [&](uint64_t begin, uint64_t end, uint32_t th) {
                        float* scores = scores_.data() + uint64_t{th} * group * max_context_;
                        for (uint64_t item = begin; item < end; ++item) {
                          const uint32_t t = static_cast<uint32_t>(item / c.n_kv_heads);
                          const uint32_t kvh = static_cast<uint32_t>(item % c.n_kv_heads);
                          const uint32_t seq = batch.sequences.empty() ? 0 : batch.sequences[t];
                          const uint64_t first = uint64_t{t} * q_dim_ + uint64_t{kvh} * group * hd;
                          AttentionGroup(layer, seq, batch.positions[t] + 1, q_.data() + first, kvh,
                                         group, scores, att_out_.data() + first);
                        }
                      });
    return;
  }
  pool_.ParallelFor(uint64_t{n} * c.n_heads, 1, [&](uint64_t begin, uint64_t end, uint32_t th) {
    float* scores = scores_.data() + uint64_t{th} * max_context_;
    const std::span<uint32_t> selected = selected_.subspan(uint64_t{th} * max_context_, max_context_);
    for (uint64_t item = begin; item < end; ++item) {
      const uint32_t t = static_cast<uint32_t>(item / c.n_heads);
      const uint32_t h = static_cast<uint32_t>(item % c.n_heads);
      const uint32_t seq = batch.sequences.empty() ? 0 : batch.sequences[t];
      const uint32_t len = batch.positions[t] + 1;
      const float* q = q_.data() + uint64_t{t} * q_dim_ + uint64_t{h} * hd;
      AttentionScores(layer, seq, len, q, h / group, scores);
      uint32_t chosen = len;
      if (policy_ != nullptr) {
        chosen = policy_->Select(layer, seq, std::span<const float>(scores, len),
                                 selected.first(len));
        CHECK_GE(chosen, 1u);
        CHECK_LE(chosen, len);
        chosen = DropAbsent(layer, seq, len, chosen, selected);
      }
      float* out = att_out_.data() + uint64_t{t} * q_dim_ + uint64_t{h} * hd;
      AttentionValues(layer, seq, len, scores, selected.first(chosen), chosen == len, h / group,
                      out);
    }
  });
}

// Per token: phase 1 and 2 for every head (in parallel), then the V pages holding any selected
// position are made resident (one batch of reads), then phase 3 for every head.
Status Transformer::AttentionSelective(uint32_t layer, const TokenBatch& batch) {
  const layout::ModelConfig& c = config_;
  const uint32_t n = static_cast<uint32_t>(batch.positions.size());
  const uint32_t hd = c.head_dim, group = c.n_heads / c.n_kv_heads;
  for (uint32_t t = 0; t < n; ++t) {
    const uint32_t seq = batch.sequences.empty() ? 0 : batch.sequences[t];
    const uint32_t len = batch.positions[t] + 1;
    pool_.ParallelFor(c.n_heads, 1, [&](uint64_t begin, uint64_t end, uint32_t) {
      for (uint64_t h = begin; h < end; ++h) {
        float* scores = item_scores_.data() + h * max_context_;
        const float* q = q_.data() + uint64_t{t} * q_dim_ + h * hd;
        AttentionScores(layer, seq, len, q, static_cast<uint32_t>(h) / group, scores);
        const uint32_t chosen = policy_->Select(layer, seq, std::span<const float>(scores, len),
                                                item_selected_.subspan(h * max_context_, len));
        CHECK_GE(chosen, 1u);
        CHECK_LE(chosen, len);
        item_chosen_[h] =
            DropAbsent(layer, seq, len, chosen, item_selected_.subspan(h * max_context_, len));
      }
    });
    std::fill(needed_.begin(), needed_.begin() + len, uint8_t{0});
    for (uint32_t h = 0; h < c.n_heads; ++h) {
      const uint32_t* sel = item_selected_.data() + uint64_t{h} * max_context_;
      for (uint32_t i = 0; i < item_chosen_[h]; ++i) {
        // (every position when the policy kept all of them: only those the layer holds)
        if (!Masking() || aux_->present(layer, seq, sel[i])) needed_[sel[i]] = 1;
      }
    }
    RETURN_IF_ERROR(kv_->FetchValuePositions(layer, seq, len, needed_.first(len)));
    pool_.ParallelFor(c.n_heads, 1, [&](uint64_t begin, uint64_t end, uint32_t) {
      for (uint64_t h = begin; h < end; ++h) {
        const uint32_t chosen = item_chosen_[h];
        float* out = att_out_.data() + uint64_t{t} * q_dim_ + h * hd;
        AttentionValues(layer, seq, len, item_scores_.data() + h * max_context_,
                        item_selected_.subspan(h * max_context_, chosen), chosen == len,
                        static_cast<uint32_t>(h) / group, out);
      }
    });
    kv_->ReleaseValues();
  }
  return Status::Ok();
}

// Per token: every head's page bounds and choice (in parallel); K and V of the union of the
// chosen pages made resident; then per head exact attention over its own pages' positions, in
// position order: the scores packed, softmaxed, and the V rows summed with them. With every page
// chosen these are the same operations on the same values, in the same order, as Attention's.
Status Transformer::AttentionPages(uint32_t layer, const TokenBatch& batch) {
  const layout::ModelConfig& c = config_;
  const uint32_t n = static_cast<uint32_t>(batch.positions.size());  // (active rows when lazy)
  const uint32_t hd = c.head_dim, group = c.n_heads / c.n_kv_heads;
  const uint32_t P = kv_->bound_page_tokens();
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  const bool masking = Masking();
  for (uint32_t t = 0; t < n; ++t) {
    const uint32_t seq = batch.sequences.empty() ? 0 : batch.sequences[t];
    const uint32_t len = batch.positions[t] + 1;
    const uint32_t n_pages = static_cast<uint32_t>(CeilDiv(len, P));
    // With lazy pruning: held[pg] = whether layer `layer` computed any position of page pg. A page
    // it computed none of has no bounds and may have no K/V page at all: its bound is -inf (it
    // ranks last), it is never fetched, and its positions score -inf unread (as Attention's).
    const uint8_t* held = nullptr;
    if (masking) {
      for (uint32_t pg = 0; pg < n_pages; ++pg) {
        uint8_t any = 0;
        for (uint32_t p = pg * P; p < std::min(len, pg * P + P) && any == 0; ++p) {
          any = aux_->present(layer, seq, p) ? 1 : 0;
        }
        keep_mask_[pg] = any;
      }
      held = keep_mask_.data();
    }
    pool_.ParallelFor(c.n_heads, 1, [&](uint64_t begin, uint64_t end, uint32_t) {
      for (uint64_t h = begin; h < end; ++h) {
        float* bounds = item_scores_.data() + h * max_context_;  // [n_pages - 1]
        const float* q = q_.data() + uint64_t{t} * q_dim_ + h * hd;
        const uint64_t off = uint64_t{static_cast<uint32_t>(h) / group} * hd;
        for (uint32_t pg = 0; pg + 1 < n_pages; ++pg) {
          if (held != nullptr && held[pg] == 0) {
            bounds[pg] = -std::numeric_limits<float>::infinity();
            continue;
          }
          const std::span<const float> b = kv_->KeyPageBounds(layer, seq, pg);
          bounds[pg] = KeyPageBound(q, b.data() + off, b.data() + kv_dim_ + off, hd);
        }
        if (select_shared_) continue;  // chosen below, once for every head
        const uint32_t chosen =
            page_selection_->SelectPages(len, n_pages, std::span<const float>(bounds, n_pages - 1),
                                         item_selected_.subspan(h * max_context_, n_pages));
        CHECK_GE(chosen, 1u);
        CHECK_LE(chosen, n_pages);
        item_chosen_[h] = chosen;
      }
    });
    if (select_shared_) {
      // One choice for every head: page p ranks by max over heads h of (bound_h(p) - the best
      // bound_h of any earlier page), i.e. by the largest factor exp(scale x that) its weight
      // could have in some head relative to that head's most promising page. Pages are read
      // whole (every head's K and V), so a shared choice reads exactly the budget's pages.
      float* shared = scores_.data();  // [n_pages - 1]; the per-thread score rows are free here
      std::fill(shared, shared + (n_pages - 1), -std::numeric_limits<float>::infinity());
      for (uint32_t h = 0; h < c.n_heads; ++h) {
        const float* bounds = item_scores_.data() + uint64_t{h} * max_context_;
        float best = -std::numeric_limits<float>::infinity();
        for (uint32_t pg = 0; pg + 1 < n_pages; ++pg) best = std::max(best, bounds[pg]);
        for (uint32_t pg = 0; pg + 1 < n_pages; ++pg) {
          // (a page no position of which the layer computed stays -inf, never -inf - -inf)
          if (bounds[pg] != -std::numeric_limits<float>::infinity()) {
            shared[pg] = std::max(shared[pg], bounds[pg] - best);
          }
        }
      }
      const uint32_t chosen =
          page_selection_->SelectPages(len, n_pages, std::span<const float>(shared, n_pages - 1),
                                       item_selected_.subspan(0, n_pages));
      CHECK_GE(chosen, 1u);
      CHECK_LE(chosen, n_pages);
      for (uint32_t h = 0; h < c.n_heads; ++h) item_chosen_[h] = chosen;
    }
    std::fill(needed_.begin(), needed_.begin() + n_pages, uint8_t{0});
    for (uint32_t h = 0; h < c.n_heads; ++h) {
      const uint32_t* sel =
          item_selected_.data() + (select_shared_ ? 0 : uint64_t{h} * max_context_);
      for (uint32_t i = 0; i < item_chosen_[h]; ++i) {
        if (held == nullptr || held[sel[i]] != 0) needed_[sel[i]] = 1;
      }
      page_stats_.head_pages_selected += item_chosen_[h];
    }
    page_stats_.head_pages_total += uint64_t{n_pages} * c.n_heads;
    page_stats_.pages_total += n_pages;
    for (uint32_t pg = 0; pg < n_pages; ++pg) page_stats_.pages_selected += needed_[pg];
    RETURN_IF_ERROR(kv_->FetchPages(layer, seq, len, needed_.first(n_pages)));
    pool_.ParallelFor(c.n_heads, 1, [&](uint64_t begin, uint64_t end, uint32_t) {
      for (uint64_t h = begin; h < end; ++h) {
        const uint32_t kvh = static_cast<uint32_t>(h) / group;
        const uint32_t* sel = item_selected_.data() + (select_shared_ ? 0 : h * max_context_);
        float* scores = item_scores_.data() + h * max_context_;  // packed, [positions chosen]
        const float* q = q_.data() + uint64_t{t} * q_dim_ + h * hd;
        uint32_t m = 0;
        for (uint32_t i = 0; i < item_chosen_[h]; ++i) {
          const uint32_t first = sel[i] * P, count = std::min(P, len - first);
          if (held != nullptr && held[sel[i]] == 0) {  // nothing written: no page to read
            for (uint32_t r = 0; r < count; ++r) scores[m++] = -std::numeric_limits<float>::infinity();
            continue;
          }
          for (uint32_t p = first; p < first + count;) {
            const KvRows rows = kv_->Keys(layer, seq, p, first + count - p);
            if (!masking) {
              KvDotRun(q, rows, kvh * hd, hd, scale, scores + m);
              m += rows.count;
            } else {
              for (uint32_t r = 0; r < rows.count; ++r) {
                scores[m++] = !aux_->present(layer, seq, p + r)
                                  ? -std::numeric_limits<float>::infinity()
                                  : KvDot(q, rows, r, kvh * hd, hd) * scale;
              }
            }
            p += rows.count;
          }
        }
        Softmax(std::span<float>(scores, m));
        float* out = att_out_.data() + uint64_t{t} * q_dim_ + h * hd;
        std::fill(out, out + hd, 0.0f);
        m = 0;
        for (uint32_t i = 0; i < item_chosen_[h]; ++i) {
          const uint32_t first = sel[i] * P, count = std::min(P, len - first);
          if (held != nullptr && held[sel[i]] == 0) {  // weights 0, no page to read
            m += count;
            continue;
          }
          for (uint32_t p = first; p < first + count;) {
            const KvRows rows = kv_->Values(layer, seq, p, first + count - p);
            if (!masking) {
              KvAxpyRun(scores + m, rows, kvh * hd, out, hd);
              m += rows.count;
            } else {
              for (uint32_t r = 0; r < rows.count; ++r, ++m) {
                if (!aux_->present(layer, seq, p + r)) continue;  // never written
                KvAxpy(scores[m], rows, r, kvh * hd, out, hd);
              }
            }
            p += rows.count;
          }
        }
      }
    });
    kv_->ReleaseValues();
  }
  return Status::Ok();
}

Status Transformer::Validate(const TokenBatch& batch) {
  const uint32_t n = static_cast<uint32_t>(batch.tokens.size());
  if (n == 0) return InvalidArgumentError("Forward: empty batch");
  if (n > max_batch_) return InvalidArgumentError("Forward: batch larger than max_batch");
  if (batch.positions.size() != n || (!batch.sequences.empty() && batch.sequences.size() != n)) {
    return InvalidArgumentError("Forward: positions and sequences must have one entry per token");
  }
  const uint32_t logit_rows = batch.logits_for.empty()
                                  ? (all_logits_ ? n : 1)
                                  : static_cast<uint32_t>(batch.logits_for.size());
  if (logit_rows > logit_rows_max_) {
    return InvalidArgumentError("Forward: more logit rows than the model keeps");
  }
  for (size_t i = 0; i < batch.logits_for.size(); ++i) {
    if (batch.logits_for[i] >= n || (i > 0 && batch.logits_for[i] <= batch.logits_for[i - 1])) {
      return InvalidArgumentError("Forward: logits_for must be increasing token indices");
    }
  }
  for (uint32_t t = 0; t < n; ++t) {
    const uint32_t seq = batch.sequences.empty() ? 0 : batch.sequences[t];
    if (seq >= seq_next_.size()) return InvalidArgumentError("Forward: sequence out of range");
    seq_next_[seq] = UINT32_MAX;
  }
  for (uint32_t t = 0; t < n; ++t) {
    if (batch.tokens[t] < 0 || static_cast<uint32_t>(batch.tokens[t]) >= config_.vocab_size) {
      return InvalidArgumentError("Forward: token id out of range");
    }
    const uint32_t seq = batch.sequences.empty() ? 0 : batch.sequences[t];
    const uint32_t pos = batch.positions[t];
    if (pos >= max_context_) {
      return InvalidArgumentError("Forward: position beyond the context of " +
                                  std::to_string(max_context_));
    }
    if (seq_next_[seq] == UINT32_MAX) {
      if (pos > kv_->length(seq)) {
        return InvalidArgumentError("Forward: position " + std::to_string(pos) +
                                    " leaves a gap after the sequence's " +
                                    std::to_string(kv_->length(seq)) + " positions");
      }
      seq_first_[seq] = pos;
    } else if (pos != seq_next_[seq]) {
      return InvalidArgumentError("Forward: positions of a sequence must be consecutive");
    }
    seq_next_[seq] = pos + 1;
  }
  return Status::Ok();
}

Result<std::span<const float>> Transformer::Forward(std::span<const int32_t> tokens,
                                                    uint32_t pos, uint32_t seq) {
  if (tokens.size() > positions_.size()) {
    return InvalidArgumentError("Forward: batch larger than max_batch");
  }
  for (uint64_t t = 0; t < tokens.size(); ++t) {
    positions_[t] = pos + static_cast<uint32_t>(t);
    sequences_[t] = seq;
  }
  TokenBatch batch;
  batch.tokens = tokens;
  batch.positions = positions_.first(tokens.size());
  if (seq != 0) batch.sequences = sequences_.first(tokens.size());
  return Forward(batch);
}

Result<std::span<const float>> Transformer::Forward(const TokenBatch& batch) {
  RETURN_IF_ERROR(Validate(batch));
  const layout::ModelConfig& c = config_;
  const uint32_t n = static_cast<uint32_t>(batch.tokens.size());
  ++passes_;
  auto seq_of = [&](uint32_t t) { return batch.sequences.empty() ? 0u : batch.sequences[t]; };
  // A failed pass may have overwritten rows from each sequence's first position here on: the
  // sequence is cut back to that position.
  // With lazy pruning, a pass that revived tokens may have filled rows below its sequences'
  // first positions (KvCache::Fill) before failing: its sequences go back to empty and every
  // state they held is dropped (nothing below can be vouched for).
  bool revived = false;
  auto fail = [&](const Status& st) {
    if (aux_ != nullptr && revived) {
      for (uint32_t t = 0; t < n; ++t) {
        const uint32_t seq = seq_of(t);
        if (batch.positions[t] != seq_first_[seq]) continue;  // once per sequence
        aux_->ResetFrom(seq, 0);
        kv_->SetLength(seq, 0);
      }
      return st;
    }
    for (uint32_t t = 0; t < n; ++t) kv_->SetLength(seq_of(t), seq_first_[seq_of(t)]);
    return st;
  };
  for (uint32_t t = 0; t < n; ++t) {
    Status st = weights_.EmbedToken(static_cast<uint32_t>(batch.tokens[t]),
                                    x_.subspan(uint64_t{t} * c.dim, c.dim));
    if (!st.ok()) return fail(st);
  }
  // The tokens each layer computes: the batch's, or with lazy pruning those still active
  // (positions in act_pos_, rows 0..n_act of x_; the batch's last token always last).
  TokenBatch active = batch;
  uint32_t n_act = n;
  bool prune = false;  // this pass prunes (lazy, and only the last token's logits wanted)
  if (aux_ != nullptr) {
    // Positions this pass (re)writes are computed from layer 0 (a rewind drops held states).
    // The pass prunes when the logits it wants are exactly each of its sequences' last token's
    // (a prompt, a decode step, a server's batch of them); each sequence is ranked by its own.
    uint32_t lasts = 0;
    bool lasts_wanted = true;
    for (uint32_t t = 0; t < n; ++t) {
      const uint32_t seq = seq_of(t);
      if (batch.positions[t] == seq_first_[seq]) aux_->ResetFrom(seq, seq_first_[seq]);
      if (batch.positions[t] + 1 == seq_next_[seq]) {
        lasts_wanted =
            lasts_wanted && lasts < batch.logits_for.size() && batch.logits_for[lasts] == t;
        ++lasts;
      }
      act_pos_[t] = batch.positions[t];
      act_seq_[t] = seq;
    }
    active.positions = act_pos_.first(n);
    active.sequences = act_seq_.first(n);
    prune = batch.logits_for.empty() ? (!all_logits_ || n == 1) && lasts == 1
                                     : lasts_wanted && lasts == batch.logits_for.size();
    uint64_t attn = 0;
    for (uint32_t t = 0; t < n; ++t) attn += batch.positions[t] + 1;
    pass_tokens_ += n;
    dense_flops_ += c.n_layers * (n * token_layer_flops_ + 4 * attn * q_dim_);
  }
  for (uint32_t l = 0; l < c.n_layers; ++l) {
    Result<LayerWeights> acquired = weights_.AcquireLayer(l);
    if (!acquired.ok()) return fail(acquired.status());
    const LayerWeights& w = *acquired;
    // This layer's FFN reads guessed now, to go out while the attention computes (not when
    // every bundle of the layer is pinned: there is nothing to read).
    if (lookahead_ && w.neurons != nullptr && w.neurons->pinned(l) < w.neurons->neurons()) {
      if (Status st = LookAhead(l, w, n_act); !st.ok()) return fail(st);
    }
    // Attention block.
    for (uint32_t t = 0; t < n_act; ++t) {
      RmsNorm(x_.subspan(uint64_t{t} * c.dim, c.dim), w.attn_norm, c.norm_eps,
              xb_.subspan(uint64_t{t} * c.dim, c.dim));
    }
    {
      const MatrixView* qkv[] = {&w.wq, &w.wk, &w.wv};
      const std::span<float> out[] = {q_, k_, v_};
      MatMulShared(qkv, xb_, n_act, out, scratch_, pool_);
    }
    for (uint32_t t = 0; t < n_act; ++t) {
      Rope(q_.data() + uint64_t{t} * q_dim_, c.n_heads, active.positions[t]);
      Rope(k_.data() + uint64_t{t} * kv_dim_, c.n_kv_heads, active.positions[t]);
      const uint32_t seq = active.sequences.empty() ? 0u : active.sequences[t];
      const uint32_t pos = active.positions[t];
      // A revived token (a position of an earlier pass, below this one's first): its row of
      // this layer is filled in, nothing after it is dropped.
      const bool fill = aux_ != nullptr && pos < seq_first_[seq];
      const std::span<const float> k_row = k_.subspan(uint64_t{t} * kv_dim_, kv_dim_);
      const std::span<const float> v_row = v_.subspan(uint64_t{t} * kv_dim_, kv_dim_);
      Status st =
          fill ? kv_->Fill(l, seq, pos, k_row, v_row) : kv_->Write(l, seq, pos, k_row, v_row);
      if (!st.ok()) return fail(st);
    }
    // The V rows attention reads made resident (a paged cache reads spilled pages back here).
    const auto attention_start = std::chrono::steady_clock::now();
    if (page_selection_ != nullptr) {
      if (Status st = AttentionPages(l, active); !st.ok()) {
        kv_->ReleaseValues();
        return fail(st);
      }
    } else if (selective_fetch_ && policy_ != nullptr && kv_->spills()) {
      if (Status st = AttentionSelective(l, active); !st.ok()) {
        kv_->ReleaseValues();
        return fail(st);
      }
    } else {
      for (uint32_t t = 0; t < n; ++t) {
        const uint32_t seq = seq_of(t);
        if (batch.positions[t] != seq_first_[seq]) continue;  // once per sequence
        Status st;
        if (Masking()) {
          // Only the positions this layer holds: a page none of them is in may not exist.
          const uint32_t len = seq_next_[seq];
          for (uint32_t p = 0; p < len; ++p) keep_mask_[p] = aux_->present(l, seq, p) ? 1 : 0;
          st = kv_->FetchValuePositions(l, seq, len, keep_mask_.first(len));
        } else {
          st = kv_->FetchValues(l, seq, seq_next_[seq]);
        }
        if (!st.ok()) {
          kv_->ReleaseValues();
          return fail(st);
        }
      }
      Attention(l, active);
      kv_->ReleaseValues();
    }
    attention_ns_ += static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                               std::chrono::steady_clock::now() - attention_start)
                                               .count());
    MatMul(w.wo, att_out_, n_act, proj_, scratch_, pool_);
    for (uint64_t i = 0; i < uint64_t{n_act} * c.dim; ++i) x_[i] += proj_[i];
    // FFN block: act(gate x) * (up x), then down.
    for (uint32_t t = 0; t < n_act; ++t) {
      RmsNorm(x_.subspan(uint64_t{t} * c.dim, c.dim), w.ffn_norm, c.norm_eps,
              xb_.subspan(uint64_t{t} * c.dim, c.dim));
    }
    Status st = Ffn(l, w, n_act);
    if (!st.ok()) return fail(st);
    for (uint64_t i = 0; i < uint64_t{n_act} * c.dim; ++i) x_[i] += proj_[i];
    weights_.ReleaseLayer(l);
    if (aux_ != nullptr) {
      uint64_t attn = 0;
      for (uint32_t t = 0; t < n_act; ++t) attn += active.positions[t] + 1;
      layer_tokens_[l] += n_act;
      flops_ += n_act * token_layer_flops_ + 4 * attn * q_dim_;
      if (prune && lazy_fraction_[l] > 0.0f) {
        const uint64_t revivals = aux_->revivals();
        if (Status st = LazyPrune(l, &n_act); !st.ok()) return fail(st);
        revived = revived || aux_->revivals() != revivals;
        active.positions = act_pos_.first(n_act);
        active.sequences = act_seq_.first(n_act);
      }
    }
  }
  // Final norm of the tokens whose logits are wanted, then the classifier.
  std::span<const uint32_t> wanted = batch.logits_for;
  if (prune) {
    // The active rows of the wanted tokens (each sequence's last token: never pruned).
    const uint32_t rows = wanted.empty() ? 1u : static_cast<uint32_t>(wanted.size());
    for (uint32_t r = 0; r < rows; ++r) {
      const uint32_t t = wanted.empty() ? n - 1 : wanted[r];
      uint32_t i = 0;
      while (act_pos_[i] != batch.positions[t] || act_seq_[i] != seq_of(t)) ++i;
      CHECK_LT(i, n_act);
      lazy_rows_[r] = i;
    }
    wanted = lazy_rows_.first(rows);
  } else if (wanted.empty() && !all_logits_) {
    last_logit_[0] = n - 1;
    wanted = last_logit_;
  }
  const uint32_t rows = wanted.empty() ? n : static_cast<uint32_t>(wanted.size());
  for (uint32_t r = 0; r < rows; ++r) {
    const uint32_t t = wanted.empty() ? r : wanted[r];
    RmsNorm(x_.subspan(uint64_t{t} * c.dim, c.dim), weights_.output_norm(), c.norm_eps,
            xb_.subspan(uint64_t{r} * c.dim, c.dim));
  }
  if (Status st = Logits(rows); !st.ok()) return fail(st);
  for (uint32_t t = 0; t < n; ++t) kv_->SetLength(seq_of(t), batch.positions[t] + 1);
  return std::span<const float>(logits_.data(), uint64_t{rows} * c.vocab_size);
}

// Ranking, per sequence of the pass: its last token's probabilities at this layer summed over
// heads (the average's order), over the positions the layer holds of that sequence; ties go to
// the lower position. The top ceil(f x len) (the last token among them) stay or come back; the
// sequence's other tokens of the pass go to the aux cache; its held tokens whose next layer is
// layer + 1 and that rank in are revival candidates (increasing positions, sequences in batch
// order). Then the rows are compacted in place and the candidates revived while the batch has
// room. Rows are in no particular order (each token's attention uses its own sequence and
// position; the logits and the next ranking find a sequence's last token by its position).
Status Transformer::LazyPrune(uint32_t layer, uint32_t* n) {
  constexpr uint32_t kGone = UINT32_MAX;
  const layout::ModelConfig& c = config_;
  const uint32_t n_act = *n;
  const uint32_t hd = c.head_dim, group = c.n_heads / c.n_kv_heads;
  uint32_t n_cand = 0;
  for (uint32_t r = 0; r < n_act; ++r) {
    const uint32_t seq = act_seq_[r], last_pos = act_pos_[r];
    if (last_pos == kGone || last_pos + 1 != seq_next_[seq]) continue;  // not a last token
    const uint32_t len = last_pos + 1;
    // The ranking reads every K row the layer holds: where K pages may be on flash (--kv-spill
    // kv), the pages holding one are made resident first (with their V pages: KvCache::FetchPages
    // is the one call that fetches K) and released after.
    const bool fetch = kv_->spills_keys();
    if (fetch) {
      const uint32_t P = kv_->bound_page_tokens();
      CHECK_GT(P, 0u);  // K spills only with page selection (PagedKvCache::Create)
      const uint32_t n_pages = static_cast<uint32_t>(CeilDiv(len, P));
      std::fill(needed_.begin(), needed_.begin() + n_pages, uint8_t{0});
      for (uint32_t p = 0; p < len; ++p) {
        if (aux_->present(layer, seq, p)) needed_[p / P] = 1;
      }
      if (Status st = kv_->FetchPages(layer, seq, len, needed_.first(n_pages)); !st.ok()) {
        kv_->ReleaseValues();
        return st;
      }
    }
    std::fill(importance_.begin(), importance_.begin() + len, 0.0f);
    for (uint32_t h = 0; h < c.n_heads; ++h) {
      const float* q = q_.data() + uint64_t{r} * q_dim_ + uint64_t{h} * hd;
      AttentionScores(layer, seq, len, q, h / group, imp_row_.data());
      for (uint32_t p = 0; p < len; ++p) importance_[p] += imp_row_[p];
    }
    if (fetch) kv_->ReleaseValues();
    uint32_t m = 0;
    for (uint32_t p = 0; p < last_pos; ++p) {
      if (aux_->present(layer, seq, p)) order_[m++] = p;
    }
    const uint32_t keep = std::max<uint32_t>(
        1, static_cast<uint32_t>(std::ceil(static_cast<double>(lazy_fraction_[layer]) * len)));
    const uint32_t others = std::min(keep - 1, m);
    const float* imp = importance_.data();
    auto before = [imp](uint32_t a, uint32_t b) {
      return imp[a] > imp[b] || (imp[a] == imp[b] && a < b);
    };
    if (others < m) {
      std::nth_element(order_.begin(), order_.begin() + others, order_.begin() + m, before);
    }
    std::fill(keep_mask_.begin(), keep_mask_.begin() + len, uint8_t{0});
    for (uint32_t i = 0; i < others; ++i) keep_mask_[order_[i]] = 1;
    keep_mask_[last_pos] = 1;
    // The sequence's pass tokens that fall out go to the aux cache (their rows marked gone).
    for (uint32_t i = 0; i < n_act; ++i) {
      if (act_seq_[i] != seq || act_pos_[i] == kGone || keep_mask_[act_pos_[i]]) continue;
      aux_->Prune(seq, act_pos_[i], layer + 1, x_.subspan(uint64_t{i} * c.dim, c.dim));
      act_pos_[i] = kGone;
    }
    // Candidates (active tokens count every layer as computed, so layer + 1 picks only held
    // tokens: those pruned just now are not kept). At most max_batch are ever revived.
    for (uint32_t p = 0; p < len && n_cand < max_batch_; ++p) {
      if (!keep_mask_[p] || aux_->computed_layers(seq, p) != layer + 1) continue;
      cand_pos_[n_cand] = p;
      cand_seq_[n_cand++] = seq;
    }
  }
  // In place: the kept rows move down (row j <= i), then the revived ones follow.
  uint32_t j = 0;
  for (uint32_t i = 0; i < n_act; ++i) {
    if (act_pos_[i] == kGone) continue;
    if (j != i) {
      std::copy_n(x_.data() + uint64_t{i} * c.dim, c.dim, x_.data() + uint64_t{j} * c.dim);
    }
    act_pos_[j] = act_pos_[i];
    act_seq_[j++] = act_seq_[i];
  }
  for (uint32_t k = 0; k < n_cand && j < max_batch_; ++k) {
    const std::span<const float> held = aux_->hidden(cand_seq_[k], cand_pos_[k]);
    std::copy(held.begin(), held.end(), x_.begin() + uint64_t{j} * c.dim);
    aux_->Revive(cand_seq_[k], cand_pos_[k]);
    act_pos_[j] = cand_pos_[k];
    act_seq_[j++] = cand_seq_[k];
  }
  *n = j;
  return Status::Ok();
}

std::vector<uint32_t> DefaultLazyLayers(uint32_t n_layers) {
  std::vector<uint32_t> layers;
  for (uint32_t l = n_layers / 4; l + 1 < n_layers; ++l) layers.push_back(l);
  return layers;
}

Status ValidateLazy(const LazyOptions& lazy, uint32_t n_layers) {
  if (!(lazy.keep > 0.0f && lazy.keep <= 1.0f)) {
    return InvalidArgumentError("--lazy-prefill must be in (0, 1], got " +
                                std::to_string(lazy.keep));
  }
  for (size_t i = 0; i < lazy.layers.size(); ++i) {
    if (lazy.layers[i] + 1 >= n_layers) {
      return InvalidArgumentError("--lazy-layers: layer " + std::to_string(lazy.layers[i]) +
                                  " is not before the last layer (" + std::to_string(n_layers) +
                                  " layers: at most " +
                                  std::to_string(n_layers >= 2 ? n_layers - 2 : 0) + ")");
    }
    if (i > 0 && lazy.layers[i] <= lazy.layers[i - 1]) {
      return InvalidArgumentError("--lazy-layers must be increasing");
    }
  }
  if (lazy.enabled() && lazy.layers.empty() && DefaultLazyLayers(n_layers).empty()) {
    return InvalidArgumentError("--lazy-prefill: a model of " + std::to_string(n_layers) +
                                " layer(s) has no layer to prune after");
  }
  return Status::Ok();
}

LazyStats Transformer::lazy_stats() const {
  LazyStats s;
  if (aux_ == nullptr) return s;
  s.layer_tokens = layer_tokens_;
  s.pass_tokens = pass_tokens_;
  s.flops = flops_;
  s.dense_flops = dense_flops_;
  s.prunes = aux_->prunes();
  s.revivals = aux_->revivals();
  s.aux_bytes = aux_->held_bytes();
  s.aux_peak_bytes = aux_->peak_held_bytes();
  s.aux_capacity_bytes = aux_->resident_bytes();
  return s;
}

void Transformer::ResetLazyStats() {
  if (aux_ == nullptr) return;
  std::fill(layer_tokens_.begin(), layer_tokens_.end(), 0);
  pass_tokens_ = flops_ = dense_flops_ = 0;
  aux_->ResetStats();
}

Status Transformer::Ffn(uint32_t l, const LayerWeights& w, uint32_t n) {
  const layout::ModelConfig& c = config_;
  const std::span<const float> xb = xb_.first(uint64_t{n} * c.dim);
  const std::span<float> out = proj_.first(uint64_t{n} * c.dim);
  if (ffn_observer_ != nullptr) ffn_observer_->OnFfnInput(l, xb, n);
  if (w.neurons == nullptr) {  // dense matrices
    RETURN_IF_ERROR(weights_.ReleaseMatrices(l));
    ffn_total_ += c.hidden_dim;
    ffn_computed_ += c.hidden_dim;
    const MatrixView* gate_up[] = {&w.gate, &w.up};
    const std::span<float> gate_up_out[] = {hb_, hb2_};
    MatMulShared(gate_up, xb, n, gate_up_out, scratch_, pool_);
    if (ffn_observer_ != nullptr) {
      ffn_observer_->OnFfnGate(l, hb_.first(uint64_t{n} * c.hidden_dim), n);
    }
    SwiGlu(hb_.first(uint64_t{n} * c.hidden_dim), hb2_.first(uint64_t{n} * c.hidden_dim),
           c.activation == layout::Activation::kRelu);
    if (ffn_observer_ != nullptr) {
      ffn_observer_->OnFfnActivations(l, hb_.first(uint64_t{n} * c.hidden_dim), n);
    }
    MatMul(w.down, hb_, n, proj_, scratch_, pool_);
    return Status::Ok();
  }
  // Neuron bundles, in the order the source serves them (increasing positions).
  NeuronSource& source = *w.neurons;
  const bool observe = ffn_observer_ != nullptr;
  const uint64_t hidden_n = uint64_t{n} * c.hidden_dim;
  ffn_kernel_->Begin(xb, n, out, source.geometry().has_gate() ? nullptr : &w.gate,
                     source.permutation(l), observe ? hb_.first(hidden_n) : std::span<float>(),
                     observe ? hb2_.first(hidden_n) : std::span<float>());
  // The dense gate has been multiplied: the layer's matrices are done.
  RETURN_IF_ERROR(weights_.ReleaseMatrices(l));
  ffn_total_ += c.hidden_dim;
  if (sparsity_ == FfnSparsity::kRelu || sparsity_ == FfnSparsity::kThreshold) {
    // kRelu: only the neurons that fire for some token; the others add exactly zero.
    // kThreshold: only those above the layer's cut for some token; the kernel's mask zeroes the
    // tokens below it.
    const float cut = sparsity_ == FfnSparsity::kRelu ? 0.0f : thresholds_[l];
    const uint32_t fired = ffn_kernel_->FiringPositions(fired_, cut);
    if (sparsity_ == FfnSparsity::kThreshold) ffn_kernel_->set_mask(cut);
    ffn_computed_ += fired;
    RETURN_IF_ERROR(source.Begin(l, fired_.first(fired)));
  } else if (sparsity_ == FfnSparsity::kPredictor) {
    const uint32_t fired = Predict(l, n, source.permutation(l), predictor_logit_cut_, true);
    ffn_kernel_->set_score_mask(pred_scores_.first(hidden_n), predictor_logit_cut_,
                                predictor_->layers[l].fire_cut);
    ffn_computed_ += fired;
    predictor_stats_.ffn_flops += uint64_t{fired} * n * 6 * c.dim;
    predictor_stats_.ffn_bytes += uint64_t{fired} * source.geometry().bundle_bytes;
    RETURN_IF_ERROR(source.Begin(l, fired_.first(fired)));
  } else {
    ffn_computed_ += c.hidden_dim;
    RETURN_IF_ERROR(source.Begin(l));
  }
  NeuronSource::Batch batch;
  while (true) {
    ASSIGN_OR_RETURN(bool more, source.Next(&batch));
    if (!more) break;
    if (batch.regrouped != nullptr) {  // the pinned bundles of a dense FFN
      ffn_kernel_->AccumulateRegrouped(*batch.regrouped);
      continue;
    }
    for (size_t k = 0; k < batch.positions.size(); k += kKernelChunk) {
      const size_t m = std::min<size_t>(kKernelChunk, batch.positions.size() - k);
      ffn_kernel_->Accumulate(batch.positions.subspan(k, m), batch.bundles.subspan(k, m));
    }
  }
  if (observe) {
    ffn_observer_->OnFfnGate(l, hb2_.first(hidden_n), n);
    ffn_observer_->OnFfnActivations(l, hb_.first(hidden_n), n);
  }
  return Status::Ok();
}

Status Transformer::LookAhead(uint32_t l, const LayerWeights& w, uint32_t n) {
  const layout::ModelConfig& c = config_;
  for (uint32_t t = 0; t < n; ++t) {
    RmsNorm(x_.subspan(uint64_t{t} * c.dim, c.dim), w.ffn_norm, c.norm_eps,
            xb_.subspan(uint64_t{t} * c.dim, c.dim));
  }
  NeuronSource& source = *w.neurons;
  const uint32_t k = Predict(l, n, source.permutation(l), lookahead_logit_cut_, false);
  return source.Prefetch(l, fired_.first(k));
}

uint32_t Transformer::Predict(uint32_t l, uint32_t n, std::span<const uint32_t> permutation,
                              float logit_cut, bool count) {
  const layout::ModelConfig& c = config_;
  const layout::FfnPredictor& p = *predictor_;
  const layout::FfnPredictorLayer& pl = p.layers[l];
  auto bytes = [](const auto& v) {
    return ConstByteSpan(reinterpret_cast<const std::byte*>(v.data()),
                         v.size() * sizeof(v.front()));
  };
  // scores = B (A x) + bias, per token.
  const layout::DType dtype = pl.f16() ? layout::DType::kF16 : layout::DType::kF32;
  const MatrixView a{dtype, p.rank, c.dim, pl.f16() ? bytes(pl.a_f16) : bytes(pl.a)};
  const MatrixView b{dtype, c.hidden_dim, p.rank, pl.f16() ? bytes(pl.b_f16) : bytes(pl.b)};
  const std::span<float> z = pred_z_.first(uint64_t{n} * p.rank);
  const std::span<float> scores = pred_scores_.first(uint64_t{n} * c.hidden_dim);
  MatMul(a, xb_.first(uint64_t{n} * c.dim), n, z, scratch_, pool_);
  MatMul(b, z, n, scores, scratch_, pool_);
  for (uint32_t t = 0; t < n; ++t) {
    float* row = scores.data() + uint64_t{t} * c.hidden_dim;
    for (uint32_t i = 0; i < c.hidden_dim; ++i) row[i] += pl.bias[i];
  }
  if (count) {
    predictor_stats_.flops += uint64_t{n} * (2 * p.LayerValues());
    predictor_stats_.bytes += p.LayerBytes(pl.f16());
  } else {
    lookahead_flops_ += uint64_t{n} * (2 * p.LayerValues());
  }
  // The positions (store order) whose neuron is above the cut for some token.
  uint32_t k = 0;
  for (uint32_t pos = 0; pos < c.hidden_dim; ++pos) {
    const uint32_t neuron = permutation.empty() ? pos : permutation[pos];
    for (uint32_t t = 0; t < n; ++t) {
      if (scores[uint64_t{t} * c.hidden_dim + neuron] > logit_cut) {
        fired_[k++] = pos;
        break;
      }
    }
  }
  return k;
}

PredictorStats Transformer::predictor_stats() const {
  PredictorStats s = predictor_stats_;
  s.lookahead_flops = lookahead_flops_;
  if (predictor_ && ffn_kernel_) {
    const BundleFfnKernel::PredictedStats k = ffn_kernel_->predicted_stats();
    s.pairs_computed = k.computed;
    s.pairs_fired = k.fired;
  }
  return s;
}

void Transformer::ResetPredictorStats() {
  predictor_stats_ = PredictorStats();
  lookahead_flops_ = 0;
  if (ffn_kernel_) ffn_kernel_->ResetPredictedStats();
}

Status Transformer::Logits(uint32_t rows) {
  const layout::ModelConfig& c = config_;
  const std::span<const float> x = xb_.first(uint64_t{rows} * c.dim);
  ClassifierStream* stream = weights_.classifier_stream();
  if (stream == nullptr) {
    MatMul(weights_.classifier(), x, rows, logits_, scratch_, pool_);
    return Status::Ok();
  }
  // Streamed in row blocks: the activations are quantised once, each block multiplied as it lands.
  QuantizeActivations(x, c.dim, rows, scratch_);
  RETURN_IF_ERROR(stream->Begin());
  MatrixView block;
  uint32_t r0 = 0;
  while (true) {
    ASSIGN_OR_RETURN(bool more, stream->Next(&block, &r0));
    if (!more) break;
    const std::span<float> y = rows == 1 ? logits_.subspan(r0, block.rows)
                                         : block_out_.first(uint64_t{rows} * block.rows);
    pool_.ParallelFor(block.rows, 16, [&](uint64_t b, uint64_t e, uint32_t) {
      MatMulRows(block, x, rows, scratch_, static_cast<uint32_t>(b), static_cast<uint32_t>(e), y);
    });
    if (rows > 1) {
      for (uint32_t t = 0; t < rows; ++t) {
        std::copy_n(y.data() + uint64_t{t} * block.rows, block.rows,
                    logits_.data() + uint64_t{t} * c.vocab_size + r0);
      }
    }
  }
  return Status::Ok();
}

}  // namespace flashlm::engine
