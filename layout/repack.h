// Repack: turns any layout::Checkpoint into a flashlm store (store_format.h).
//
// Streams tensor by tensor: at any time it holds one dense tensor (source bytes plus one
// converted extent), or one layer's FFN (gate and up in their source dtype, down as f32), never
// the whole model. Dense tensors are cut into extents of at most dense_extent_bytes_max (whole
// rows); FFN layers become neuron bundles (bundle_layout.h), hot-first when activation
// statistics are given. Writes through StoreWriter, so a failure at any point leaves neither
// `out` nor a temp folder. Not thread-safe; `source` is read sequentially.
//
// dtypes: 2-D weights are stored in `dtype` (default: the source dtype when it is f32, f16, q8_0,
// q4_0, q4_K or q6_K, else f32); 1-D tensors (norms) always f32. A conversion dequantises each
// row to f32 and quantises it again, so a same-dtype copy is bit-exact. A layer's bundles have
// one dtype, up's: ffn_down columns are always re-quantised into it (block formats run along
// rows): exact for f32 and f16, within one quantisation step of the source for q8_0 / q4_0 /
// q4_K / q6_K. A Q4_K_M file (up q4_K, down q6_K) therefore has its down columns in q4_K, each
// column of `dim` values one q4_K row (ceil(dim / 256) super-blocks, the tail zero-padded).
#ifndef FLASHLM_LAYOUT_REPACK_H_
#define FLASHLM_LAYOUT_REPACK_H_

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "layout/checkpoint.h"
#include "layout/dtype.h"
#include "layout/store_format.h"
#include "storage/status.h"

namespace flashlm::layout {

struct RepackProgress {
  uint64_t done_bytes = 0;   // source tensor bytes processed so far
  uint64_t total_bytes = 0;  // all source tensor bytes
  std::string_view tensor;   // the tensor just finished; valid during the callback
};

struct RepackOptions {
  std::optional<DType> dtype;  // see above; f32, f16, q8_0, q4_0, q4_K or q6_K
  // Extent alignment. `flashlm repack` passes storage::DirectIoAlignmentIn(OUT's folder) unless
  // --align is given; 4096 here suits any device.
  uint64_t alignment_bytes = 4096;
  BundleKind bundle_kind = BundleKind::kGateUpDown;
  std::string activations_path;  // bundle_layout.h's JSON; empty: natural neuron order
  // With activations: a layer's hot set is its neurons with frequency >= hot_threshold, stored
  // first (positions [0, hot count)); the count goes to "hot/<layer>". In [0, 1].
  double hot_threshold = 0.5;
  Codec codec = Codec::kNone;
  int zstd_level = 3;
  double zstd_min_saving = 0.10;
  uint64_t dense_extent_bytes_max = 4u << 20;
  // token_embd.weight in smaller extents: the engine reads embedding rows on demand, one extent
  // per lookup, when the embedding is not resident.
  uint64_t embedding_extent_bytes_max = 64u << 10;
  std::string source_path;  // recorded (with its XXH3-64) in the provenance; may be empty
  std::function<void(const RepackProgress&)> progress;
};

struct RepackSummary {
  uint64_t tensors = 0;
  uint64_t extents = 0;
  uint64_t source_bytes = 0;  // tensor bytes read from the checkpoint
  uint64_t raw_bytes = 0;     // extent bytes before compression
  uint64_t stored_bytes = 0;  // extent bytes on flash, padding excluded
  uint64_t file_bytes = 0;    // data file size, padding included
  uint64_t bundle_bytes = 0;  // one FFN bundle (0 when the model has none)
  uint64_t bundle_stride_bytes = 0;
  uint64_t compressed_extents = 0;
  std::vector<uint32_t> hot_counts;  // by FFN layer, with activations; empty without
  double seconds = 0;
  // Fraction of the data file that is alignment padding.
  double padding_ratio() const {
    return file_bytes == 0 ? 0.0 : double(file_bytes - stored_bytes) / double(file_bytes);
  }
};

// The dtype Repack stores tensor `t` in under `options` (see above).
DType StoredDType(const TensorInfo& t, const RepackOptions& options);
// Rows per extent of a dense tensor stored as `stored`: whole rows, at most the option's extent
// size for that tensor, at least one row; and, where at least that many fit, a multiple of the
// rows that fill a whole number of alignment units (so the tensor's extents abut).
uint64_t RowsPerExtent(const TensorInfo& stored, const RepackOptions& options);

// A store as Repack would lay it out, from a checkpoint's config and tensor directory alone (no
// tensor is read): what `flashlm plan` sizes before anything is repacked. The dtype and extent
// rules are the ones Repack itself uses (StoredDType, RowsPerExtent).
struct StoreShape {
  ModelConfig config;
  std::vector<TensorInfo> dense;  // every tensor but ffn_up/ffn_down (and ffn_gate in bundles)
  std::vector<uint64_t> rows_per_extent;  // [i] of dense[i]
  DType ffn_dtype = DType::kF32;          // the bundles'
  BundleKind bundle_kind = BundleKind::kGateUpDown;
  uint64_t alignment_bytes = 4096;
  uint64_t vocab_bytes = 0;  // tokens, scores, types and merges as the catalog holds them
  // nullptr when absent.
  const TensorInfo* Find(std::string_view name) const;
};
// Errors: InvalidArgument (options as Repack checks them, a tensor missing or misshapen).
Result<StoreShape> PlanStoreShape(const ModelConfig& config, const std::vector<TensorInfo>& tensors,
                                  const Vocab& vocab, const RepackOptions& options);

// Errors: InvalidArgument (bad options, `out` exists, activation stats of the wrong shape),
// NotSupported (an FFN of unexpected shape), and whatever reading `source` or writing fails with.
Result<RepackSummary> Repack(Checkpoint& source, const std::string& out,
                             const RepackOptions& options);

}  // namespace flashlm::layout

#endif  // FLASHLM_LAYOUT_REPACK_H_
