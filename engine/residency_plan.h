// Residency planning: what stays in DRAM and what streams from flash under a byte budget.
//
// The one place that splits a memory budget. engine::Session gathers the inputs: what the engine
// always holds (Transformer::BytesNeeded, the KV cache, the tokenizer) and what the store's
// components report (StoreWeights::Measure: norms, catalog and read tables always; the embedding
// and classifier resident or through their streaming buffers; each layer's dense matrices
// (attention, plus ffn_gate when bundles omit it); each layer's FFN bundles, count x DRAM per
// pinned bundle; the chunk and dense streaming buffers). PlanResidency decides, in this order of
// priority:
//  1. everything resident when it fits (or when the budget is 0 = unlimited): nothing streams;
//  2. otherwise the embedding is read on demand (when it may be), chunk_buffers_min streaming
//     buffers for FFN chunks (chunk_bundles bundles each) are reserved, and the classifier
//     stays resident unless only streaming it (when it may be) lets the budget run at all;
//     then further chunk buffers up to chunk_buffers (read-ahead depth; room for one streamed
//     dense layer is kept), dense layers pinned as far as they fit, the streamed ones spread
//     evenly over the pass (one buffer for a streamed dense layer is reserved when any does not), and the rest pins the first
//     bundles of every layer (hot-first stores put the most frequently firing neurons there):
//     each layer's hot set first (evenly while they do not all fit), then evenly across layers;
//     with cache_fraction > 0, that fraction of what is left after the hot sets becomes slots of
//     the neuron cache's LRU (streamed bundles of a sparse FFN admitted as they are read, see
//     NeuronSource) instead of more pinned bundles.
// The minimum budget is the always-resident bytes plus the least streaming buffers; a smaller
// budget is InvalidArgument (a bad input) naming the minimum. Plain values and a pure function;
// thread-safe.
#ifndef FLASHLM_ENGINE_RESIDENCY_PLAN_H_
#define FLASHLM_ENGINE_RESIDENCY_PLAN_H_

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "storage/status.h"

namespace flashlm::engine {

struct ResidencyInputs {
  uint64_t budget_bytes = 0;  // 0: unlimited
  uint64_t fixed_bytes = 0;   // always resident (the embedding and classifier excluded)
  // The token embedding: resident when everything fits, else (when embedding_demand_bytes is
  // not 0) read a row extent at a time on demand through a buffer of embedding_demand_bytes.
  uint64_t embedding_bytes = 0;
  uint64_t embedding_demand_bytes = 0;  // 0: must stay resident (e.g. tied to the classifier)
  // The classifier: resident unless the budget cannot hold it with the least streaming buffers;
  // then (when classifier_demand_bytes is not 0) streamed through buffers of that size.
  uint64_t classifier_bytes = 0;
  uint64_t classifier_demand_bytes = 0;     // 0: must stay resident
  std::vector<uint64_t> dense_layer_bytes;  // [layer]
  std::vector<uint32_t> layer_bundles;      // [layer] neurons
  // [layer] hot-set size (positions [0, n) of a hot-first store; empty or 0: none). Pinned first.
  std::vector<uint32_t> layer_hot;
  uint64_t bundle_spacing_bytes = 0;  // DRAM bytes per pinned bundle (its slot and bookkeeping)
  uint64_t chunk_buffer_bytes = 0;    // one FFN streaming buffer (0: chunk_bundles x spacing)
  // The chunk buffers are one allocation, and so are the pinned attention layers; from this size
  // up each is rounded up to a multiple of it (transparent huge pages). 0: no rounding.
  uint64_t huge_page_bytes = 0;
  uint32_t chunk_bundles = 256;  // bundles per FFN streaming chunk
  // Share of the bundle bytes left after the hot sets that goes to the LRU cache, in [0, 1]
  // (0: all pinned, the dense FFN's choice: it reads every bundle every pass).
  double cache_fraction = 0;
  // FFN chunk buffers: at least chunk_buffers_min (2 when the next chunk is read while one
  // computes), more up to chunk_buffers when the budget allows (deeper read-ahead).
  uint32_t chunk_buffers_min = 1;
  uint32_t chunk_buffers = 1;
  // Buffer for one streamed dense layer (0: the largest dense_layer_bytes); larger when reads
  // land with the store's padding and are closed up afterwards.
  uint64_t dense_stream_bytes_max = 0;
  // What each part of fixed_bytes is, for Describe() (the parts add up to fixed_bytes).
  std::vector<std::pair<std::string, uint64_t>> fixed_parts;
};

struct ResidencyPlan {
  uint64_t budget_bytes = 0;
  uint64_t fixed_bytes = 0;  // the embedding (or its on-demand buffer) included
  bool embedding_resident = true;
  bool classifier_resident = true;
  std::vector<uint8_t> dense_pinned;     // [layer] 1 = resident
  std::vector<uint32_t> pinned_bundles;  // [layer] positions [0, n) resident
  uint64_t pinned_dense_bytes = 0;
  uint64_t pinned_bundle_bytes = 0;
  uint64_t pinned_hot = 0, hot_total = 0;  // hot-set neurons pinned, and in the store
  uint32_t cache_bundles = 0;              // LRU slots for streamed bundles
  uint64_t cache_bytes = 0;                // their DRAM (cache_bundles x bundle spacing)
  uint64_t dense_stream_bytes = 0;         // buffer for one streamed dense layer (0: none streams)
  uint64_t chunk_stream_bytes = 0;         // buffers for FFN chunks (0: no bundle streams)
  uint32_t chunk_bundles = 0;
  uint32_t chunk_buffers = 0;  // chunk_stream_bytes holds this many chunks
  uint64_t model_bytes = 0;    // dense + bundles, all layers
  uint64_t minimum_bytes = 0;  // smallest budget that runs
  std::vector<std::pair<std::string, uint64_t>> fixed_parts;  // from the inputs

  uint64_t total_bytes() const {
    return fixed_bytes + pinned_dense_bytes + pinned_bundle_bytes + cache_bytes +
           dense_stream_bytes + chunk_stream_bytes;
  }
  bool streams() const { return dense_stream_bytes != 0 || chunk_stream_bytes != 0; }
  // Human-readable, several lines (printed by generate/perplexity).
  std::string Describe() const;
};

// Errors: InvalidArgument when budget_bytes is below the minimum (the message names it),
// InvalidArgument for inconsistent inputs (layer counts differ, zero spacing or chunk).
Result<ResidencyPlan> PlanResidency(const ResidencyInputs& in);

}  // namespace flashlm::engine

#endif  // FLASHLM_ENGINE_RESIDENCY_PLAN_H_
