#include "layout/repack.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <numeric>
#include <vector>

#include "layout/bundle_layout.h"
#include "layout/llama_tensors.h"
#include "layout/store_writer.h"
#include "storage/checksum.h"

namespace flashlm::layout {
namespace {

bool IsStorable(DType t) {
  return t == DType::kF32 || t == DType::kF16 || t == DType::kBF16 || t == DType::kQ8_0 ||
         t == DType::kQ4_0 || t == DType::kQ4_K || t == DType::kQ6_K;
}

// Parses "blk.<N>.ffn_<part>.weight"; returns false for any other name.
bool ParseFfnName(std::string_view name, uint32_t* layer, FfnPart* part) {
  if (name.substr(0, 4) != "blk.") return false;
  size_t dot = name.find('.', 4);
  if (dot == std::string_view::npos || dot == 4 || dot > 13) return false;
  uint64_t l = 0;
  for (size_t i = 4; i < dot; ++i) {
    if (name[i] < '0' || name[i] > '9') return false;
    l = l * 10 + static_cast<uint64_t>(name[i] - '0');
  }
  if (l > UINT32_MAX) return false;
  std::string_view rest = name.substr(dot + 1);
  if (rest == "ffn_gate.weight")
    *part = FfnPart::kGate;
  else if (rest == "ffn_up.weight")
    *part = FfnPart::kUp;
  else if (rest == "ffn_down.weight")
    *part = FfnPart::kDown;
  else
    return false;
  *layer = static_cast<uint32_t>(l);
  return true;
}

std::string FfnName(uint32_t layer, std::string_view part) {
  return "blk." + std::to_string(layer) + ".ffn_" + std::string(part) + ".weight";
}

// Converts one row of `n` values from `from` to `to`; `f32` is scratch of n floats.
Status ConvertRow(DType from, ConstByteSpan src, DType to, ByteSpan dst, std::span<float> f32) {
  if (from == to) {
    std::memcpy(dst.data(), src.data(), dst.size());
    return Status::Ok();
  }
  RETURN_IF_ERROR(DequantizeRow(from, src, f32));
  return QuantizeRow(to, f32, dst);
}

Result<uint64_t> HashSource(const std::string& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) {
    // A folder (HF): hash the digests of its regular files in name order.
    std::vector<std::string> files;
    for (const auto& e : std::filesystem::directory_iterator(path, ec)) {
      if (e.is_regular_file()) files.push_back(e.path().string());
    }
    std::sort(files.begin(), files.end());
    storage::Checksum64Stream h;
    for (const std::string& f : files) {
      ASSIGN_OR_RETURN(uint64_t d, storage::ChecksumFile64(f));
      h.Update(AsBytes(std::string_view(f.substr(f.rfind('/') + 1))));
      h.Update(ConstByteSpan(reinterpret_cast<const std::byte*>(&d), sizeof d));
    }
    return h.Digest();
  }
  return storage::ChecksumFile64(path);
}

template <typename T>
ConstByteSpan PodBytes(const T& v) {
  return ConstByteSpan(reinterpret_cast<const std::byte*>(&v), sizeof v);
}

class Repacker {
 public:
  Repacker(Checkpoint& src, const RepackOptions& o, StoreWriter& w) : src_(src), o_(o), w_(w) {}

  Status Run(const ActivationStats* stats, RepackSummary* summary);

 private:
  Status WriteDense(const TensorInfo& t);
  Status WriteFfnLayer(uint32_t layer, const ActivationStats* stats);
  void Progress(const std::string& name, uint64_t bytes) {
    done_bytes_ += bytes;
    if (o_.progress) o_.progress(RepackProgress{done_bytes_, total_bytes_, name});
  }
  void AddTensorRecord(const std::string& name, TensorRecord rec) {
    rec.order = order_.at(name);
    w_.PutRecord(std::string(catalog_key::kTensorPrefix) + name, PodBytes(rec));
  }

