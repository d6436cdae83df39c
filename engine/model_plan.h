// ModelPlan: what `flashlm plan` knows about a model before running it — its config, its weights
// by tensor group, and what its store needs from a budget (StoreNeeds) — for a store (measured
// from its catalog, exactly as Session::Open measures it), a checkpoint (GGUF, HF folder,
// llama2.c .bin: estimated as repack would store it, layout::PlanStoreShape) or a named shape
// (layout::SynthShape: "tiny", "15m", "110m", "1b", "7b", estimated likewise, all matrices in
// one dtype). Nothing but the catalog or the checkpoint's header is read. Not thread-safe.
#ifndef FLASHLM_ENGINE_MODEL_PLAN_H_
#define FLASHLM_ENGINE_MODEL_PLAN_H_

#include <cstdint>
#include <string>
#include <vector>

#include "engine/session.h"
#include "engine/speed_bounds.h"
#include "engine/store_weights.h"
#include "layout/model_config.h"
#include "layout/repack.h"
#include "storage/status.h"

namespace flashlm::engine {

struct WeightGroup {
  std::string name;   // "embedding", "attention", "FFN bundles", "FFN gate", "classifier", "norms"
  std::string dtype;  // "q8_0", or "f32+q8_0" for a group of several
  uint64_t tensors = 0;
  uint64_t values = 0;
  uint64_t bytes = 0;  // as stored, padding excluded
};

struct ModelPlan {
  std::string kind;     // "store", "gguf", "safetensors", "llama2c", "shape"
  std::string source;   // the path or the shape name
  bool measured = false;  // true for a store (its catalog), false for an estimate
  layout::ModelConfig config;
  std::vector<WeightGroup> groups;
  uint64_t weight_bytes = 0;     // sum of the groups
  uint64_t parameters = 0;       // values in the groups
  uint64_t flash_bytes = 0;      // data on flash, alignment padding included
  uint64_t tokenizer_bytes = 0;  // DRAM of the tokenizer (0 for a shape: it has none)
  StoreNeeds needs;
  uint64_t store_identity = 0;  // kind "store": its identity (side files must belong to it)
  std::string probe_file;  // a large file on the model's device to measure reads on ("": none)
};

struct ModelPlanOptions {
  std::string shape;             // a named shape instead of a path
  layout::RepackOptions repack;  // dtype, bundle kind, alignment: how a checkpoint would be stored
  std::string tokenizer_path;    // for a llama2.c .bin or a store without a vocabulary
  StreamingOptions streaming;
};

// `path` is ignored when options.shape is set. Errors: NotFound (no such file or shape),
// InvalidArgument (options), and the readers' errors (Corruption, NotSupported).
Result<ModelPlan> PlanModel(const std::string& path, const ModelPlanOptions& options);

// A decode step under a budget, predicted: the residency plan Session::Open would make
// (PlanSession; for a store, with the side files the options ask for loaded as the session loads
// them: LoadStoreSideFiles), what a token costs under it and the speed that allows.
struct Prediction {
  SessionPlan session;
  DecodeCost cost;
  SpeedBounds bounds;
};
// `threads`: the pool size the session would have. `profile` may be null. Errors:
// LoadStoreSideFiles' (a store asked to run with a predictor it lacks), PlanSession's
// (ResourceExhausted for a budget below the minimum, naming it).
Result<Prediction> Predict(const ModelPlan& model, const SessionOptions& session, uint32_t threads,
                           const CostOptions& cost, double dram_gbps,
                           const storage::FlashProfile* profile);

// The smallest read size at which `profile`'s deepest curve reaches `fraction` of its best
// bandwidth (sequential reads where measured: a dense stream's).
uint64_t ReadBytesReaching(const storage::FlashProfile& profile, double fraction);

// Usable DRAM read bandwidth in GB/s (1e9), measured on the spot: a ThreadPool of `threads`
// threads summing a `bytes` buffer on huge pages, best of three passes after one that wakes
// the pool. 0 if the buffer cannot be had.
double MeasureDramReadGBps(uint32_t threads, uint64_t bytes = 256ull << 20);

}  // namespace flashlm::engine

#endif  // FLASHLM_ENGINE_MODEL_PLAN_H_
