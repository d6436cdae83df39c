// StoreWeights: the WeightStore over a flashlm store (layout::StoreReader), under a memory budget.
//
// It is an assembly of the parts that each serve one kind of weight, all reading through the
// store's one ExtentReader:
//   EmbeddingRows     token_embd rows: resident, or read on demand an extent at a time
//   AttentionStream   each layer's q, k, v, o (and a dense FFN gate): pinned, or streamed into one
//                     buffer, the next streamed layer read ahead
//   NeuronSource      FFN neuron bundles: pinned in a cache::NeuronCache, or streamed in chunks
//                     through a ring of buffers, read ahead across layers and passes
//   ClassifierStream  output.weight, when the budget cannot hold it: row blocks through two
//                     buffers, the first read during the last layer's FFN
// plus the norms (always resident). What is pinned and what streams comes from a ResidencyPlan:
// Measure() reports what the store needs (the store's part of ResidencyInputs), the caller
// (engine::Session) adds the engine's own bytes and the budget and plans, Open() builds the
// parts per the plan. The forward pass computes; this only serves bytes, and starts reads ahead
// when the Transformer's lifecycle calls (weights.h) say memory is free.
// Not thread-safe: one forward pass uses one store.
#ifndef FLASHLM_ENGINE_STORE_WEIGHTS_H_
#define FLASHLM_ENGINE_STORE_WEIGHTS_H_

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "engine/arena.h"
#include "engine/attention_stream.h"
#include "engine/classifier_stream.h"
#include "engine/embedding_rows.h"
#include "engine/neuron_source.h"
#include "engine/residency_plan.h"
#include "engine/weights.h"
#include "layout/repack.h"
#include "layout/store_reader.h"
#include "storage/status.h"

namespace flashlm::engine {

struct StreamingOptions {
  uint32_t chunk_bundles = 256;  // FFN bundles per streamed chunk
  uint32_t chunk_buffers = 4;    // read-ahead depth when pipelining, in [2, kChunkBuffersMax]
  // Keep reads in flight while computing: the next FFN chunks, the next streamed layer's
  // attention, the classifier's first blocks. false: every read is waited for when needed (the
  // naive mode, for comparison).
  bool pipeline = true;
  // Merge neighbouring bundles into one read. false: one read per bundle (the small-read case).
  bool coalesce = true;
  // Read every bundle as one read per matrix row it holds, none merged: what separate gate, up
  // and down matrices would cost in reads (the ablation of bundling; --split-bundle-reads).
  bool split_bundle_reads = false;
  // A sparse FFN's misses: merged across gaps of at most this many bytes (--merge-gap;
  // NeuronSourceOptions::kGapOneStride: one bundle stride). The default was measured on a 1b
  // q8_0 ReLU model against 0, one stride (4.5 KiB) and 64 KiB (docs/benchmarks.md, "ablation
  // ladder"): larger reads climb the disk's curve (4 KiB reads reach a third of 16 KiB ones'
  // bandwidth at depth 32) for 1.5x the bytes.
  uint64_t merge_gap_bytes = kDefaultMergeGapBytes;
  static constexpr uint64_t kDefaultMergeGapBytes = 16 << 10;
  // Share of the bundle bytes beyond the hot sets given to the LRU cache of streamed bundles
  // (ResidencyInputs::cache_fraction); Session sets it for sparse modes (--cache-share).
  double cache_fraction = 0;
  uint32_t window_passes = 0;  // the cache's sliding window (--window), in passes
  // The FFN is dense (every neuron, every pass): keep the pinned bundles' parts regrouped
  // (NeuronSourceOptions::regroup_pinned); Session sets it when no sparse mode is on, and
  // regroup_threads to the threads the FFN runs on.
  bool regroup_pinned = false;
  uint32_t regroup_threads = 1;
};

// What a store needs from a budget, from its catalog alone (StoreWeights::Measure).
struct StoreNeeds {
  ResidencyInputs inputs;  // the store's part: everything but the budget and the engine's bytes
  AttentionLayout attention;
  ClassifierLayout classifier;
  EmbeddingLayout embedding;
  layout::BundleGeometry bundles;
  uint64_t read_max_bytes = 0;  // one read, at most
  bool coalesced = false;       // neighbouring bundles merged into one read
};

struct StoreCounters {
  layout::ReadCounters reads;
  NeuronStats neurons;
};

class StoreWeights final : public WeightStore {
 public:
  // Checks that the engine can run the store (config, bundles for every layer, dtypes), measures
  // what it needs and sets the ExtentReader's limits for the parts. Errors: InvalidArgument
  // (options, config), NotSupported (no bundles, a dtype the kernels lack), NotFound/Corruption
  // (missing or misshapen tensors).
  static Result<StoreNeeds> Measure(layout::StoreReader& reader, const StreamingOptions& options);
  // The same for a store that does not exist yet, as repack would lay it out (flashlm plan):
  // the parts' layouts derived from the shape by the rules their Measure functions apply to a
  // catalog, no hot set. Tested against
  // Measure on repacked stores. `read_alignment_bytes`: the O_DIRECT alignment the data file
  // would be read at (1: buffered; at most the store's alignment). Errors: InvalidArgument
  // (options, config, alignment), NotFound (a missing tensor), NotSupported (a dtype the kernels
  // lack).
  static Result<StoreNeeds> Estimate(const layout::StoreShape& shape,
                                     const StreamingOptions& options,
                                     uint64_t read_alignment_bytes = 4096);
  // Builds the parts per `plan` (from `needs`) and loads what it pins. Errors: the reader's
  // (IoError, Corruption naming the extent), ResourceExhausted.
  static Result<std::unique_ptr<StoreWeights>> Open(std::unique_ptr<layout::StoreReader> reader,
                                                    const StoreNeeds& needs,
                                                    const ResidencyPlan& plan,
                                                    const StreamingOptions& options);
  ~StoreWeights() override;

