// StreamingWeightStore: a WeightStore over a flashlm store (layout::StoreReader) that keeps only
// what a memory budget allows in DRAM and reads the rest from flash as the forward pass needs it.
//
// At Open the residency planner (residency_plan.h) splits the budget: the always-resident part
// (KV cache and activations as the Transformer will size them, the FFN kernel's scratch, norms,
// the catalog; the embedding unless its rows are read on demand; the classifier unless only
// streaming it lets the budget run), streaming buffers, attention matrices pinned layer by
// layer, and the first bundles of every layer's FFN (each layer's hot set first; hot-first
// stores put the hottest neurons first). What is not pinned streams through buffers sized at
// Open. Reads use O_DIRECT (buffered only where the filesystem refuses it) through io_uring
// (pread fallback), are checksum-verified, and never go through mmap or the page cache: FFN
// chunks, streamed attention and classifier extents straight into their buffers through this
// store's own backend; pinned weights, embedding rows and the bundle-by-bundle fallback (for
// compressed stores) through the StoreReader's extent API. The FFN is computed from the bundles
// by BundleFfnKernel (LayerWeights::ffn), so the result does not depend on the budget.
//
// Pipelining (StreamingOptions::pipeline): the streamed reads of a pass form a fixed, cyclic
// schedule (layer 0's chunks, layer 1's, ..., then the next pass). A ring of chunk buffers keeps
// the next chunks in flight while one computes; the single attention buffer is refilled with the
// next streamed layer as soon as this layer's FFN begins, so AcquireLayer rarely waits; the
// classifier's first extents are read during the last layer's FFN. The attention views of a
// streamed layer are therefore valid only until its FFN (LayerWeights::ffn) begins, which
// weights.h allows and is when the forward pass stops using them. Reads carry tags into a read
// table sized at Open and are verified in place; nothing is allocated per token on the
// pipelined path. Not thread-safe: one forward pass uses one store.
#ifndef FLASHLM_ENGINE_STREAMING_WEIGHTS_H_
#define FLASHLM_ENGINE_STREAMING_WEIGHTS_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "engine/bundle_ffn.h"
#include "engine/residency_plan.h"
#include "engine/thread_pool.h"
#include "engine/transformer.h"
#include "engine/weights.h"
#include "layout/store_reader.h"
#include "storage/aligned_buffer.h"
#include "storage/file.h"
#include "storage/read_backend.h"
#include "storage/status.h"

