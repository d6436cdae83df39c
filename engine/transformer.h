// Transformer: the LLaMA forward pass over a WeightStore and a KvCache.
//
// RMSNorm; RoPE in Meta's interleaved convention (pairs 2i, 2i+1 of each head) with theta and
// linear or LLaMA-3 scaling from the config; multi-head and grouped-query attention; SwiGLU (or
// ReLU-gated) FFN, from dense matrices or from neuron bundles (a NeuronSource, through
// BundleFfnKernel); tied, separate or streamed classifier.
//
// A batch is a set of tokens, each with its own sequence and position (TokenBatch): a prompt is
// one sequence at consecutive positions; a server's decode step is one token of each of several
// sequences. Every token attends to the positions [0, its own] of its sequence, whose K and V
// are in the KvCache (written by earlier passes, or by this one before the attention).
// Attention runs in three phases per token and query head: scores (q . k over the positions,
// softmax), selection (which positions' V rows are used: all of them, or what an
// AttentionPolicy picks), weighted sum of the selected V rows.
//
// Memory: every buffer (activations, scores, logits, RoPE tables, q8 scratch, the bundle FFN
// kernel's scratch) is sized at Create from the config, the options and the thread count, in one
// arena; BytesNeeded() is that size, computed by the same function Create allocates from, so
// budgets plan with it and nothing mirrors it by hand. Forward allocates nothing.
// Not thread-safe: one caller; the ThreadPool is used inside.
#ifndef FLASHLM_ENGINE_TRANSFORMER_H_
#define FLASHLM_ENGINE_TRANSFORMER_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string_view>
#include <vector>

#include "cache/lazy_aux_cache.h"
#include "engine/arena.h"
#include "engine/bundle_ffn.h"
#include "engine/kv_cache.h"
#include "engine/thread_pool.h"
#include "engine/weights.h"
#include "layout/bundle_layout.h"
#include "layout/ffn_predictor.h"
#include "storage/status.h"

