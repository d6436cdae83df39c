// ClassifierStream: the classifier (output.weight, vocab x dim) served in row blocks read from
// flash, for budgets that cannot hold it: one extent (rows_per_extent rows) at a time through two
// buffers, each read straight into its buffer through the store's ExtentReader and verified there.
//
// Prefetch() starts reading the first two extents (the store calls it when the last layer's
// matrices are released, so they land while the last FFN computes). A pass is Begin() then
// Next() until it returns false; with pipelining, handing out block k frees the buffer of block
// k - 1, which then receives block k + 1 while k computes; without, each block is read when it
// is needed. A block's view lives until the next Next() or Begin().
// Only uncompressed extents of whole rows can stream (Measure says whether they do).
// Nothing allocates after Open. Not thread-safe: the forward pass's owner thread.
#ifndef FLASHLM_ENGINE_CLASSIFIER_STREAM_H_
#define FLASHLM_ENGINE_CLASSIFIER_STREAM_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "engine/kernels.h"
#include "layout/extent_reader.h"
#include "layout/store_reader.h"
#include "storage/aligned_buffer.h"
#include "storage/status.h"

namespace flashlm::engine {

struct ClassifierLayout {
  bool streamable = false;
  uint64_t tensor_bytes = 0;       // the matrix itself (what a token reads)
  uint64_t resident_bytes = 0;     // the classifier held in DRAM (its buffer's huge pages)
  uint64_t buffer_bytes = 0;       // one of the two buffers
  uint32_t rows_max = 0;           // rows per block
  uint32_t reads_per_block = 0;    // reads of one block, at most
};

class ClassifierStream {
 public:
  // Errors: Corruption (shape), NotSupported (dtype). A store without output.weight (tied) has
  // nothing to stream: streamable false, resident_bytes 0.
  static Result<ClassifierLayout> Measure(layout::StoreReader& reader);
  // DRAM the two buffers take.
  static uint64_t StreamBytes(const ClassifierLayout& layout);
  // Takes two read groups of the reader's ExtentReader. Precondition: layout.streamable.
  static Result<std::unique_ptr<ClassifierStream>> Open(layout::StoreReader& reader,
                                                        const ClassifierLayout& layout,
                                                        bool pipeline);
  ~ClassifierStream();

  uint32_t rows_max() const { return layout_.rows_max; }
  // Starts reading the first blocks (what is already in flight or landed is kept).
  // Errors: IoError from submitting.
  Status Prefetch();
  Status Begin();
  // The next block: rows [*first_row, *first_row + block->rows) of the classifier; false after
  // the last. Errors: IoError, Corruption (naming the extent), with "classifier".
  Result<bool> Next(MatrixView* block, uint32_t* first_row);

 private:
  struct Slot {
    ByteSpan buffer;
    uint32_t group = 0;
    int64_t extent = -1;  // which extent it holds or receives; -1 = free
    bool landed = false;
    layout::ExtentPlan plan;
  };
  ClassifierStream(layout::StoreReader& reader) : reader_(reader) {}
  Status Queue(Slot& slot, uint32_t extent);
  void Reset();

  layout::StoreReader& reader_;
  layout::ExtentReader* extents_ = nullptr;
  ClassifierLayout layout_;
  layout::TensorInfo info_;
  std::vector<layout::Extent> extents_list_;
  storage::AlignedBuffer memory_;
  Slot slots_[2];
  uint32_t next_ = 0, row_ = 0;  // the current pass: next extent, its first row
  bool holding_ = false;
  bool pipeline_ = true;
};

}  // namespace flashlm::engine

#endif  // FLASHLM_ENGINE_CLASSIFIER_STREAM_H_
