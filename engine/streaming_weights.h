// StreamingWeightStore: a WeightStore over a flashlm store (layout::StoreReader) that keeps only
// what a memory budget allows in DRAM and reads the rest from flash as the forward pass needs it.
//
// At Open the residency planner (residency_plan.h) splits the budget: the always-resident part
// (KV cache and activations as the Transformer will size them, the FFN kernel's scratch, the
// embedding, classifier and norms, the catalog), attention matrices pinned layer by layer, and
// the first bundles of every layer's FFN pinned (hot-first stores put the hottest neurons
// first). What is not pinned streams through buffers sized at Open: one for a layer's attention
// matrices (read at AcquireLayer) and one for a chunk of FFN bundles (read inside the FFN, chunk
// after chunk). Every read goes through the StoreReader's extent API: O_DIRECT through io_uring
// (pread fallback), checksum-verified, never mmap or the page cache. The FFN is computed from
// the bundles by BundleFfnKernel (LayerWeights::ffn), so the result does not depend on the
// budget.
//
// Current limits (see the report of issue 5): reads are synchronous (no prefetch of layer L+1
// yet) and go through the reader's bounce buffer; the reader allocates small vectors per call.
// Not thread-safe: one forward pass uses one store.
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

struct StreamingOptions {
  uint64_t budget_bytes = 0;        // 0: unlimited (everything resident)
  TransformerOptions transformer;   // as the Transformer will be created (KV cache size)
  uint32_t chunk_bundles = 256;     // FFN bundles per streamed chunk
  storage::BackendKind backend = storage::BackendKind::kAuto;
  bool direct = true;               // O_DIRECT data files
  // Read each FFN chunk as one contiguous range (large reads) when the store allows it;
  // false: one read per bundle through StoreReader::ReadExtents.
  bool direct_chunks = true;
  // With direct chunks: read the next chunk (crossing into the next layer and the next token)
  // into a second buffer while the current one computes.
  bool pipeline = true;
};

// Counters since Open or the last ResetStats.
struct StreamingStats {
  uint64_t bytes_requested = 0;  // raw bytes of the extents streamed
  uint64_t bytes_read = 0;       // bytes the backend read (aligned covers)
  uint64_t reads = 0;            // reads the backend issued
  uint64_t io_wait_ns = 0;       // time spent waiting for streamed reads
  uint64_t bundles_resident = 0; // FFN bundles used from DRAM
  uint64_t bundles_streamed = 0; // FFN bundles read from flash
  double hit_rate() const {
    const uint64_t all = bundles_resident + bundles_streamed;
    return all ? static_cast<double>(bundles_resident) / all : 1.0;
  }
};

class StreamingWeightStore final : public WeightStore, private FfnProvider {
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
  const MatrixView& token_embedding() const override { return embedding_; }
  std::span<const float> output_norm() const override { return output_norm_; }
  const MatrixView& classifier() const override { return classifier_; }
  Result<LayerWeights> AcquireLayer(uint32_t layer) override;
  void ReleaseLayer(uint32_t layer) override {}

  layout::StoreReader& reader() { return *reader_; }
  const ResidencyPlan& plan() const { return plan_; }
  // True when FFN chunks are read as contiguous file ranges (else one read per bundle).
  bool direct_chunks() const { return direct_chunks_; }
  // True when the next FFN chunk is in flight while one computes.
  bool pipelined() const { return pipeline_; }
  StreamingStats stats() const;
  void ResetStats();

  // Bytes of DRAM the Transformer allocates for `config` and `options` with `threads` threads
  // (mirrors Transformer::Create; counted in the plan's always-resident part).
  static uint64_t TransformerBytes(const layout::ModelConfig& config,
                                   const TransformerOptions& options, uint32_t threads);

 private:
  struct Layer {
    std::span<const float> attn_norm, ffn_norm;
    MatrixView wq, wk, wv, wo, gate;  // gate only for kGateSeparate bundles
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

  ThreadPool& pool_;
  std::unique_ptr<layout::StoreReader> reader_;
  layout::ModelConfig config_;
  ResidencyPlan plan_;
  std::vector<storage::AlignedBuffer> buffers_;  // globals and pinned dense tensors
  MatrixView embedding_, classifier_;
  std::span<const float> output_norm_;
  std::vector<Layer> layers_;
  layout::BundleGeometry geometry_;
  uint64_t spacing_ = 0;            // DRAM bytes per bundle
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
  // Pipelining (two chunk buffers): the static schedule of streamed chunks, all layers in order.
  struct Job {
    uint32_t layer = 0, first = 0, count = 0;  // first: index into Layer::streamed
  };
  Status SubmitJob(uint32_t job, uint32_t slot);
  Status ReapSome();
  void Drain();
  Status VerifyChunk(const Layer& layer, uint32_t first, uint32_t count, const std::byte* base);
  bool pipeline_ = false;
  uint64_t chunk_buffer_bytes_ = 0;    // one buffer
  std::vector<Job> jobs_;
  std::vector<uint32_t> job_first_;    // [layer] index of its first job
  int64_t slot_job_[2] = {-1, -1};     // job whose reads target the slot, -1 = free
  uint32_t slot_pending_[2] = {0, 0};  // reads in flight per slot
  Status slot_error_[2];
  uint32_t cur_slot_ = 0;
  StreamingStats stats_;
  uint64_t backend_bytes_base_ = 0, backend_reads_base_ = 0;
};

}  // namespace flashlm::engine

#endif  // FLASHLM_ENGINE_STREAMING_WEIGHTS_H_