namespace flashlm::engine {

// Observes the FFN's hidden activations h = act(gate x) * (up x) (after SwiGLU / ReLU gating,
// before the down projection), e.g. to count how often each neuron fires (calibration).
// Called on the thread that runs Forward, once per layer per Forward call, in layer order; it must
// not call back into the Transformer. `h` is n_tokens x hidden_dim f32, row-major (token t's
// neurons at h[t * hidden_dim ...], in neuron order), exactly the values the down projection
// reads (with neuron bundles: every neuron computed, the others 0); the view lives during the
// call. A Transformer over neuron bundles needs TransformerOptions::observe_ffn to be observed.
class FfnObserver {
 public:
  virtual ~FfnObserver() = default;
  virtual void OnFfnActivations(uint32_t layer, std::span<const float> h, uint32_t n_tokens) = 0;
  // The same layer's pre-activation gate outputs g = gate x (n_tokens x hidden_dim, neuron
  // order; with neuron bundles, 0 for neurons not computed), called before OnFfnActivations.
  // What threshold calibration reads. Default: ignored.
  virtual void OnFfnGate(uint32_t /*layer*/, std::span<const float> /*g*/, uint32_t /*n_tokens*/) {}
  // The same layer's input x (n_tokens x dim, the normed residual the FFN multiplies), called
  // first. What predictor training reads. Default: ignored.
  virtual void OnFfnInput(uint32_t /*layer*/, std::span<const float> /*x*/, uint32_t /*n_tokens*/) {}
};

// Chooses which positions' V rows the attention's weighted sum uses (e.g. the top-N of KCache,
// engine/attention_topn.h). When it keeps fewer than all positions, the sum weighs each kept
// V row by its probability divided by the kept probabilities' total (renormalised); keeping all
// is exact attention, bit for bit. Called from the pool's threads concurrently, hence const.
class AttentionPolicy {
 public:
  virtual ~AttentionPolicy() = default;
  // `probs` are the softmaxed scores of one query head of one token over positions
  // [0, probs.size()) of its sequence. Writes the chosen positions, increasing, into `selected`
  // (room for probs.size()) and returns how many (at least 1).
  virtual uint32_t Select(uint32_t layer, uint32_t sequence, std::span<const float> probs,
                          std::span<uint32_t> selected) const = 0;
};

// Page selection (Quest; engine/attention_pages.h): which pages of K and V a query reads, chosen
// before any score from per-page K bounds (KvCache::KeyPageBounds). Attention is then exact over
// the chosen pages' positions: softmax over those positions only, weighted sum of their V rows.
// Choosing every page is exact attention, bit for bit. Called from the pool's threads
// concurrently, hence const.
class PageSelectionPolicy {
 public:
  virtual ~PageSelectionPolicy() = default;
  // A query at position len - 1 over pages [0, n_pages), n_pages = ceil(len / P): `bounds` are
  // the upper bounds of its score over each earlier page (n_pages - 1 of them; the last page,
  // holding the query's own position, is not ranked). Writes the chosen pages, increasing, into
  // `pages` (room for n_pages) and returns how many (at least 1; the last page always).
  virtual uint32_t SelectPages(uint32_t len, uint32_t n_pages, std::span<const float> bounds,
                               std::span<uint32_t> pages) const = 0;
};

// What page selection read (totals since Create or ResetPageStats): per (token, layer), the
// pages any query head chose (whose K and V were made resident) and the pages there were.
struct PageSelectStats {
  uint64_t pages_selected = 0, pages_total = 0;
  uint64_t head_pages_selected = 0, head_pages_total = 0;  // the same per (token, layer, head)
};

// Which FFN neurons a neuron-bundle FFN computes.
enum class FfnSparsity : uint8_t {
  // kRelu when it applies (a ReLU model whose store keeps the gate apart: gate+up-down bundles),
  // else kDense.
  kAuto,
  kDense,  // every neuron
  // Exact for ReLU models: a neuron whose gate output is <= 0 for every token of the batch adds
  // nothing, so only the others' [up | down] bundles are read and computed (PowerInfer-2's
  // two-phase loading: the dense gate first, then the firing neurons). Output identical to dense.
  // Needs gate+up-down bundles: in gate-up-down bundles the gate is read with the rest, so
  // knowing which neurons fire would cost reading them all.
  kRelu,
  // Approximate (CATS): in layer l a neuron adds nothing to a token whose |act(gate x)| is at most
  // TransformerOptions::ffn_thresholds[l]; only the [up | down] bundles of neurons above it for
  // some token of the batch are read. Thresholds come from calibration (engine/gate_calibrator.h,
  // layout/ffn_thresholds.h). Needs gate+up-down bundles, as kRelu does.
  kThreshold,
  // Approximate (LLM in a flash): in layer l a low-rank predictor (layout/ffn_predictor.h,
  // TransformerOptions::ffn_predictor) scores every neuron from the FFN input; a neuron adds
  // nothing to a token whose sigmoid(score) is at most TransformerOptions::predictor_cut, and
  // only the bundles of neurons above it for some token of the batch are read and computed. No
  // dense gate is needed: with gate-up-down bundles one read per predicted neuron (with
  // gate+up-down bundles the gate is still multiplied densely first, as the kernel needs it).
  kPredictor,
};
// "auto", "dense", "relu", "threshold", "predictor"
std::string_view FfnSparsityName(FfnSparsity s);

// What the predictor sparsity did (totals since Create): its own cost against the FFN's, and its
// precision in use (of the (token, neuron) pairs computed, those that fire by the predictor's
// training rule).
struct PredictorStats {
  uint64_t flops = 0;      // the predictor's multiply-adds x 2
  uint64_t bytes = 0;      // its weights read (f32, from DRAM)
  uint64_t ffn_flops = 0;  // the FFN's bundles computed: 6 x dim per bundle and token
  uint64_t ffn_bytes = 0;  // those bundles' bytes
  uint64_t pairs_computed = 0, pairs_fired = 0;
  uint64_t lookahead_flops = 0;  // the lookahead's predictor evaluations (any sparsity), x 2
  double precision() const {
    return pairs_computed ? static_cast<double>(pairs_fired) / pairs_computed : 0.0;
  }
  double flops_share() const {
    return flops + ffn_flops ? static_cast<double>(flops) / (flops + ffn_flops) : 0.0;
  }
  double bytes_share() const {
    return bytes + ffn_bytes ? static_cast<double>(bytes) / (bytes + ffn_bytes) : 0.0;
  }
};

// LazyLLM prompt-token pruning (Fu et al., 2024; docs/architecture.md "Lazy prefill"). At each
// pruning layer l of a pass that wants the logits of its last token only, that token's attention
// at layer l, averaged over query heads, ranks the positions layer l holds; the pass goes on
// through layer l+1 with only the top ceil(f x len) of them (len: the sequence's positions up to
// that token, which is always kept). f falls linearly over the pruning layers from
// 1 - (1 - keep) / m at the first to `keep` at the m-th. A token of the pass that falls out is
// pruned: its residual stream goes to the aux cache (cache/lazy_aux_cache.h) and layers beyond l
// hold no K/V for it; attention over a layer skips positions that layer never computed. A
// pruned position whose next missing layer is l+1 and that ranks among the kept ones at layer l
// of a later pass (e.g. a decode step) is revived: taken back from its stored state and computed
// from layer l+1 on, at most max_batch tokens per pass. Positions keep their original RoPE
// positions throughout. keep == 1 is off: the forward pass is exactly the dense one.
// Several sequences (a server's batch): each is ranked by its own last token and prunes and
// revives only its own positions (the aux cache has a slot per sequence and position); revival
// candidates share the pass's max_batch rows, in batch order of their sequences. A pass prunes
// when the logits it wants are exactly each of its sequences' last token's; other passes (e.g.
// perplexity's all-logits ones) prune nothing but still skip what earlier passes pruned.
struct LazyOptions {
  float keep = 1.0f;
  // Pruning layers, increasing, each < n_layers - 1; empty: DefaultLazyLayers.
  std::vector<uint32_t> layers;
  bool enabled() const { return keep < 1.0f; }
};
// Every layer from the first quarter's end (n_layers / 4) to n_layers - 2: LazyLLM prunes later
// layers more and leaves the first ones, whose attention ranks tokens worst, alone.
std::vector<uint32_t> DefaultLazyLayers(uint32_t n_layers);
// Errors: InvalidArgument (keep outside (0, 1], a layer out of range or not increasing, or no
// layer to prune at).
Status ValidateLazy(const LazyOptions& lazy, uint32_t n_layers);

// What lazy pruning did (totals since Create or ResetLazyStats).
struct LazyStats {
  std::vector<uint64_t> layer_tokens;  // [layer] tokens computed (revived ones included)
  uint64_t pass_tokens = 0;            // tokens of the passes: each layer's count without pruning
  uint64_t flops = 0;                  // matmul + attention FLOPs of the layers computed
  uint64_t dense_flops = 0;            // the same without pruning
  uint64_t prunes = 0, revivals = 0;   // tokens stored into / taken back from the aux cache
  uint64_t aux_bytes = 0, aux_peak_bytes = 0;  // aux cache in use now / at most
  uint64_t aux_capacity_bytes = 0;             // the aux cache's size (LazyAuxCache::BytesNeeded)
};

struct TransformerOptions {
  uint32_t max_context = 0;    // positions per sequence; 0 = the model's max_seq_len
  uint32_t max_batch = 128;    // tokens per Forward call
  uint32_t max_sequences = 1;  // sequences one Forward may carry (and the KV cache holds)
  bool all_logits = false;     // keep logits for every token of a batch (perplexity)
  bool observe_ffn = false;    // keep the FFN activations for an FfnObserver (bundle stores)
  // Two-phase attention for a KV cache that reads V from flash (KvCache::spills()) under an
  // AttentionPolicy: per token, every head's scores and selection, then only the V pages
  // holding a selected position are fetched, then the weighted sums. Reserves n_heads x
  // max_context scores and selections and a max_context mask.
  bool selective_fetch = false;
  // Page selection (a PageSelectionPolicy, set_page_selection) over a KV cache that keeps K page
  // bounds: reserves n_heads x max_context scores and pages and a max_context mask.
  bool select_pages = false;
  // With select_pages: one choice of pages per (token, layer) shared by every head (pages ranked
  // by their best bound relative to each head's best page, AttentionPages), not one per head.
  bool select_pages_shared = false;
  FfnSparsity sparsity = FfnSparsity::kAuto;
  std::vector<float> ffn_thresholds;  // kThreshold: one cut per layer (finite, >= 0)
  // kPredictor: the predictor (its shape must match the model; rank at most dim) and the cut on
  // sigmoid(score), in [0, 1] (0: every neuron; 1: none).
  std::shared_ptr<const layout::FfnPredictor> ffn_predictor;
  float predictor_cut = 0.5f;
  // Lookahead (Deja Vu's asynchronous lookahead predictors, LLM in a flash's early reads): at the
  // start of layer l, before its attention, ffn_predictor scores layer l's neurons from the
  // residual stream normed with the layer's FFN norm (the FFN input but for this layer's
  // attention) and the bundles above `lookahead_cut` (a probability, in [0, 1]) are read ahead
  // (NeuronSource::Prefetch) while the attention computes. What the FFN computes is unchanged
  // (kRelu stays exact: its neurons still come from the gate); only when reads go out changes.
  // Needs ffn_predictor and a sparsity that reads neurons ad hoc (kRelu, kThreshold, kPredictor).
  bool lookahead = false;
  float lookahead_cut = 0.5f;
  LazyOptions lazy;  // LazyLLM pruning (off by default)
};

// How the weights are served, as far as the forward pass's buffers depend on it.
struct WeightsShape {
  std::optional<layout::BundleGeometry> bundles;  // the FFN as neuron bundles
  uint32_t classifier_block_rows = 0;             // the classifier streamed in blocks (0: not)
  static WeightsShape Of(WeightStore& weights);
};

// One forward pass's tokens.
struct TokenBatch {
  std::span<const int32_t> tokens;
  std::span<const uint32_t> positions;  // [token] its position in its sequence
  std::span<const uint32_t> sequences;  // [token] its sequence; empty: every token in sequence 0
  // Tokens whose logits are returned, increasing indices into `tokens`; empty: the last token
  // (every token with all_logits).
  std::span<const uint32_t> logits_for;
};

class Transformer {
 public:
  // DRAM that Create allocates for these arguments (the arena and the bundle kernel's scratch;
  // the KV cache is the KvCache's own).
  static uint64_t BytesNeeded(const layout::ModelConfig& config, const TransformerOptions& options,
                              uint32_t threads, const WeightsShape& shape);
  // Of those, the FFN predictor's weights (0 when the options use none).
  static uint64_t PredictorBytesNeeded(const TransformerOptions& options);

