// StoreReader: opens a flashlm store folder (see store_format.h, docs/format.md) read-only.
//
// Two faces:
//  - layout::Checkpoint (format "store"): config, vocab, the tensor directory in canonical form,
//    and ReadTensor, which reassembles FFN tensors from the neuron bundles (undoing a hot-first
//    permutation). ReadTensor returns the stored dtype's bytes, with one exception: ffn_down of a
//    store whose bundles are block-quantised (q8_0/q4_0) keeps its columns quantised, which no
//    row-major block tensor can express, so its TensorInfo says f32 and ReadTensor returns the
//    exact dequantised values.
//  - The extent API the out-of-core engine uses: look up an extent (file, offset, length, codec,
//    checksum) for a dense tensor's row range or a layer's neuron bundles. Every byte is read
//    through the store's one ExtentReader (extent_reader(): the data files, the one backend,
//    planned reads, checksum verification), which the engine's streamers share.
// Every extent read is checked against its checksum; a mismatch is Corruption naming the extent
// and what it holds.
// The catalog is fully parsed at Open (records are validated: bounds, sizes, overflow); the
// reader then holds the extent table (40 bytes per extent) and the permutations in memory.
// Not thread-safe (one reader per thread, like Checkpoint).
#ifndef FLASHLM_LAYOUT_STORE_READER_H_
#define FLASHLM_LAYOUT_STORE_READER_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "layout/bundle_layout.h"
#include "layout/checkpoint.h"
#include "layout/extent_reader.h"
#include "layout/store_format.h"
#include "storage/bytes.h"
#include "storage/read_backend.h"
#include "storage/status.h"

namespace flashlm::layout {

// Where one tensor lives.
struct TensorLocation {
  TensorInfo info;      // as tensors() reports it
  TensorRecord record;  // the catalog record (record.dtype is the stored dtype)
};

struct StoreReadOptions {
  // How extents are read: data files opened with O_DIRECT (buffered fallback, see storage/file.h)
  // through a ReadBackend (io_uring, falling back to pread).
  storage::BackendKind backend = storage::BackendKind::kAuto;
  bool direct = true;
  uint32_t queue_depth = 32;               // extent reads in flight
  uint64_t batch_bytes_max = 32ull << 20;  // staging buffer bound for one batch
  // false: an extent's checksum is checked the first time it is read, not on later reads
  // (ExtentReader::VerifyFirstReadOnly).
  bool verify_every_read = true;
};

class StoreReader final : public Checkpoint {
 public:
  // True when `path` is a folder holding a catalog file (it may still fail to open).
  static bool LooksLikeStore(std::string_view path);

  // Opens the store folder at `path`. Errors: NotFound (no such folder / no catalog),
  // Corruption (malformed catalog record, extent outside its data file, a temp folder of an
  // unfinished repack), NotSupported (unknown format version, with the versions this build reads).
  static Result<std::unique_ptr<StoreReader>> Open(std::string_view path,
                                                   const StoreReadOptions& options = {});
  ~StoreReader() override;

  // Checkpoint.
  std::string_view format() const override { return "store"; }
  const ModelConfig& config() const override { return config_; }
  const Vocab& vocab() const override { return vocab_; }
  const std::vector<TensorInfo>& tensors() const override { return tensors_; }
  Status ReadTensor(const TensorInfo& info, ByteSpan out) override;

  // Catalog.
  const StoreHeader& header() const { return header_; }
  // The store's identity: the sealed XXH3-64 of its catalog (layout/catalog_seal.h).
  uint64_t identity() const { return identity_; }
  const std::string& layout_json() const { return layout_json_; }
  const std::string& provenance_json() const { return provenance_json_; }
  const std::string& path() const { return path_; }
  std::string DataFilePath(uint32_t file_index) const;
  uint64_t data_file_bytes(uint32_t file_index) const { return file_bytes_.at(file_index); }
  // "uring", "pread", ...; and whether the data files are open with O_DIRECT.
  std::string_view backend_name() const { return reader_->backend_name(); }
  bool direct_io() const { return reader_->direct_io(); }
  // False after StoreReadOptions::verify_every_read = false (checksums on first reads only).
  bool verifies_every_read() const { return options_.verify_every_read; }
  // Bytes read and reads issued so far (all extent reads go through the backend).
  const storage::IoStats& io_stats() const { return reader_->io_stats(); }
  // The one road to the data files; valid for the StoreReader's lifetime.
  ExtentReader& extent_reader() { return *reader_; }
  // DRAM the catalog holds (extent table, tensor directory, permutations, vocab; with
  // verify_every_read false, the record of extents checked), for budgets.
  uint64_t catalog_bytes() const;