namespace flashlm::engine {

inline constexpr uint32_t kChunkBuffersMax = 64;

struct StreamingOptions {
  uint64_t budget_bytes = 0;       // 0: unlimited (everything resident)
  TransformerOptions transformer;  // as the Transformer will be created (KV cache size)
  uint32_t chunk_bundles = 256;    // FFN bundles per streamed chunk
  storage::BackendKind backend = storage::BackendKind::kAuto;
  bool direct = true;  // O_DIRECT data files
  // Read each FFN chunk as one contiguous range (large reads) when the store allows it;
  // false: one read per bundle through StoreReader::ReadExtents.
  bool direct_chunks = true;
  // With direct chunks: keep the next chunks (crossing into the next layer and the next token)
  // in flight in further buffers while one computes, and read the next streamed layer's
  // attention while this layer's FFN computes. false: every read is waited for when needed.
  bool pipeline = true;
  uint32_t chunk_buffers = 4;  // FFN chunk buffers when pipelining, in [2, kChunkBuffersMax]
};

// Counters since Open or the last ResetStats.
struct StreamingStats {
  uint64_t bytes_requested = 0;   // raw bytes of the extents streamed
  uint64_t bytes_read = 0;        // bytes the backend read (aligned covers)
  uint64_t reads = 0;             // reads the backend issued
  uint64_t io_wait_ns = 0;        // time spent waiting for streamed reads
  uint64_t bundles_resident = 0;  // FFN bundles used from DRAM
  uint64_t bundles_streamed = 0;  // FFN bundles read from flash
  uint64_t passes = 0;            // forward passes (a batch of tokens, e.g. a prompt, is one)
  double hit_rate() const {
    const uint64_t all = bundles_resident + bundles_streamed;
    return all ? static_cast<double>(bundles_resident) / all : 1.0;
  }
};

class StreamingWeightStore final : public WeightStore,
                                   private FfnProvider,
                                   private ClassifierProvider {
 public:
  // Opens the store folder `path` and loads what the plan pins. Errors: the reader's (NotFound,
  // Corruption, NotSupported), ResourceExhausted when the budget is below the minimum (the
  // message names it), NotSupported for a store without neuron bundles or with a dtype the
  // kernels lack.
  static Result<std::unique_ptr<StreamingWeightStore>> Open(const std::string& path,
                                                            ThreadPool& pool,
                                                            const StreamingOptions& options);
  ~StreamingWeightStore() override;

  const layout::ModelConfig& config() const override { return config_; }
  Status EmbedToken(uint32_t token, std::span<float> out) override;
  // True when embedding rows are read from flash as tokens need them (not resident).
  bool embedding_on_demand() const { return embedding_on_demand_; }
  std::span<const float> output_norm() const override { return output_norm_; }
  const MatrixView& classifier() const override { return classifier_; }
  ClassifierProvider* classifier_provider() override {
    return classifier_streamed_ ? this : nullptr;
  }
  // True when the classifier streams from flash (the budget cannot hold it).
  bool classifier_streamed() const { return classifier_streamed_; }
  Result<LayerWeights> AcquireLayer(uint32_t layer) override;
  void ReleaseLayer(uint32_t layer) override {}

  layout::StoreReader& reader() { return *reader_; }
  const ResidencyPlan& plan() const { return plan_; }
  // True when FFN chunks are read as contiguous file ranges (else one read per bundle).
  bool direct_chunks() const { return direct_chunks_; }
  // True when the next FFN chunks are in flight while one computes.
  bool pipelined() const { return pipeline_; }
  // True when streamed attention layers are read ahead (while the previous FFN computes).
  bool attention_prefetched() const { return dense_direct_; }
  StreamingStats stats() const;
  void ResetStats();

  // Bytes of DRAM the Transformer allocates for `config` and `options` with `threads` threads
  // (mirrors Transformer::Create; counted in the plan's always-resident part).
  static uint64_t TransformerBytes(const layout::ModelConfig& config,
                                   const TransformerOptions& options, uint32_t threads);

 private:
  struct Layer {
    std::span<const float> attn_norm, ffn_norm;
    MatrixView wq, wk, wv, wo, gate;        // gate only for kGateSeparate bundles
    std::vector<layout::TensorInfo> dense;  // wq, wk, wv, wo (, gate)
    uint64_t dense_bytes = 0;
    bool dense_pinned = false;
    uint32_t pinned = 0;                   // bundles at positions [0, pinned) resident
    storage::AlignedBuffer prefix;         // pinned bundles, spacing_ apart
    std::vector<layout::Extent> streamed;  // extents of positions [pinned, hidden)
  };

  explicit StreamingWeightStore(ThreadPool& pool) : pool_(pool) {}
  Status Load(const StreamingOptions& options);
  Result<std::span<const float>> LoadVector(const std::string& name, uint64_t n);
  Result<MatrixView> LoadMatrix(const std::string& name, uint64_t rows, uint64_t cols);
  Status ReadDense(Layer& layer, ByteSpan into, bool assign_views);
  Status Forward(uint32_t layer, std::span<const float> xb, uint32_t n,
                 std::span<float> out) override;
  Status Logits(std::span<const float> x, uint32_t n, std::span<float> logits) override;
  Status SubmitClassifier(uint32_t extent, uint32_t slot);

  ThreadPool& pool_;
  std::unique_ptr<layout::StoreReader> reader_;
  layout::ModelConfig config_;
  ResidencyPlan plan_;
  std::vector<storage::AlignedBuffer> buffers_;  // globals and pinned dense tensors
  MatrixView embedding_, classifier_;            // embedding_ empty when read on demand
  bool embedding_on_demand_ = false;
  // Streamed classifier: extent k is read into slot chunk_slots_ + 1 + k % 2 of slots_.
  bool classifier_streamed_ = false;
  layout::TensorLocation classifier_location_;
  std::vector<layout::Extent> classifier_extents_;
  uint64_t classifier_slot_bytes_ = 0;        // one extent's aligned cover
  uint32_t classifier_rows_max_ = 0;          // rows per extent
  storage::AlignedBuffer classifier_stream_;  // two slots
  std::vector<float> classifier_out_;         // max_batch x rows per extent
  storage::AlignedBuffer classifier_qx_;      // q8 activations
  layout::TensorLocation embedding_location_;
  storage::AlignedBuffer embedding_extent_;       // one extent of embedding rows
  uint64_t embedding_extent_index_ = UINT64_MAX;  // which one it holds
  uint64_t embedding_extent_rows_ = 0;
  std::span<const float> output_norm_;
  std::vector<Layer> layers_;
  layout::BundleGeometry geometry_;
  uint64_t spacing_ = 0;  // DRAM bytes per bundle
  std::unique_ptr<BundleFfnKernel> kernel_;
  storage::AlignedBuffer dense_stream_;  // one streamed layer's attention
  storage::AlignedBuffer chunk_stream_;  // one chunk of streamed bundles
  std::vector<ByteSpan> chunk_outs_;     // [chunk_bundles] bundle k of chunk_stream_
  // Direct chunk reads: when every streamed bundle is uncompressed and a layer's bundles sit
  // stride_bytes apart in one data file, a chunk is one contiguous file range read straight
  // into chunk_stream_ (bundles stride apart there too) and verified in place.
  Status ReadChunkDirect(const Layer& layer, uint32_t first, uint32_t count);
  bool direct_chunks_ = false;
  uint64_t chunk_spacing_ = 0;
  std::vector<storage::File> files_;
  std::vector<uint32_t> file_ids_;
  std::unique_ptr<storage::ReadBackend> backend_;
  std::vector<storage::ReadRequest> requests_;
  std::vector<storage::ReadCompletion> completions_;
  // Pipelining: the static schedule of streamed FFN chunks, all layers in order, consumed
  // cyclically through a ring of chunk buffers; slot K (= chunk_slots_) is the attention buffer.
  struct Job {
    uint32_t layer = 0, first = 0, count = 0;  // first: index into Layer::streamed
  };
  struct Slot {
    int64_t job = -1;      // FFN: job index; attention slot: layer; -1 = free
    uint32_t pending = 0;  // reads in flight
    Status error;          // first failure among its reads
  };
  struct PendingRead {  // one read in flight, indexed by its tag
    uint32_t slot = 0;
    uint32_t file = 0;  // data file index
    uint64_t end = 0;   // file offset one past the read
    uint64_t len = 0;
  };
  // Where one dense tensor of a streamed layer lands: the file range covering its extents is
  // read to `at` in dense_stream_, verified, then the extents are closed up (padding removed).
  struct DensePiece {
    uint32_t file = 0;
    uint64_t offset = 0, bytes = 0;  // aligned file range
    uint64_t at = 0;                 // position in dense_stream_
    std::vector<layout::Extent> extents;
  };
  // Appends reads of at most read_bytes covering dst to requests_ (not yet submitted).
  Status QueueRead(uint32_t slot, uint32_t file, uint64_t offset, ByteSpan dst,
                   uint64_t read_bytes);
  Status SubmitJob(uint32_t job, uint32_t slot);
  Status SubmitDense(uint32_t layer);
  Status SubmitQueued();  // submits requests_ (all or none)
  Status FillRing();
  Status WaitSlot(uint32_t slot);
  Status ReapSome();
  void DrainRing();
  void Drain();
  Status VerifyChunk(const Layer& layer, uint32_t first, uint32_t count, const std::byte* base);
  Status FinishDense(uint32_t layer);
  bool pipeline_ = false;
  uint64_t chunk_buffer_bytes_ = 0;  // one buffer
  uint64_t chunk_read_bytes_ = 0;    // largest read of an FFN chunk
  std::vector<Job> jobs_;
  std::vector<uint32_t> job_first_;  // [layer] index of its first job
  uint32_t chunk_slots_ = 0;
  std::vector<Slot> slots_;  // chunk_slots_ chunk buffers, then the attention buffer
  uint32_t ring_head_ = 0, ring_count_ = 0, next_job_ = 0;
  std::vector<PendingRead> reads_;    // by tag
  std::vector<uint32_t> free_reads_;  // free tags
  bool dense_direct_ = false;         // streamed attention read as DensePieces (pipelined)
  std::vector<std::vector<DensePiece>> dense_pieces_;  // [layer], streamed layers only
  std::vector<uint32_t> next_dense_;  // [layer] next streamed attention layer, cyclically
  StreamingStats stats_;
  uint64_t backend_bytes_base_ = 0, backend_reads_base_ = 0;
};

}  // namespace flashlm::engine

#endif  // FLASHLM_ENGINE_STREAMING_WEIGHTS_H_