  // `kv` (not owned, may be null) must hold max_sequences sequences of max_context positions;
  // when null the Transformer creates its own FlatKvCache.
  // Errors: InvalidArgument when max_context exceeds the model's maximum, sizes are zero or the KV
  // cache is too small.
  static Result<std::unique_ptr<Transformer>> Create(WeightStore& weights, ThreadPool& pool,
                                                     const TransformerOptions& options,
                                                     KvCache* kv = nullptr);

  // Runs one pass over `batch` and returns the logits of batch.logits_for (vocab floats each, in
  // that order). The view lives until the next Forward. Positions of a sequence within a batch
  // must be consecutive and increasing, and its first must be at most the sequence's KV length
  // (position p < length rewinds it); afterwards its length is its last position + 1.
  // Errors: InvalidArgument (empty or oversized batch, sizes that disagree, a token id, sequence
  // or position out of range, positions with a gap); errors from the WeightStore (IoError,
  // Corruption): each sequence of the batch is then cut back to its first position in it.
  Result<std::span<const float>> Forward(const TokenBatch& batch);
  // Sequence `seq` at positions pos .. pos + tokens.size() - 1 (logits as for an empty
  // logits_for).
  Result<std::span<const float>> Forward(std::span<const int32_t> tokens, uint32_t pos,
                                         uint32_t seq = 0);