  Checkpoint& src_;
  const RepackOptions& o_;
  StoreWriter& w_;
  std::map<std::string, uint32_t> order_;  // tensor name -> position in the source directory
  uint64_t done_bytes_ = 0;
  uint64_t total_bytes_ = 0;
  uint64_t bundle_bytes_ = 0;
  uint64_t stride_bytes_ = 0;
  std::vector<uint32_t> hot_counts_;  // by FFN layer, with activations
  // Reused across tensors so that each large buffer is faulted in once, not once per tensor.
  std::vector<std::byte> src_buf_, chunk_buf_, gate_buf_, up_buf_;
  std::vector<float> down_f32_buf_, down_t_buf_;
};

Status Repacker::WriteDense(const TensorInfo& t) {
  const DType to = StoredDType(t, o_);
  const uint64_t rows = t.rows(), cols = t.cols();
  const uint64_t in_row = RowBytes(t.dtype, cols), out_row = RowBytes(to, cols);
  if (rows == 0 || cols == 0) return NotSupportedError("empty tensor " + t.name);
  std::vector<std::byte>& src = src_buf_;  // whole tensor, source dtype
  src.resize(t.size_bytes());
  RETURN_IF_ERROR(src_.ReadTensor(t, src));
  const uint64_t rows_per_extent = RowsPerExtent(TensorInfo{t.name, to, t.shape}, o_);
  std::vector<std::byte>& chunk = chunk_buf_;  // rows_per_extent rows in `to`
  std::vector<float> f32(cols);                // one row
  TensorRecord rec{};
  rec.dtype = static_cast<uint8_t>(to);
  rec.placement = static_cast<uint8_t>(Placement::kDense);
  rec.n_dims = static_cast<uint8_t>(t.shape.size());
  for (size_t d = 0; d < t.shape.size(); ++d) rec.shape[d] = t.shape[d];
  rec.rows_per_extent = rows_per_extent;
  for (uint64_t r0 = 0; r0 < rows; r0 += rows_per_extent) {
    const uint64_t n = std::min(rows_per_extent, rows - r0);
    chunk.resize(n * out_row);
    for (uint64_t r = 0; r < n; ++r) {
      RETURN_IF_ERROR(ConvertRow(t.dtype, ConstByteSpan(src).subspan((r0 + r) * in_row, in_row), to,
                                 ByteSpan(chunk).subspan(r * out_row, out_row), f32));
    }
    ASSIGN_OR_RETURN(uint64_t idx, w_.AppendExtent(chunk));
    if (r0 == 0) rec.first_extent = idx;
    ++rec.extent_count;
  }
  AddTensorRecord(t.name, rec);
  Progress(t.name, t.size_bytes());
  return Status::Ok();
}

Status Repacker::WriteFfnLayer(uint32_t layer, const ActivationStats* stats) {
  const TensorInfo* gate = src_.FindTensor(FfnName(layer, "gate"));
  const TensorInfo* up = src_.FindTensor(FfnName(layer, "up"));
  const TensorInfo* down = src_.FindTensor(FfnName(layer, "down"));
  const std::string where = "FFN of layer " + std::to_string(layer);
  if (!gate || !up || !down)
    return NotSupportedError(where + " lacks ffn_gate, ffn_up or ffn_down");
  if (gate->shape.size() != 2 || up->shape != gate->shape || down->shape.size() != 2 ||
      down->shape[0] != gate->shape[1] || down->shape[1] != gate->shape[0] ||
      gate->shape[0] > UINT32_MAX || gate->shape[1] > UINT32_MAX) {
    return NotSupportedError(where +
                             " has inconsistent shapes (want gate/up {hidden, dim}, "
                             "down {dim, hidden})");
  }
  const uint32_t hidden = static_cast<uint32_t>(gate->shape[0]);
  const uint32_t dim = static_cast<uint32_t>(gate->shape[1]);
  const DType to = StoredDType(*up, o_);
  const BundleGeometry g = BundleGeometry::Make(o_.bundle_kind, to, dim, o_.alignment_bytes);
  bundle_bytes_ = g.bundle_bytes;
  stride_bytes_ = g.stride_bytes;

  std::vector<uint32_t> perm;  // position -> neuron; empty: natural order
  if (stats) {
    perm = HotFirstPermutation(stats->layers[layer]);
    w_.PutRecord(LayerKey(catalog_key::kPermPrefix, layer), std::as_bytes(std::span(perm)));
    w_.PutRecord(LayerKey(catalog_key::kActivationsPrefix, layer),
                 std::as_bytes(std::span(stats->layers[layer])));
    // Hot-first order puts every neuron at or above the threshold before every one below it.
    const uint32_t hot = static_cast<uint32_t>(
        std::count_if(stats->layers[layer].begin(), stats->layers[layer].end(),
                      [this](float f) { return f >= o_.hot_threshold; }));
    w_.PutRecord(LayerKey(catalog_key::kHotPrefix, layer), PodBytes(hot));
    hot_counts_.at(layer) = hot;
  }

  // gate+up-down: gate is a dense tensor of its own (read once for gate-first loading).
  std::vector<std::byte>& gate_src = gate_buf_;  // [hidden][RowBytes(gate dtype, dim)]
  if (g.has_gate()) {
    gate_src.resize(gate->size_bytes());
    RETURN_IF_ERROR(src_.ReadTensor(*gate, gate_src));
  } else {
    RETURN_IF_ERROR(WriteDense(*gate));
  }
  std::vector<std::byte>& up_src = up_buf_;  // [hidden][RowBytes(up dtype, dim)]
  up_src.resize(up->size_bytes());
  RETURN_IF_ERROR(src_.ReadTensor(*up, up_src));
  // Down columns are what bundles need: transpose [dim][hidden] into [hidden][dim] in tiles so
  // that neither side is walked with a stride of the whole matrix.
  std::vector<float>& down_t = down_t_buf_;  // [hidden][dim] f32
  down_t.resize(down->num_values());
  {
    std::vector<std::byte>& raw = src_buf_;        // [dim][RowBytes(down dtype, hidden)]
    std::vector<float>& down_f32 = down_f32_buf_;  // [dim][hidden] f32
    raw.resize(down->size_bytes());
    down_f32.resize(down->num_values());
    RETURN_IF_ERROR(src_.ReadTensor(*down, raw));
    const uint64_t row = RowBytes(down->dtype, hidden);
    for (uint64_t r = 0; r < dim; ++r) {
      RETURN_IF_ERROR(DequantizeRow(down->dtype, ConstByteSpan(raw).subspan(r * row, row),
                                    std::span<float>(down_f32).subspan(r * hidden, hidden)));
    }
    // 32 x 32 tiles, writes innermost: each tile's source lines (32 rows x 128 bytes) stay in L1
    // while its destination rows are written sequentially.
    constexpr uint64_t kTile = 32;
    for (uint64_t r0 = 0; r0 < dim; r0 += kTile) {
      for (uint64_t c0 = 0; c0 < hidden; c0 += kTile) {
        const uint64_t r1 = std::min<uint64_t>(dim, r0 + kTile);
        const uint64_t c1 = std::min<uint64_t>(hidden, c0 + kTile);
        for (uint64_t c = c0; c < c1; ++c) {
          for (uint64_t r = r0; r < r1; ++r) down_t[c * dim + r] = down_f32[r * hidden + c];
        }
      }
    }
  }

  const uint64_t gate_row = RowBytes(gate->dtype, dim), up_row = RowBytes(up->dtype, dim);
  std::vector<std::byte> bundle(g.bundle_bytes);  // [gate?][up][down] in `to`
  std::vector<float> f32(dim);                    // one row / column
  uint64_t first_extent = 0;
  for (uint32_t p = 0; p < hidden; ++p) {
    const uint32_t neuron = perm.empty() ? p : perm[p];
    if (g.has_gate()) {
      RETURN_IF_ERROR(ConvertRow(gate->dtype,
                                 ConstByteSpan(gate_src).subspan(neuron * gate_row, gate_row), to,
                                 ByteSpan(bundle).subspan(g.gate_offset(), g.part_bytes), f32));
    }
    RETURN_IF_ERROR(ConvertRow(up->dtype, ConstByteSpan(up_src).subspan(neuron * up_row, up_row),
                               to, ByteSpan(bundle).subspan(g.up_offset(), g.part_bytes), f32));
    RETURN_IF_ERROR(QuantizeRow(to,
                                std::span<const float>(down_t).subspan(uint64_t{neuron} * dim, dim),
                                ByteSpan(bundle).subspan(g.down_offset(), g.part_bytes)));
    ASSIGN_OR_RETURN(uint64_t idx, w_.AppendExtent(bundle));
    if (p == 0) first_extent = idx;
  }

  FfnLayerRecord f{};
  f.layer = layer;
  f.n_neurons = hidden;
  f.dim = dim;
  f.bundle_kind = static_cast<uint8_t>(o_.bundle_kind);
  f.dtype = static_cast<uint8_t>(to);
  f.has_permutation = perm.empty() ? 0 : 1;
  f.first_extent = first_extent;
  f.part_bytes = g.part_bytes;
  f.bundle_bytes = g.bundle_bytes;
  f.stride_bytes = g.stride_bytes;
  w_.PutRecord(LayerKey(catalog_key::kFfnPrefix, layer), PodBytes(f));

  for (auto [t, part] : {std::pair{gate, FfnPart::kGate}, std::pair{up, FfnPart::kUp},
                         std::pair{down, FfnPart::kDown}}) {
    if (part == FfnPart::kGate && !g.has_gate()) continue;  // recorded dense by WriteDense
    TensorRecord rec{};
    rec.dtype = static_cast<uint8_t>(to);
    rec.placement = static_cast<uint8_t>(Placement::kBundled);
    rec.n_dims = 2;
    rec.ffn_part = static_cast<uint8_t>(part);
    rec.shape[0] = t->shape[0];
    rec.shape[1] = t->shape[1];
    rec.layer = layer;
    AddTensorRecord(t->name, rec);
  }
  Progress(up->name,
           (g.has_gate() ? gate->size_bytes() : 0) + up->size_bytes() + down->size_bytes());
  return Status::Ok();
}

Status Repacker::Run(const ActivationStats* stats, RepackSummary* summary) {
  const std::vector<TensorInfo>& tensors = src_.tensors();
  uint32_t max_ffn_layer = 0;
  bool any_ffn = false;
  for (uint32_t i = 0; i < tensors.size(); ++i) {
    const TensorInfo& t = tensors[i];
    if (!order_.emplace(t.name, i).second) return CorruptionError("duplicate tensor " + t.name);
    if (t.shape.empty() || t.shape.size() > 2) {
      return NotSupportedError("tensor " + t.name + " has " + std::to_string(t.shape.size()) +
                               " dimensions (want 1 or 2)");
    }
    total_bytes_ += t.size_bytes();
    uint32_t layer;
    FfnPart part;
    if (ParseFfnName(t.name, &layer, &part)) {
      any_ffn = true;
      max_ffn_layer = std::max(max_ffn_layer, layer);
    }
  }
  if (any_ffn && max_ffn_layer >= tensors.size()) {
    return NotSupportedError("FFN layer numbers exceed the tensor count (layer " +
                             std::to_string(max_ffn_layer) + ")");
  }
  const uint32_t n_ffn = any_ffn ? max_ffn_layer + 1 : 0;
  if (stats) {
    if (stats->layers.size() != n_ffn) {
      return InvalidArgumentError("activation statistics have " +
                                  std::to_string(stats->layers.size()) + " layers, model has " +
                                  std::to_string(n_ffn));
    }
    for (uint32_t l = 0; l < n_ffn; ++l) {
      const TensorInfo* up = src_.FindTensor(FfnName(l, "up"));
      if (up && stats->layers[l].size() != up->shape[0]) {
        return InvalidArgumentError("activation statistics of layer " + std::to_string(l) +
                                    " have " + std::to_string(stats->layers[l].size()) +
                                    " neurons, model has " + std::to_string(up->shape[0]));
      }
    }
  }
  std::vector<bool> ffn_done(n_ffn, false);
  if (stats) hot_counts_.assign(n_ffn, 0);
  for (const TensorInfo& t : tensors) {
    uint32_t layer;
    FfnPart part;
    if (ParseFfnName(t.name, &layer, &part)) {
      if (!ffn_done[layer]) {
        RETURN_IF_ERROR(WriteFfnLayer(layer, stats));
        ffn_done[layer] = true;
      }
      continue;
    }
    RETURN_IF_ERROR(WriteDense(t));
  }
  for (uint32_t l = 0; l < n_ffn; ++l) {
    if (!ffn_done[l]) return NotSupportedError("layer " + std::to_string(l) + " has no FFN");
  }
  summary->tensors = tensors.size();
  summary->source_bytes = total_bytes_;
  summary->bundle_bytes = bundle_bytes_;
  summary->bundle_stride_bytes = stride_bytes_;
  summary->hot_counts = hot_counts_;
  return Status::Ok();
}

}  // namespace