  // Extents. Errors: NotFound (index, tensor, layer out of range).
  uint64_t extent_count() const { return extents_.size(); }
  Result<Extent> GetExtent(uint64_t index) const;
  // Extent `index` (precondition, CHECKed: index < extent_count()). Allocates nothing.
  Extent ExtentAt(uint64_t index) const;
  // The bundle at `position` of FFN layer `layer` (precondition, CHECKed: both in range).
  Extent BundleExtentAt(uint32_t layer, uint32_t position) const;
  Result<TensorLocation> LocateTensor(std::string_view name) const;
  // The extents of a dense tensor holding rows [first_row, first_row + row_count); each extent
  // holds record.rows_per_extent rows (the last fewer).
  Result<std::vector<Extent>> DenseExtents(std::string_view name, uint64_t first_row,
                                           uint64_t row_count) const;
  uint32_t ffn_layer_count() const { return static_cast<uint32_t>(ffn_.size()); }
  Result<FfnLayerRecord> FfnLayer(uint32_t layer) const;
  Result<BundleGeometry> FfnGeometry(uint32_t layer) const;
  // Bundles at positions [first_position, first_position + count) of `layer`.
  Result<std::vector<Extent>> BundleExtents(uint32_t layer, uint32_t first_position,
                                            uint32_t count) const;
  // Position -> neuron; empty when the layer is stored in natural order.
  std::span<const uint32_t> Permutation(uint32_t layer) const;
  // Neuron -> position (identity when unpermuted). Errors: NotFound.
  Result<uint32_t> PositionOfNeuron(uint32_t layer, uint32_t neuron) const;
  // Firing frequencies recorded at repack ("activations/<layer>"); empty when none.
  std::span<const float> ActivationFrequencies(uint32_t layer) const;
  // Size of the layer's hot set ("hot/<layer>"): the neurons at positions [0, HotCount) are those
  // whose frequency reached repack's --hot-threshold. 0 when the store records none (no
  // activation statistics, a store older than the record) or the layer is out of range.
  uint32_t HotCount(uint32_t layer) const;

  // Reads `extent`, verifies its checksum and decodes it into `out` (exactly raw_bytes).
  // Errors: InvalidArgument (size), IoError, Corruption (checksum mismatch, bad zstd frame;
  // the message names the extent index, what it holds, file and offset).
  Status ReadExtent(const Extent& extent, ByteSpan out);
  // Batched form: reads extents[i] into outs[i] (each exactly raw_bytes), neighbours merged into
  // larger reads (ExtentReader::ReadExtents). Stops at the first failure.
  Status ReadExtents(std::span<const Extent> extents, std::span<const ByteSpan> outs);

  // What extent `index` holds: "tensor token_embd.weight rows 0..99" or
  // "FFN layer 3 bundle 17 (neuron 42)"; "unreferenced" when nothing refers to it.
  std::string DescribeExtent(uint64_t index) const;

  // Reads every extent and checks its checksum (and decodes compressed ones). Stops at the first
  // failure and returns its status (Corruption naming the extent and what it holds). progress(done,
  // total) is called after each extent when set.
  Status VerifyAll(const std::function<void(uint64_t, uint64_t)>& progress = nullptr);

 private:
  StoreReader() = default;
  Status Load();
  Status ReadBundledTensor(const TensorInfo& info, const TensorRecord& rec, ByteSpan out);

  std::string path_;
  StoreHeader header_{};
  uint64_t identity_ = 0;
  ModelConfig config_;
  Vocab vocab_;
  std::string layout_json_;
  std::string provenance_json_;
  std::vector<TensorInfo> tensors_;
  std::vector<TensorRecord> records_;  // parallel to tensors_
  std::vector<ExtentRecord> extents_;
  std::vector<FfnLayerRecord> ffn_;                 // by layer
  std::vector<std::vector<uint32_t>> permutation_;  // by layer; empty = identity
  std::vector<std::vector<float>> activations_;     // by layer; empty = none
  std::vector<uint32_t> hot_counts_;                // by layer; 0 = none
  std::vector<uint64_t> file_bytes_;                // by data file
  StoreReadOptions options_;
  std::unique_ptr<ExtentReader> reader_;
};

}  // namespace flashlm::layout

#endif  // FLASHLM_LAYOUT_STORE_READER_H_