  const layout::ModelConfig& config() const { return config_; }
  uint32_t max_context() const { return max_context_; }
  uint32_t max_batch() const { return max_batch_; }
  KvCache& kv_cache() { return *kv_; }
  // What Create allocated (== BytesNeeded for the same arguments).
  uint64_t resident_bytes() const;
  // Forward passes so far.
  uint64_t passes() const { return passes_; }
  // Time spent in attention so far (making V rows resident, scores, selection, weighted sums).
  uint64_t attention_ns() const { return attention_ns_; }
  // The sparsity in effect (kAuto resolved).
  FfnSparsity sparsity() const { return sparsity_; }
  // FFN neurons computed, and neurons there were, over every layer of every pass so far (equal
  // in dense mode; a neuron counts once per pass however many tokens the batch has).
  uint64_t ffn_neurons_computed() const { return ffn_computed_; }
  uint64_t ffn_neurons_total() const { return ffn_total_; }
  // kPredictor's counters (zeros otherwise).
  PredictorStats predictor_stats() const;
  bool lookahead() const { return lookahead_; }
  void ResetPredictorStats();
  // Observer of the FFN activations (see FfnObserver); nullptr (the default) for none. Not owned;
  // must outlive its use by Forward. Errors: FailedPrecondition for a bundle FFN created without
  // observe_ffn.
  Status set_ffn_observer(FfnObserver* observer);
  // Attention's selection phase (see AttentionPolicy); nullptr (the default): every position.
  // Not owned; must outlive its use by Forward.
  void set_attention_policy(const AttentionPolicy* policy) { policy_ = policy; }
  // Page selection (see PageSelectionPolicy), used for every token when set; needs
  // TransformerOptions::select_pages and a KvCache with bound_page_tokens() != 0, else
  // FailedPrecondition. nullptr: off. Not owned; must outlive its use by Forward.
  Status set_page_selection(const PageSelectionPolicy* selection);
  PageSelectStats page_stats() const { return page_stats_; }
  void ResetPageStats() { page_stats_ = PageSelectStats(); }
  // LazyLLM pruning (TransformerOptions::lazy): on, its statistics, and its aux cache (nullptr
  // when off).
  bool lazy() const { return aux_ != nullptr; }
  LazyStats lazy_stats() const;
  void ResetLazyStats();
  const cache::LazyAuxCache* lazy_aux() const { return aux_.get(); }

