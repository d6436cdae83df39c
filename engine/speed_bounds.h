// Speed bounds: what one decode token costs under a residency plan, and the tokens/s that DRAM
// bandwidth and flash bandwidth each allow. The design brief's arithmetic as code:
//   DRAM-bound  tok/s = DRAM bandwidth / bytes touched per token
//                       (every weight used, the KV cache at the context; the embedding: one row)
//   flash-bound tok/s = 1 / sum over the streams of (bytes streamed per token / flash bandwidth
//                       at that stream's read size)
// and the KV cache by the brief's formula, 2 (K, V) x bytes per value x context x KV width x
// layers (KV width = kv heads x head dim: the model's width without GQA, as in the brief).
// With sparsity (fire_fraction < 1) the FFN's bytes scale by the fraction of neurons that fire,
// and a streamed FFN is read in runs of neighbouring firing bundles: 1 / (1 - f) bundles long on
// average when neurons fire independently with probability f. Dense streams are read in ascending
// file order and take the profile's sequential rate at their read size; sparse bundle runs are
// scattered and take its random rate; each at the reads its buffers keep in flight (the FFN:
// chunk buffers x reads per chunk; a streamed layer: its reads; the classifier: two blocks'; an
// embedding row: one). Pure functions; thread-safe.
#ifndef FLASHLM_ENGINE_SPEED_BOUNDS_H_
#define FLASHLM_ENGINE_SPEED_BOUNDS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "engine/residency_plan.h"
#include "engine/store_weights.h"
#include "layout/dtype.h"
#include "layout/model_config.h"
#include "storage/read_probe.h"

namespace flashlm::engine {

// Bytes per cached K or V value: f32 4, f16 2, q8_0 34/32 (block scales included), and the
// brief's "int8" (1 byte, no scales) for comparison.
double KvValueBytes(layout::DType dtype);
// 2 x value_bytes x context x (kv heads x head dim) x layers, for `sequences` sequences.
double KvCacheBytes(const layout::ModelConfig& config, uint64_t context, double value_bytes,
                    uint64_t sequences = 1);

// One stream of reads from flash in a decode step.
struct FlashStream {
  std::string what;         // "attention", "FFN bundles", "classifier", "embedding rows"
  double bytes = 0;         // per token
  double read_bytes = 0;    // the size its reads come in
  bool sequential = true;   // in ascending file order (dense streaming), else scattered
  double depth = 1;         // reads in flight
  // Read while the previous work computes (read ahead). false: the reads can only start when the
  // token gets there, and compute waits for them (an embedding row; a sparse FFN's bundles, known
  // only once the layer's gate is computed).
  bool overlapped = true;
  double mib_per_s = 0;     // the profile's bandwidth at that size (0 without a profile)
};

struct DecodeCost {
  double weight_bytes = 0;   // weights touched per token (DRAM), the embedding as one row
  double kv_bytes = 0;       // KV cache read per token at the context
  double flash_bytes = 0;    // streamed per token, sum of `streams`
  std::vector<FlashStream> streams;
};

struct CostOptions {
  uint64_t context = 0;       // positions the KV cache holds when the token is decoded
  double kv_value_bytes = 4;  // KvValueBytes of the cache's dtype
  uint64_t batch = 1;         // sequences decoded together (weights read once for all)
  double fire_fraction = 1;   // FFN neurons that fire, in (0, 1]; 1: dense
};

// What a token costs under `plan` for a store whose parts measured `needs`.
DecodeCost CostOfToken(const layout::ModelConfig& config, const StoreNeeds& needs,
                       const ResidencyPlan& plan, const CostOptions& options);

struct SpeedBounds {
  double dram_tok_s = 0;    // aggregate over the batch
  double flash_tok_s = 0;   // 0: nothing streams, or no profile
  double dram_seconds = 0, flash_overlapped_seconds = 0, flash_serial_seconds = 0;  // per step
  // max(DRAM time, overlapped flash time) + serial flash time, per step.
  double tok_s = 0;
  double serial_tok_s = 0;  // no read overlapped: 1 / (DRAM time + flash time)
  std::string binding;      // "DRAM bandwidth" or "flash bandwidth"
};
// The same bound for a DRAM rate given per step (`dram_seconds`), e.g. one decode calibrated.
double BoundTokS(double dram_seconds, double flash_overlapped_seconds, double flash_serial_seconds,
                 bool pipelined, uint64_t batch);

// `profile` may be null (flash bound unknown). dram_gbps: usable DRAM bandwidth in GB/s (1e9).
SpeedBounds BoundSpeed(DecodeCost& cost, double dram_gbps, const storage::FlashProfile* profile,
                       uint64_t batch);

}  // namespace flashlm::engine

#endif  // FLASHLM_ENGINE_SPEED_BOUNDS_H_