DType StoredDType(const TensorInfo& t, const RepackOptions& o) {
  if (t.shape.size() == 1) return DType::kF32;  // norms stay f32
  if (o.dtype) return *o.dtype;
  return IsStorable(t.dtype) ? t.dtype : DType::kF32;
}

uint64_t RowsPerExtent(const TensorInfo& stored, const RepackOptions& o) {
  const uint64_t extent_max = stored.name == "token_embd.weight" ? o.embedding_extent_bytes_max
                                                                 : o.dense_extent_bytes_max;
  const uint64_t row = std::max<uint64_t>(1, RowBytes(stored.dtype, stored.cols()));
  uint64_t rows = std::max<uint64_t>(1, extent_max / row);
  // Extents whose bytes are a whole number of alignment units, when that many rows fit: a
  // tensor's extents then lie back to back on flash, with no padding between them, and land back
  // to back in a read buffer, where the engine uses them in place (AttentionStream).
  const uint64_t a = std::max<uint64_t>(1, o.alignment_bytes);
  const uint64_t unit = a / std::gcd(row, a);  // rows
  if (rows >= unit) rows -= rows % unit;
  return rows;
}

const TensorInfo* StoreShape::Find(std::string_view name) const {
  for (const TensorInfo& t : dense) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

Result<StoreShape> PlanStoreShape(const ModelConfig& config, const std::vector<TensorInfo>& tensors,
                                  const Vocab& vocab, const RepackOptions& options) {
  if (options.dtype && !IsStorable(*options.dtype)) {
    return InvalidArgumentError(
        "store dtype must be f32, f16, bf16, q8_0, q4_0, q4_K or q6_K, not " +
        std::string(DTypeName(*options.dtype)));
  }
  if (options.dense_extent_bytes_max == 0 || options.embedding_extent_bytes_max == 0) {
    return InvalidArgumentError("dense extent size is 0");
  }
  if (options.alignment_bytes < 512 || (options.alignment_bytes & (options.alignment_bytes - 1))) {
    return InvalidArgumentError("alignment must be a power of two of at least 512 bytes");
  }
  RETURN_IF_ERROR(config.Validate());
  Status shape_ok = CheckLlamaTensors(config, tensors, "model");
  if (!shape_ok.ok()) return InvalidArgumentError(shape_ok.message());
  StoreShape s;
  s.config = config;
  s.bundle_kind = options.bundle_kind;
  s.alignment_bytes = options.alignment_bytes;
  const bool gate_dense = options.bundle_kind == BundleKind::kGateSeparate;
  for (const TensorInfo& t : tensors) {
    uint32_t layer = 0;
    FfnPart part{};
    const DType to = StoredDType(t, options);
    if (ParseFfnName(t.name, &layer, &part)) {
      if (part == FfnPart::kUp) s.ffn_dtype = to;
      if (part != FfnPart::kGate || !gate_dense) continue;
    }
    TensorInfo stored{t.name, to, t.shape};
    s.rows_per_extent.push_back(RowsPerExtent(stored, options));
    s.dense.push_back(std::move(stored));
  }
  for (const std::string& t : vocab.tokens) s.vocab_bytes += sizeof(std::string) + t.capacity();
  for (const std::string& m : vocab.merges) s.vocab_bytes += sizeof(std::string) + m.capacity();
  s.vocab_bytes += vocab.tokens.size() * (sizeof(float) + sizeof(int32_t));
  return s;
}

Result<RepackSummary> Repack(Checkpoint& source, const std::string& out,
                             const RepackOptions& options) {
  const auto start = std::chrono::steady_clock::now();
  if (options.dtype && !IsStorable(*options.dtype)) {
    return InvalidArgumentError(
        "store dtype must be f32, f16, bf16, q8_0, q4_0, q4_K or q6_K, not " +
        std::string(DTypeName(*options.dtype)));
  }
  if (options.dense_extent_bytes_max == 0 || options.embedding_extent_bytes_max == 0) {
    return InvalidArgumentError("dense extent size is 0");
  }
  if (!(options.hot_threshold >= 0.0 && options.hot_threshold <= 1.0)) {
    return InvalidArgumentError("hot threshold must be in [0, 1]");
  }
  // A store must be runnable: the source's config passes the checks every reader applies (a
  // context length of 0, say, is refused here, not by every later command).
  RETURN_IF_ERROR(ValidateLoadedConfig(source.config(), "source"));
  if (options.zstd_level < 1 || options.zstd_level > 22) {
    return InvalidArgumentError("zstd level must be in [1, 22], not " +
                                std::to_string(options.zstd_level));
  }
  if (!(options.zstd_min_saving >= 0.0 && options.zstd_min_saving <= 1.0)) {
    return InvalidArgumentError("zstd minimum saving must be a fraction in [0, 1]");
  }
  std::optional<ActivationStats> stats;
  if (!options.activations_path.empty()) {
    ASSIGN_OR_RETURN(stats, LoadActivationStats(options.activations_path));
  }
  StoreWriterOptions wo;
  wo.alignment_bytes = options.alignment_bytes;
  wo.codec = options.codec;
  wo.zstd_level = options.zstd_level;
  wo.zstd_min_saving = options.zstd_min_saving;
  ASSIGN_OR_RETURN(std::unique_ptr<StoreWriter> writer, StoreWriter::Create(out, wo));

  RepackSummary summary;
  Repacker repacker(source, options, *writer);
  RETURN_IF_ERROR(repacker.Run(stats ? &*stats : nullptr, &summary));

  const ModelConfig& config = source.config();
  writer->PutText(std::string(catalog_key::kConfig), EncodeConfigJson(config));
  const Vocab& vocab = source.vocab();
  if (!vocab.empty()) {
    writer->PutText(std::string(catalog_key::kVocabMeta), EncodeVocabMetaJson(vocab));
    writer->PutText(std::string(catalog_key::kVocabTokens), EncodeStringList(vocab.tokens));
    std::vector<float> scores = vocab.scores;
    std::vector<int32_t> types = vocab.types;
    scores.resize(vocab.tokens.size(), 0.0f);
    types.resize(vocab.tokens.size(), Vocab::kNormal);
    writer->PutRecord(std::string(catalog_key::kVocabScores), std::as_bytes(std::span(scores)));
    writer->PutRecord(std::string(catalog_key::kVocabTypes), std::as_bytes(std::span(types)));
    writer->PutText(std::string(catalog_key::kVocabMerges), EncodeStringList(vocab.merges));
  }
  nlohmann::json layout;
  layout["alignment_bytes"] = options.alignment_bytes;
  layout["dtype"] = options.dtype ? std::string(DTypeName(*options.dtype)) : "source";
  layout["bundle"] = std::string(BundleKindName(options.bundle_kind));
  layout["hot_first"] = stats.has_value();
  if (stats) layout["hot_threshold"] = options.hot_threshold;
  layout["codec"] = std::string(CodecName(options.codec));
  layout["zstd_level"] = options.zstd_level;
  layout["zstd_min_saving"] = options.zstd_min_saving;
  layout["dense_extent_bytes_max"] = options.dense_extent_bytes_max;
  layout["embedding_extent_bytes_max"] = options.embedding_extent_bytes_max;
  writer->PutText(std::string(catalog_key::kLayout), layout.dump(2));

  nlohmann::json prov;
  prov["flashlm_version"] = FLASHLM_VERSION;
  prov["source_format"] = std::string(source.format());
  prov["source_path"] = options.source_path;
  if (!options.source_path.empty()) {
    ASSIGN_OR_RETURN(uint64_t h, HashSource(options.source_path));
    char buf[24];
    std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
    prov["source_xxh3_64"] = buf;
  }
  prov["activations_path"] = options.activations_path;
  prov["created_unix_s"] = std::chrono::duration_cast<std::chrono::seconds>(
                               std::chrono::system_clock::now().time_since_epoch())
                               .count();
  // replace: a path with invalid UTF-8 must not make dump() throw.
  writer->PutText(std::string(catalog_key::kProvenance),
                  prov.dump(2, ' ', false, nlohmann::json::error_handler_t::replace));

  RETURN_IF_ERROR(writer->Finish());
  const StoreWriteStats& ws = writer->stats();
  summary.extents = ws.extent_count;
  summary.raw_bytes = ws.raw_bytes;
  summary.stored_bytes = ws.stored_bytes;
  summary.file_bytes = ws.file_bytes;
  summary.compressed_extents = ws.compressed_extents;
  summary.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return summary;
}

}  // namespace flashlm::layout