  const layout::ModelConfig& config() const override { return reader_->config(); }
  Status EmbedToken(uint32_t token, std::span<float> out) override {
    return embedding_->Row(token, out);
  }
  std::span<const float> output_norm() const override { return output_norm_; }
  const MatrixView& classifier() const override { return classifier_; }
  ClassifierStream* classifier_stream() override { return classifier_stream_.get(); }
  NeuronSource* neurons() override { return neurons_.get(); }
  Result<LayerWeights> AcquireLayer(uint32_t layer) override;
  Status ReleaseMatrices(uint32_t layer) override;

  layout::StoreReader& reader() { return *reader_; }
  const ResidencyPlan& plan() const { return plan_; }
  bool embedding_on_demand() const { return embedding_->on_demand(); }
  bool classifier_streamed() const { return classifier_stream_ != nullptr; }
  bool attention_prefetched() const { return attention_->prefetching(); }
  bool pipelined() const { return neurons_->pipelined(); }
  // True when neighbouring bundles are merged into one read (asked for, and worth it).
  bool coalesced() const { return neurons_->coalesced(); }
  bool split_reads() const { return neurons_->split_read_bytes() != 0; }
  StoreCounters counters() const;
  void ResetCounters();

 private:
  StoreWeights() = default;

  std::unique_ptr<layout::StoreReader> reader_;
  ResidencyPlan plan_;
  bool pipeline_ = false;
  std::unique_ptr<EmbeddingRows> embedding_;
  std::unique_ptr<AttentionStream> attention_;
  std::unique_ptr<NeuronSource> neurons_;
  std::unique_ptr<ClassifierStream> classifier_stream_;
  storage::AlignedBuffer classifier_memory_;  // a resident output.weight
  MatrixView classifier_;
  Arena norms_;                                      // output_norm, then per layer attn, ffn
  std::span<const float> output_norm_;               // dim
  std::vector<std::span<const float>> layer_norms_;  // [2 * layer + (0 attention, 1 FFN)]
};

}  // namespace flashlm::engine

#endif  // FLASHLM_ENGINE_STORE_WEIGHTS_H_
