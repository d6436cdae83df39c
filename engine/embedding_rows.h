// EmbeddingRows: rows of the token embedding (token_embd.weight, vocab x dim), resident in DRAM
// or, when the residency plan says so, read from flash on demand one extent (a few rows: repack
// writes the embedding in small extents) at a time into one buffer, verified there. The extent
// last read is kept, so tokens that share it cost one read.
// Nothing allocates after Open. Not thread-safe: the forward pass's owner thread.
#ifndef FLASHLM_ENGINE_EMBEDDING_ROWS_H_
#define FLASHLM_ENGINE_EMBEDDING_ROWS_H_

#include <cstdint>
#include <memory>
#include <span>

#include "engine/kernels.h"
#include "layout/extent_reader.h"
#include "layout/store_reader.h"
#include "storage/aligned_buffer.h"
#include "storage/status.h"

namespace flashlm::engine {

struct EmbeddingLayout {
  uint64_t resident_bytes = 0;  // the whole embedding in DRAM
  uint64_t demand_bytes = 0;    // the on-demand buffer (0: rows cannot be read on demand)
  uint32_t reads_max = 0;       // reads of one extent
};

class EmbeddingRows {
 public:
  // Errors: NotFound (no token_embd.weight), Corruption (shape or layout), NotSupported (dtype).
  static Result<EmbeddingLayout> Measure(layout::StoreReader& reader);
  // Loads the embedding (resident) or allocates the on-demand buffer and takes one read group.
  static Result<std::unique_ptr<EmbeddingRows>> Open(layout::StoreReader& reader,
                                                     const EmbeddingLayout& layout, bool resident);
  ~EmbeddingRows();

  bool on_demand() const { return !resident_; }
  // The whole matrix; empty when on demand (a tied classifier needs it resident).
  const MatrixView& matrix() const { return matrix_; }
  // Writes row `token` (dequantised) into out (dim floats). Precondition: token < vocab.
  // Errors: IoError, Corruption naming the extent.
  Status Row(uint32_t token, std::span<float> out);

 private:
  EmbeddingRows(layout::StoreReader& reader) : reader_(reader) {}

  layout::StoreReader& reader_;
  layout::ExtentReader* extents_ = nullptr;
  bool resident_ = true;
  layout::TensorInfo info_;
  layout::TensorRecord record_;
  uint64_t row_bytes_ = 0;
  storage::AlignedBuffer memory_;  // the matrix, or one extent
  MatrixView matrix_;
  uint32_t group_ = 0;
  layout::ExtentPlan plan_;
  uint64_t held_extent_ = UINT64_MAX;  // which extent memory_ holds (on demand)
  const std::byte* held_rows_ = nullptr;
  uint64_t held_row_count_ = 0;
};

}  // namespace flashlm::engine

#endif  // FLASHLM_ENGINE_EMBEDDING_ROWS_H_