 private:
  struct Layout;
  static Layout MakeLayout(const layout::ModelConfig& c, const TransformerOptions& o,
                           uint32_t threads, const WeightsShape& shape, uint32_t max_context);
  Transformer(WeightStore& weights, ThreadPool& pool) : weights_(weights), pool_(pool) {}
  Status Validate(const TokenBatch& batch);
  void Attention(uint32_t layer, const TokenBatch& batch);
  // The two-phase form (TransformerOptions::selective_fetch). Errors: the KV cache's fetch.
  Status AttentionSelective(uint32_t layer, const TokenBatch& batch);
  // Page selection (set_page_selection): per token, every head's page bounds and choice, the
  // chosen pages' K and V made resident (one FetchPages), then exact attention over them.
  // Errors: the KV cache's fetch.
  Status AttentionPages(uint32_t layer, const TokenBatch& batch);
  // The phases for one (token, query head) item; `scores` and `selected` are the thread's rows.
  void AttentionScores(uint32_t layer, uint32_t seq, uint32_t len, const float* q, uint32_t kvh,
                       float* scores) const;
  void AttentionValues(uint32_t layer, uint32_t seq, uint32_t len, const float* scores,
                       std::span<const uint32_t> selected, bool all, uint32_t kvh,
                       float* out) const;
  // Exact attention (no policy, no lazy mask) of the `group` query heads that share KV head
  // kvh, for one token: q and out hold the group's heads head_dim apart, scores is group x
  // max_context (the thread's rows). Each block of kGroupBlockRows K (then V) rows is read
  // once for all the heads, which then find it in L1; every score and output value is the
  // per-head path's (AttentionScores / AttentionValues), bit for bit: a row's dot product does
  // not depend on the rows beside it, and each head still adds its V rows in position order.
  void AttentionGroup(uint32_t layer, uint32_t seq, uint32_t len, const float* q, uint32_t kvh,
                      uint32_t group, float* scores, float* out) const;
  // Removes from the policy's `chosen` selected positions those `layer` never computed (lazy
  // pruning) and returns how many remain.
  uint32_t DropAbsent(uint32_t layer, uint32_t seq, uint32_t len, uint32_t chosen,
                      std::span<uint32_t> selected) const;
  Status Ffn(uint32_t layer, const LayerWeights& w, uint32_t n);
  // After layer `layer` (a pruning layer) of a lazy pass over *n active tokens (positions in
  // act_pos_, sequences in act_seq_, rows of x_; each sequence's last token of the pass among
  // them): ranks, prunes and revives per sequence (see LazyOptions), leaving the next layer's
  // active tokens in act_pos_ / act_seq_ / x_ (in place, in no particular order) and their count
  // in *n.
  Status LazyPrune(uint32_t layer, uint32_t* n);
  // Whether attention over `layer` must skip positions (some position is pruned).
  bool Masking() const { return aux_ != nullptr && aux_->held() > 0; }
  Status Logits(uint32_t rows);
  // Scores layer l's neurons for the n tokens in xb_ into pred_scores_ and writes the positions
  // to read (any token above `logit_cut`) into fired_; returns how many. Counted in
  // predictor_stats_ when `count` (the predictor sparsity's own use), else in lookahead_flops_.
  uint32_t Predict(uint32_t l, uint32_t n, std::span<const uint32_t> permutation, float logit_cut,
                   bool count);
  // The lookahead of layer l (TransformerOptions::lookahead) for the n tokens in x_.
  Status LookAhead(uint32_t l, const LayerWeights& w, uint32_t n);
  void Rope(float* v, uint32_t n_heads, uint32_t pos) const;

