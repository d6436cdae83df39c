#include "layout/store_reader.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "layout/catalog_seal.h"
#include "layout/llama_tensors.h"
#include "storage/check.h"
#include "storage/lmdb_env.h"

namespace flashlm::layout {
namespace {

bool IsStorableDType(uint8_t d) { return d <= static_cast<uint8_t>(DType::kQ6_K); }

// a * b, false on 64-bit overflow.
bool MulOk(uint64_t a, uint64_t b, uint64_t* out) { return !__builtin_mul_overflow(a, b, out); }

template <typename T>
Result<T> DecodeRecord(ConstByteSpan bytes, std::string_view key) {
  if (bytes.size() != sizeof(T)) {
    return CorruptionError("catalog record '" + std::string(key) + "' has " +
                           std::to_string(bytes.size()) + " bytes, expected " +
                           std::to_string(sizeof(T)));
  }
  T rec;
  std::memcpy(&rec, bytes.data(), sizeof(T));
  return rec;
}

template <typename T>
Result<std::vector<T>> DecodeArray(ConstByteSpan bytes, std::string_view key, uint64_t count) {
  if (bytes.size() != count * sizeof(T)) {
    return CorruptionError("catalog record '" + std::string(key) + "' has " +
                           std::to_string(bytes.size()) + " bytes, expected " +
                           std::to_string(count * sizeof(T)));
  }
  std::vector<T> out(count);
  if (count) std::memcpy(out.data(), bytes.data(), bytes.size());
  return out;
}

std::string AsString(ConstByteSpan b) {
  return std::string(reinterpret_cast<const char*>(b.data()), b.size());
}

}  // namespace

bool StoreReader::LooksLikeStore(std::string_view path) {
  std::error_code ec;
  std::filesystem::path p(path);
  return std::filesystem::is_directory(p, ec) &&
         std::filesystem::exists(p / std::string(kCatalogFileName), ec);
}

Result<std::unique_ptr<StoreReader>> StoreReader::Open(std::string_view path,
                                                       const StoreReadOptions& options) {
  std::unique_ptr<StoreReader> r(new StoreReader());
  r->options_ = options;
  r->path_ = std::string(path);
  while (r->path_.size() > 1 && r->path_.back() == '/') r->path_.pop_back();
  RETURN_IF_ERROR(r->Load());
  return r;
}

StoreReader::~StoreReader() = default;

std::string StoreReader::DataFilePath(uint32_t file_index) const {
  return path_ + "/" + DataFileName(file_index);
}

Status StoreReader::Load() {
  std::error_code ec;
  if (!std::filesystem::is_directory(path_, ec)) {
    return NotFoundError("not a flashlm store (no such folder): " + path_);
  }
  if (std::filesystem::path(path_).filename().string().find(kTempMarker) != std::string::npos) {
    return CorruptionError(path_ +
                           " is the temp folder of an unfinished or interrupted repack, "
                           "not a store; delete it and repack again");
  }
  const std::string catalog = path_ + "/" + std::string(kCatalogFileName);
  if (!std::filesystem::exists(catalog, ec)) {
    return NotFoundError("not a flashlm store (no " + std::string(kCatalogFileName) +
                         "): " + path_);
  }
  // Every byte of the catalog is checked against its seal before LMDB maps it: LMDB then only
  // parses what the writer committed, and no record can change unnoticed.
  ASSIGN_OR_RETURN(identity_, CheckCatalogSeal(path_));
  storage::LmdbEnv::Options opts;
  opts.read_only = true;
  ASSIGN_OR_RETURN(auto env, storage::LmdbEnv::Open(catalog, opts));
  ASSIGN_OR_RETURN(storage::ReadTxn txn, env->BeginRead());
  auto where = [&](std::string_view what) { return "store " + path_ + ": " + std::string(what); };

  // Header first: magic, then the version gate, before any other record is interpreted.
  auto hb = txn.Get(catalog_key::kHeader);
  if (!hb.ok()) return CorruptionError(where("catalog has no header (not a finished store)"));
  ASSIGN_OR_RETURN(header_, DecodeRecord<StoreHeader>(*hb, catalog_key::kHeader));
  if (std::memcmp(header_.magic, kStoreMagic, sizeof kStoreMagic) != 0) {
    return CorruptionError(where("bad magic in catalog header"));
  }
  if (header_.format_version != kStoreFormatVersion) {
    return NotSupportedError(
        where("store format version " + std::to_string(header_.format_version) +
              " is not supported; this flashlm (" FLASHLM_VERSION ") reads version " +
              std::to_string(kStoreFormatVersion) + ". Repack the model with this flashlm."));
  }
  if (!IsPowerOfTwo(header_.alignment_bytes) || header_.alignment_bytes < 512) {
    return CorruptionError(where("bad alignment " + std::to_string(header_.alignment_bytes)));
  }
  if (header_.data_file_count == 0 || header_.data_file_count > 4096) {
    return CorruptionError(where("bad data file count"));
  }

  ASSIGN_OR_RETURN(ConstByteSpan cb, txn.Get(catalog_key::kConfig));
  ASSIGN_OR_RETURN(config_, DecodeConfigJson(AsString(cb)));
  // The same checks as a checkpoint's config (GGUF, HF, llama2.c).
  RETURN_IF_ERROR(ValidateLoadedConfig(config_, where("config")));
  ASSIGN_OR_RETURN(ConstByteSpan lb, txn.Get(catalog_key::kLayout));
  layout_json_ = AsString(lb);
  ASSIGN_OR_RETURN(ConstByteSpan pb, txn.Get(catalog_key::kProvenance));
  provenance_json_ = AsString(pb);

  // Vocab (optional as a whole: a source without a tokenizer stores none).
  if (auto vm = txn.Get(catalog_key::kVocabMeta); vm.ok()) {
    RETURN_IF_ERROR(DecodeVocabMetaJson(AsString(*vm), &vocab_));
    ASSIGN_OR_RETURN(ConstByteSpan tb, txn.Get(catalog_key::kVocabTokens));
    ASSIGN_OR_RETURN(vocab_.tokens, DecodeStringList(tb));
    ASSIGN_OR_RETURN(ConstByteSpan sb, txn.Get(catalog_key::kVocabScores));
    ASSIGN_OR_RETURN(vocab_.scores, DecodeArray<float>(sb, "vocab/scores", vocab_.tokens.size()));
    ASSIGN_OR_RETURN(ConstByteSpan yb, txn.Get(catalog_key::kVocabTypes));
    ASSIGN_OR_RETURN(vocab_.types, DecodeArray<int32_t>(yb, "vocab/types", vocab_.tokens.size()));
    ASSIGN_OR_RETURN(ConstByteSpan mb, txn.Get(catalog_key::kVocabMerges));
    ASSIGN_OR_RETURN(vocab_.merges, DecodeStringList(mb));
  } else if (vm.status().code() != StatusCode::kNotFound) {
    return vm.status();
  }

  // Data files: open now so that every extent can be bounds-checked against the real size.
  std::vector<std::string> paths;
  for (uint32_t f = 0; f < header_.data_file_count; ++f) {
    paths.push_back(DataFilePath(f));
    if (!std::filesystem::exists(paths.back(), ec)) {
      return CorruptionError(where("missing data file " + DataFileName(f)));
    }
  }
  ExtentReaderOptions ro;
  ro.backend = options_.backend;
  ro.direct = options_.direct;
  ASSIGN_OR_RETURN(reader_, ExtentReader::Open(paths, ro, [this](uint64_t index) {
                     return DescribeExtent(index);
                   }));
  ExtentReaderLimits limits;
  limits.queue_depth = std::max<uint32_t>(1, options_.queue_depth);
  limits.staging_bytes = std::max<uint64_t>(options_.batch_bytes_max, 4096);
  RETURN_IF_ERROR(reader_->SetLimits(limits));
  for (uint32_t f = 0; f < header_.data_file_count; ++f) {
    file_bytes_.push_back(reader_->file_bytes(f));
  }

  ASSIGN_OR_RETURN(ConstByteSpan eb, txn.Get(catalog_key::kExtents));
  if (header_.extent_count > eb.size() / sizeof(ExtentRecord)) {
    return CorruptionError(where("extent table shorter than the header's extent count"));
  }
  ASSIGN_OR_RETURN(extents_,
                   DecodeArray<ExtentRecord>(eb, catalog_key::kExtents, header_.extent_count));
  for (uint64_t i = 0; i < extents_.size(); ++i) {
    const ExtentRecord& e = extents_[i];
    const std::string name = "extent " + std::to_string(i);
    if (e.file_index >= header_.data_file_count) return CorruptionError(where(name + ": bad file"));
    if (e.codec > static_cast<uint8_t>(Codec::kZstd))
      return CorruptionError(where(name + ": unknown codec"));
    if (e.offset_bytes % header_.alignment_bytes != 0) {
      return CorruptionError(where(name + ": offset not aligned"));
    }
    uint64_t end;
    if (__builtin_add_overflow(e.offset_bytes, e.stored_bytes, &end) ||
        end > file_bytes_[e.file_index]) {
      return CorruptionError(
          where(name + " lies outside " + DataFileName(e.file_index) + " (truncated data file?)"));
    }
    if (e.codec == static_cast<uint8_t>(Codec::kNone) && e.raw_bytes != e.stored_bytes) {
      return CorruptionError(where(name + ": raw and stored sizes differ without a codec"));
    }
    if (e.raw_bytes > (uint64_t{1} << 40)) return CorruptionError(where(name + ": absurd size"));
  }
  if (!options_.verify_every_read) reader_->VerifyFirstReadOnly(extents_.size());

  // FFN layers (before tensors, which refer to them).
  Status bad;  // first malformed record seen while iterating
  RETURN_IF_ERROR(txn.ForEach(catalog_key::kFfnPrefix, [&](std::string_view key, ConstByteSpan v) {
    auto rec = DecodeRecord<FfnLayerRecord>(v, key);
    if (!rec.ok()) {
      bad = rec.status();
      return false;
    }
    ffn_.push_back(*rec);
    return true;
  }));
  RETURN_IF_ERROR(bad);
  for (uint32_t l = 0; l < ffn_.size(); ++l) {
    const FfnLayerRecord& f = ffn_[l];
    const std::string name = "ffn layer " + std::to_string(l);
    if (f.layer != l) return CorruptionError(where(name + ": layers out of order"));
    if (!IsStorableDType(f.dtype) || f.dim == 0 || f.n_neurons == 0) {
      return CorruptionError(where(name + ": bad dtype or shape"));
    }
    if (f.bundle_kind > static_cast<uint8_t>(BundleKind::kGateSeparate)) {
      return CorruptionError(where(name + ": unknown bundle kind"));
    }
    BundleGeometry g =
        BundleGeometry::Make(static_cast<BundleKind>(f.bundle_kind), static_cast<DType>(f.dtype),
                             f.dim, header_.alignment_bytes);
    if (g.part_bytes != f.part_bytes || g.bundle_bytes != f.bundle_bytes ||
        g.stride_bytes != f.stride_bytes) {
      return CorruptionError(where(name + ": bundle sizes disagree with dtype and dim"));
    }
    if (f.first_extent > extents_.size() || f.n_neurons > extents_.size() - f.first_extent) {
      return CorruptionError(where(name + ": bundle extents out of range"));
    }
    for (uint64_t p = 0; p < f.n_neurons; ++p) {
      if (extents_[f.first_extent + p].raw_bytes != f.bundle_bytes) {
        return CorruptionError(where(name + ": bundle " + std::to_string(p) + " has wrong size"));
      }
    }
    std::vector<uint32_t> perm;
    if (f.has_permutation) {
      const std::string key = LayerKey(catalog_key::kPermPrefix, l);
      ASSIGN_OR_RETURN(ConstByteSpan b, txn.Get(key));
      ASSIGN_OR_RETURN(perm, DecodeArray<uint32_t>(b, key, f.n_neurons));
      std::vector<bool> seen(f.n_neurons, false);
      for (uint32_t n : perm) {
        if (n >= f.n_neurons || seen[n])
          return CorruptionError(where(key + " is not a permutation"));
        seen[n] = true;
      }
    }
    permutation_.push_back(std::move(perm));
    std::vector<float> freq;
    const std::string akey = LayerKey(catalog_key::kActivationsPrefix, l);
    if (auto ab = txn.Get(akey); ab.ok()) {
      ASSIGN_OR_RETURN(freq, DecodeArray<float>(*ab, akey, f.n_neurons));
    }
    activations_.push_back(std::move(freq));
    uint32_t hot = 0;
    const std::string hkey = LayerKey(catalog_key::kHotPrefix, l);
    if (auto hot_bytes = txn.Get(hkey); hot_bytes.ok()) {
      ASSIGN_OR_RETURN(std::vector<uint32_t> h, DecodeArray<uint32_t>(*hot_bytes, hkey, 1));
      hot = h[0];
      if (hot > f.n_neurons) {
        return CorruptionError(
            where(hkey + " exceeds the layer's " + std::to_string(f.n_neurons) + " neurons"));
      }
      if (!f.has_permutation) return CorruptionError(where(hkey + " in a layer not hot-first"));
    } else if (hot_bytes.status().code() != StatusCode::kNotFound) {
      return hot_bytes.status();
    }
    hot_counts_.push_back(hot);
  }

  // Tensor directory.
  std::vector<std::pair<TensorRecord, TensorInfo>> dir;
  RETURN_IF_ERROR(
      txn.ForEach(catalog_key::kTensorPrefix, [&](std::string_view key, ConstByteSpan v) {
        auto rec = DecodeRecord<TensorRecord>(v, key);
        if (!rec.ok()) {
          bad = rec.status();
          return false;
        }
        TensorInfo info;
        info.name = std::string(key.substr(catalog_key::kTensorPrefix.size()));
        info.dtype = static_cast<DType>(rec->dtype);
        dir.emplace_back(*rec, std::move(info));
        return true;
      }));
  RETURN_IF_ERROR(bad);
  for (auto& [rec, info] : dir) {
    const std::string name = "tensor " + info.name;
    constexpr uint64_t kDimMax = uint64_t{1} << 40;  // keeps RowBytes and products in range
    if (!IsStorableDType(rec.dtype) || rec.n_dims < 1 || rec.n_dims > 2 || rec.shape[0] == 0 ||
        rec.shape[0] > kDimMax ||
        (rec.n_dims == 2 && (rec.shape[1] == 0 || rec.shape[1] > kDimMax))) {
      return CorruptionError(where(name + ": bad dtype or shape"));
    }
    info.shape.assign(rec.shape, rec.shape + rec.n_dims);
    uint64_t bytes;
    if (!MulOk(info.rows(), RowBytes(info.dtype, info.cols()), &bytes) || bytes > (1ull << 44)) {
      return CorruptionError(where(name + ": absurd size"));
    }
    if (rec.placement == static_cast<uint8_t>(Placement::kDense)) {
      if (rec.rows_per_extent == 0 || rec.first_extent > extents_.size() ||
          rec.extent_count > extents_.size() - rec.first_extent ||
          rec.extent_count != CeilDiv(info.rows(), rec.rows_per_extent)) {
        return CorruptionError(where(name + ": extent range does not cover its rows"));
      }
      const uint64_t row_bytes = RowBytes(info.dtype, info.cols());
      for (uint64_t c = 0; c < rec.extent_count; ++c) {
        uint64_t rows = std::min(rec.rows_per_extent, info.rows() - c * rec.rows_per_extent);
        if (extents_[rec.first_extent + c].raw_bytes != rows * row_bytes) {
          return CorruptionError(where(name + ": extent " + std::to_string(c) + " has wrong size"));
        }
      }
    } else if (rec.placement == static_cast<uint8_t>(Placement::kBundled)) {
      if (rec.layer >= ffn_.size()) return CorruptionError(where(name + ": no such FFN layer"));
      const FfnLayerRecord& f = ffn_[rec.layer];
      const auto part = static_cast<FfnPart>(rec.ffn_part);
      const bool rows_are_neurons = part == FfnPart::kGate || part == FfnPart::kUp;
      if (rec.n_dims != 2 || rec.dtype != f.dtype ||
          (part == FfnPart::kGate &&
           f.bundle_kind != static_cast<uint8_t>(BundleKind::kGateUpDown)) ||
          !(rows_are_neurons || part == FfnPart::kDown) ||
          (rows_are_neurons ? (rec.shape[0] != f.n_neurons || rec.shape[1] != f.dim)
                            : (rec.shape[0] != f.dim || rec.shape[1] != f.n_neurons))) {
        return CorruptionError(where(name + ": does not match its FFN layer's bundles"));
      }
      // A block-quantised down column cannot be handed out as row-major blocks: f32 (exact).
      if (part == FfnPart::kDown && info.dtype != DType::kF32 && info.dtype != DType::kF16 &&
          info.dtype != DType::kBF16) {
        info.dtype = DType::kF32;
      }
    } else {
      return CorruptionError(where(name + ": unknown placement"));
    }
  }
  std::sort(dir.begin(), dir.end(),
            [](const auto& a, const auto& b) { return a.first.order < b.first.order; });
  for (auto& [rec, info] : dir) {
    records_.push_back(rec);
    tensors_.push_back(std::move(info));
  }
  return Status::Ok();
}

Result<Extent> StoreReader::GetExtent(uint64_t index) const {
  if (index >= extents_.size()) {
    return NotFoundError("extent " + std::to_string(index) + " out of range (store has " +
                         std::to_string(extents_.size()) + ")");
  }
  return ExtentAt(index);
}

Extent StoreReader::ExtentAt(uint64_t index) const {
  CHECK_LT(index, extents_.size());
  const ExtentRecord& e = extents_[index];
  Extent x;
  x.index = index;
  x.file_index = e.file_index;
  x.offset_bytes = e.offset_bytes;
  x.stored_bytes = e.stored_bytes;
  x.raw_bytes = e.raw_bytes;
  x.codec = static_cast<Codec>(e.codec);
  x.checksum = e.checksum;
  return x;
}

Extent StoreReader::BundleExtentAt(uint32_t layer, uint32_t position) const {
  CHECK_LT(layer, ffn_.size());
  CHECK_LT(position, ffn_[layer].n_neurons);
  return ExtentAt(ffn_[layer].first_extent + position);
}

uint64_t StoreReader::catalog_bytes() const {
  uint64_t b = extents_.capacity() * sizeof(ExtentRecord) + records_.capacity() * sizeof(TensorRecord) +
               tensors_.capacity() * sizeof(TensorInfo) + ffn_.capacity() * sizeof(FfnLayerRecord) +
               layout_json_.capacity() + provenance_json_.capacity();
  for (const auto& p : permutation_) b += p.capacity() * sizeof(uint32_t);
  for (const auto& a : activations_) b += a.capacity() * sizeof(float);
  for (const TensorInfo& t : tensors_) b += t.name.capacity() + t.shape.capacity() * 8;
  for (const std::string& t : vocab_.tokens) b += sizeof(std::string) + t.capacity();
  for (const std::string& m : vocab_.merges) b += sizeof(std::string) + m.capacity();
  b += vocab_.scores.capacity() * sizeof(float) + vocab_.types.capacity() * sizeof(int32_t);
  return b + reader_->verified_record_bytes();
}

Result<TensorLocation> StoreReader::LocateTensor(std::string_view name) const {
  for (size_t i = 0; i < tensors_.size(); ++i) {
    if (tensors_[i].name == name) return TensorLocation{tensors_[i], records_[i]};
  }
  return NotFoundError("store has no tensor '" + std::string(name) + "'");
}

Result<std::vector<Extent>> StoreReader::DenseExtents(std::string_view name, uint64_t first_row,
                                                      uint64_t row_count) const {
  ASSIGN_OR_RETURN(TensorLocation loc, LocateTensor(name));
  if (loc.record.placement != static_cast<uint8_t>(Placement::kDense)) {
    return InvalidArgumentError("tensor '" + std::string(name) + "' is stored in neuron bundles");
  }
  if (first_row > loc.info.rows() || row_count > loc.info.rows() - first_row) {
    return NotFoundError("rows out of range for tensor '" + std::string(name) + "'");
  }
  std::vector<Extent> out;
  if (row_count == 0) return out;
  const uint64_t rpe = loc.record.rows_per_extent;
  for (uint64_t c = first_row / rpe; c <= (first_row + row_count - 1) / rpe; ++c) {
    ASSIGN_OR_RETURN(Extent e, GetExtent(loc.record.first_extent + c));
    out.push_back(e);
  }
  return out;
}

Result<FfnLayerRecord> StoreReader::FfnLayer(uint32_t layer) const {
  if (layer >= ffn_.size()) return NotFoundError("no FFN layer " + std::to_string(layer));
  return ffn_[layer];
}

Result<BundleGeometry> StoreReader::FfnGeometry(uint32_t layer) const {
  ASSIGN_OR_RETURN(FfnLayerRecord f, FfnLayer(layer));
  return BundleGeometry::Make(static_cast<BundleKind>(f.bundle_kind), static_cast<DType>(f.dtype),
                              f.dim, header_.alignment_bytes);
}

Result<std::vector<Extent>> StoreReader::BundleExtents(uint32_t layer, uint32_t first_position,
                                                       uint32_t count) const {
  ASSIGN_OR_RETURN(FfnLayerRecord f, FfnLayer(layer));
  if (first_position > f.n_neurons || count > f.n_neurons - first_position) {
    return NotFoundError("bundle positions out of range in layer " + std::to_string(layer));
  }
  std::vector<Extent> out;
  out.reserve(count);
  for (uint32_t p = 0; p < count; ++p) {
    ASSIGN_OR_RETURN(Extent e, GetExtent(f.first_extent + first_position + p));
    out.push_back(e);
  }
  return out;
}

std::span<const uint32_t> StoreReader::Permutation(uint32_t layer) const {
  if (layer >= permutation_.size()) return {};
  return permutation_[layer];
}

Result<uint32_t> StoreReader::PositionOfNeuron(uint32_t layer, uint32_t neuron) const {
  ASSIGN_OR_RETURN(FfnLayerRecord f, FfnLayer(layer));
  if (neuron >= f.n_neurons) return NotFoundError("no neuron " + std::to_string(neuron));
  std::span<const uint32_t> perm = Permutation(layer);
  if (perm.empty()) return neuron;
  // Linear: the engine builds its own inverse once; this is for tools and tests.
  for (uint32_t p = 0; p < perm.size(); ++p) {
    if (perm[p] == neuron) return p;
  }
  return InternalError("permutation lost a neuron");
}

uint32_t StoreReader::HotCount(uint32_t layer) const {
  return layer < hot_counts_.size() ? hot_counts_[layer] : 0;
}

std::span<const float> StoreReader::ActivationFrequencies(uint32_t layer) const {
  if (layer >= activations_.size()) return {};
  return activations_[layer];
}

Status StoreReader::ReadExtents(std::span<const Extent> extents, std::span<const ByteSpan> outs) {
  return reader_->ReadExtents(extents, outs);
}

Status StoreReader::ReadExtent(const Extent& e, ByteSpan out) {
  return ReadExtents(std::span<const Extent>(&e, 1), std::span<const ByteSpan>(&out, 1));
}

Status StoreReader::VerifyAll(const std::function<void(uint64_t, uint64_t)>& progress) {
  // In file order, a batch at a time; the first bad extent stops the walk (its message names it
  // and what it holds).
  constexpr uint64_t kChunk = 4096;  // extents per call
  std::vector<Extent> chunk;
  uint64_t done = 0;
  for (uint64_t i = 0; i < extents_.size(); i += kChunk) {
    chunk.clear();
    for (uint64_t j = i; j < std::min<uint64_t>(extents_.size(), i + kChunk); ++j) {
      chunk.push_back(ExtentAt(j));
    }
    RETURN_IF_ERROR(reader_->ForEachExtent(chunk, [&](size_t, ConstByteSpan) {
      ++done;
      if (progress) progress(done, extents_.size());
      return Status::Ok();
    }));
  }
  return Status::Ok();
}

std::string StoreReader::DescribeExtent(uint64_t index) const {
  for (size_t i = 0; i < records_.size(); ++i) {
    const TensorRecord& r = records_[i];
    if (r.placement != static_cast<uint8_t>(Placement::kDense) || index < r.first_extent ||
        index >= r.first_extent + r.extent_count) {
      continue;
    }
    const uint64_t first = (index - r.first_extent) * r.rows_per_extent;
    const uint64_t last = std::min(first + r.rows_per_extent, tensors_[i].rows()) - 1;
    return "tensor " + tensors_[i].name + " rows " + std::to_string(first) + ".." +
           std::to_string(last);
  }
  for (const FfnLayerRecord& f : ffn_) {
    if (index < f.first_extent || index >= f.first_extent + f.n_neurons) continue;
    const uint64_t p = index - f.first_extent;
    const std::span<const uint32_t> perm = Permutation(f.layer);
    return "FFN layer " + std::to_string(f.layer) + " bundle " + std::to_string(p) + " (neuron " +
           std::to_string(perm.empty() ? p : perm[p]) + ")";
  }
  return "unreferenced";
}

Status StoreReader::ReadTensor(const TensorInfo& info, ByteSpan out) {
  size_t i = 0;
  while (i < tensors_.size() && tensors_[i].name != info.name) ++i;
  if (i == tensors_.size()) return NotFoundError("store has no tensor '" + info.name + "'");
  const TensorInfo& mine = tensors_[i];
  const TensorRecord& rec = records_[i];
  if (out.size() != mine.size_bytes()) {
    return InvalidArgumentError("ReadTensor " + info.name + ": buffer of " +
                                std::to_string(out.size()) + " bytes, tensor has " +
                                std::to_string(mine.size_bytes()));
  }
  if (rec.placement == static_cast<uint8_t>(Placement::kBundled)) {
    return ReadBundledTensor(mine, rec, out);
  }
  std::vector<Extent> extents;
  std::vector<ByteSpan> outs;
  uint64_t pos = 0;
  for (uint64_t c = 0; c < rec.extent_count; ++c) {
    ASSIGN_OR_RETURN(Extent e, GetExtent(rec.first_extent + c));
    extents.push_back(e);
    outs.push_back(out.subspan(pos, e.raw_bytes));
    pos += e.raw_bytes;
  }
  return ReadExtents(extents, outs);
}

Status StoreReader::ReadBundledTensor(const TensorInfo& info, const TensorRecord& rec,
                                      ByteSpan out) {
  const FfnLayerRecord& f = ffn_[rec.layer];
  ASSIGN_OR_RETURN(BundleGeometry g, FfnGeometry(rec.layer));
  const auto part = static_cast<FfnPart>(rec.ffn_part);
  const uint64_t part_offset = part == FfnPart::kGate ? g.gate_offset()
                               : part == FfnPart::kUp ? g.up_offset()
                                                      : g.down_offset();
  std::span<const uint32_t> perm = Permutation(rec.layer);
  std::vector<float> column(part == FfnPart::kDown ? f.dim : 0);  // down column, f32
  const uint64_t n = f.n_neurons;
  ASSIGN_OR_RETURN(std::vector<Extent> bundles, BundleExtents(rec.layer, 0, f.n_neurons));
  // Bundles arrive in position order within a batch; scatter each to its neuron's row/column.
  return reader_->ForEachExtent(bundles, [&](size_t p, ConstByteSpan bundle) -> Status {
    const uint64_t neuron = perm.empty() ? p : perm[p];
    ConstByteSpan src = bundle.subspan(part_offset, g.part_bytes);
    if (part != FfnPart::kDown) {
      std::memcpy(out.data() + neuron * g.part_bytes, src.data(), g.part_bytes);
    } else if (info.dtype == g.dtype) {  // f32 / f16 / bf16: element-wise transpose, exact
      const uint64_t es = info.dtype == DType::kF32 ? 4 : 2;
      for (uint64_t r = 0; r < f.dim; ++r) {
        std::memcpy(out.data() + (r * n + neuron) * es, src.data() + r * es, es);
      }
    } else {  // block-quantised column -> f32 (info.dtype is f32)
      RETURN_IF_ERROR(DequantizeRow(g.dtype, src, column));
      for (uint64_t r = 0; r < f.dim; ++r) {
        std::memcpy(out.data() + (r * n + neuron) * 4, &column[r], 4);
      }
    }
    return Status::Ok();
  });
}

}  // namespace flashlm::layout
