// AttentionStream: each layer's dense matrices — attention q, k, v, o, and the FFN gate when the
// bundles leave it out (gate+up-down bundles) — resident where the residency plan pinned the
// layer, otherwise read from flash into one buffer when the forward pass needs them.
//
// A streamed layer's extents are planned once at Open (merged into a few large reads through the
// store's ExtentReader), land in the buffer and are verified there. When each tensor's extents
// land back to back (stores whose dense extents are whole alignment units, layout/repack.h
// RowsPerExtent) the matrices are used where they landed; otherwise each tensor's extents are
// closed up (the store's padding removed, front to back, so a move never overwrites bytes not
// yet moved) into a contiguous matrix. With pipelining, Release(l) — the forward pass is
// done with layer l's matrices — starts reading the next streamed layer (cyclically, into the
// next pass) into the buffer, so Acquire rarely waits; and once that read has landed, its extents
// are verified piece by piece (kVerifySliceBytes at a time) while the reader waits for other
// reads (ExtentReader::AddIdleWork: the FFN bundles' waits), so that Acquire has little or nothing
// left to hash. A mismatch found then is kept and returned by Acquire, as one found there would
// be: the bytes are used only after every extent of the layer is verified. When a streamed
// layer's extents are
// compressed, or not stored in tensor order, layers are read synchronously instead
// (ExtentReader::ReadExtents into the buffer, decoding as needed).
// Views from Acquire(l) stay valid until Release(l). Nothing allocates after Open.
// Not thread-safe: the forward pass's owner thread.
#ifndef FLASHLM_ENGINE_ATTENTION_STREAM_H_
#define FLASHLM_ENGINE_ATTENTION_STREAM_H_

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "engine/kernels.h"
#include "layout/extent_reader.h"
#include "layout/store_reader.h"
#include "storage/aligned_buffer.h"
#include "storage/checksum.h"
#include "storage/status.h"

namespace flashlm::engine {

// What the stream needs, known before the plan (from the catalog alone).
struct AttentionLayout {
  bool dense_gate = false;             // the FFN gate is a dense matrix of each layer
  std::vector<uint64_t> layer_bytes;   // [layer] DRAM of the layer's matrices, resident
  uint64_t stream_buffer_bytes = 0;    // the buffer one streamed layer needs
  uint32_t reads_max = 0;              // reads of one streamed layer, at most
  bool in_place = true;                // streamed layers are read straight into the buffer
};

class AttentionStream {
 public:
  struct Matrices {
    MatrixView wq, wk, wv, wo;
    MatrixView gate;  // with dense_gate only
  };

  // Checks every layer's matrices (shapes from the config, dtypes the kernels multiply) and
  // measures them. Errors: NotFound (a missing tensor), Corruption (shape), NotSupported (dtype).
  static Result<AttentionLayout> Measure(layout::StoreReader& reader, bool dense_gate);
  // DRAM of the stream's buffer when some layer streams (0 when none does).
  static uint64_t StreamBytes(const AttentionLayout& layout);

  // Loads the layers with pinned[l] != 0 and, when any is not pinned, allocates the buffer
  // (taking one read group of the reader's ExtentReader). Errors: the reader's.
  static Result<std::unique_ptr<AttentionStream>> Open(layout::StoreReader& reader,
                                                       const AttentionLayout& layout,
                                                       std::span<const uint8_t> pinned,
                                                       bool pipeline);
  ~AttentionStream();

  // Layer `l`'s matrices. Errors: IoError, Corruption (naming the extent), with the layer named.
  Result<Matrices> Acquire(uint32_t layer);
  // The forward pass is done with `layer`'s matrices. With pipelining, starts reading the next
  // streamed layer. Errors: IoError from submitting.
  Status Release(uint32_t layer);

  // True when streamed layers are read ahead (pipelining, in place, something streams).
  bool prefetching() const { return prefetch_; }
  // The idle work the stream gives its ExtentReader: hashes the next kVerifySliceBytes of the
  // layer read ahead, once its reads have landed (as far as the reader has booked them); false
  // when there is nothing to hash (nothing read ahead, not landed, all verified, or a mismatch
  // found, which the next Acquire of that layer returns). Public for tests.
  bool VerifyAhead();
  // Bytes hashed per piece of idle work.
  static constexpr uint64_t kVerifySliceBytes = layout::ExtentReader::kIdleVerifyBytes;
  // True when streamed layer `layer`'s extents are moved together after they land (its tensors'
  // extents do not lie back to back in the store); false when they are used where they land.
  bool closes_up(uint32_t layer) const { return layers_[layer].close_up; }

 private:
  struct Piece {  // one extent of a streamed layer and where its bytes end up
    uint32_t tensor = 0;     // 0..3 attention, 4 gate
    uint64_t dst_bytes = 0;  // offset in the buffer once closed up
  };
  struct Layer {
    bool pinned = false;
    std::vector<layout::TensorInfo> tensors;  // q, k, v, o (, gate)
    std::vector<uint64_t> tensor_at;          // [tensor] offset in its memory
    bool close_up = false;                    // streamed in place: extents moved after landing
    Matrices resident;                        // pinned layers
    std::vector<layout::Extent> extents;      // streamed layers: all of them, in tensor order
    std::vector<Piece> pieces;                // [extent]
    std::vector<ByteSpan> outs;               // [extent] synchronous reads: destinations
    layout::ExtentPlan plan;                  // in place: reads into the buffer
  };
  enum class State { kFree, kInFlight, kReady };

  AttentionStream(layout::StoreReader& reader) : reader_(reader) {}
  Status Queue(uint32_t layer);   // in place: queue and submit its reads
  Status Finish(uint32_t layer);  // in place: verify what is left (and close up)
  Matrices Views(const Layer& layer, const std::byte* base) const;

  layout::StoreReader& reader_;
  layout::ExtentReader* extents_ = nullptr;
  AttentionLayout layout_;
  std::vector<Layer> layers_;
  std::vector<uint32_t> streamed_;     // streamed layer indices, in order
  std::vector<uint32_t> next_streamed_;  // [layer] next streamed layer after it, cyclically
  storage::AlignedBuffer pinned_memory_;
  storage::AlignedBuffer buffer_;
  uint32_t group_ = 0;
  bool prefetch_ = false;
  State state_ = State::kFree;
  uint32_t buffer_layer_ = 0;  // what the buffer holds or receives
  // Verification ahead of Acquire of buffer_layer_ (reset by Queue): extents [0, verified_)
  // checked, hashed_ bytes of the next one in hash_; the first mismatch found.
  uint32_t verified_ = 0;
  uint64_t hashed_ = 0;
  storage::Checksum64Stream hash_;
  Status verify_error_;
  int64_t idle_slot_ = -1;  // the ExtentReader's idle-work slot, when taken
};

}  // namespace flashlm::engine

#endif  // FLASHLM_ENGINE_ATTENTION_STREAM_H_