  WeightStore& weights_;
  ThreadPool& pool_;
  layout::ModelConfig config_;
  uint32_t max_context_ = 0;
  uint32_t max_batch_ = 0;
  uint32_t logit_rows_max_ = 0;
  bool all_logits_ = false;
  uint32_t q_dim_ = 0, kv_dim_ = 0;
  FfnObserver* ffn_observer_ = nullptr;
  const AttentionPolicy* policy_ = nullptr;
  const PageSelectionPolicy* page_selection_ = nullptr;
  bool select_pages_ = false, select_shared_ = false;
  PageSelectStats page_stats_;
  std::unique_ptr<FlatKvCache> own_kv_;
  KvCache* kv_ = nullptr;
  std::unique_ptr<BundleFfnKernel> ffn_kernel_;  // when the store serves bundles
  uint64_t passes_ = 0;
  uint64_t attention_ns_ = 0;
  FfnSparsity sparsity_ = FfnSparsity::kDense;
  uint64_t ffn_computed_ = 0, ffn_total_ = 0;
  std::span<uint32_t> fired_;  // hidden: the positions that fire (kRelu, kThreshold)
  std::vector<float> thresholds_;  // kThreshold: [layer] cut
  std::shared_ptr<const layout::FfnPredictor> predictor_;  // kPredictor or lookahead
  float predictor_logit_cut_ = 0;  // kPredictor: the cut as a score (logit)
  bool lookahead_ = false;
  float lookahead_logit_cut_ = 0;  // lookahead: its cut as a score
  uint64_t lookahead_flops_ = 0;   // lookahead: the predictor's multiply-adds x 2
  std::span<float> pred_z_;        // kPredictor or lookahead: max_batch x rank
  std::span<float> pred_scores_;   // kPredictor or lookahead: max_batch x hidden (neuron order)
  PredictorStats predictor_stats_;

  Arena arena_;
  std::span<float> x_;        // max_batch x dim: residual stream
  std::span<float> xb_;       // max_batch x max(dim, q_dim): normed input
  std::span<float> q_;        // max_batch x q_dim
  std::span<float> k_;        // max_batch x kv_dim
  std::span<float> v_;        // max_batch x kv_dim
  std::span<float> att_out_;  // max_batch x q_dim
  std::span<float> proj_;     // max_batch x dim
  std::span<float> hb_;       // max_batch x hidden (gate; the observed h with bundles)
  std::span<float> hb2_;      // max_batch x hidden (up; dense FFN only)
  std::span<float> scores_;   // threads x (n_heads / n_kv_heads) x max_context
  std::span<uint32_t> selected_;  // threads x max_context (selection phase)
  bool selective_fetch_ = false;
  std::span<float> item_scores_;       // n_heads x max_context (selective fetch)
  std::span<uint32_t> item_selected_;  // n_heads x max_context (selective fetch)
  std::span<uint32_t> item_chosen_;    // n_heads (selective fetch)
  std::span<uint8_t> needed_;          // max_context: positions whose V is read (selective fetch);
                                       // pages whose K and V are read (select pages)
  std::span<float> logits_;   // logit_rows_max x vocab
  std::span<float> block_out_;  // logit_rows_max x classifier_block_rows (streamed classifier)
  std::span<float> rope_cos_;   // max_context x head_dim/2
  std::span<float> rope_sin_;   // max_context x head_dim/2
  ByteSpan scratch_;            // q8 activations (MatMulScratchBytes(widest, max_batch))
  std::span<uint32_t> positions_;  // max_batch: the convenience Forward's positions
  std::span<uint32_t> sequences_;  // max_batch: the convenience Forward's sequences
  std::span<uint32_t> seq_first_;  // max_sequences: first position of the sequence in the batch
  std::span<uint32_t> seq_next_;   // max_sequences: expected next position (UINT32_MAX: unseen)
  std::span<uint32_t> last_logit_;  // 1: the default logits_for
  // LazyLLM (TransformerOptions::lazy): the aux cache, per-layer kept fraction (0: not a pruning
  // layer), buffers, counters.
  std::unique_ptr<cache::LazyAuxCache> aux_;
  std::vector<float> lazy_fraction_;  // [layer]
  std::span<uint32_t> act_pos_;       // max_batch: active tokens' positions (rows of x_)
  std::span<uint32_t> act_seq_;       // max_batch: active tokens' sequences
  std::span<uint32_t> cand_pos_;      // max_batch: revival candidates' positions
  std::span<uint32_t> cand_seq_;      // max_batch: revival candidates' sequences
  std::span<uint32_t> lazy_rows_;     // logit rows: the active row of each wanted token
  std::span<float> importance_;       // max_context: head-averaged attention of the last token
  std::span<float> imp_row_;          // max_context: one head's probabilities
  std::span<uint32_t> order_;         // max_context: ranking candidates
  std::span<uint8_t> keep_mask_;      // max_context
  std::vector<uint64_t> layer_tokens_;
  uint64_t pass_tokens_ = 0, flops_ = 0, dense_flops_ = 0;
  uint64_t token_layer_flops_ = 0;  // matmul FLOPs of one token through one layer
};

}  // namespace flashlm::engine

#endif  // FLASHLM_ENGINE_TRANSFORMER_H_
