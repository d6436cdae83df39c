// The flashlm store format, version 2: constants, catalog keys and the fixed-width binary records
// kept in the catalog. docs/format.md describes the same bytes in prose; keep them in step.
//
// A store is a folder:
//   catalog.mdb        LMDB environment (MDB_NOSUBDIR) holding every record below
//   catalog.sum        the catalog's size and XXH3-64 (layout/catalog_seal.h)
//   data-00000.bin     extents, each starting at a multiple of the store's alignment
// Records are little-endian and packed exactly as declared (static_asserts pin the sizes).
// Plain values; thread-compatible.
#ifndef FLASHLM_LAYOUT_STORE_FORMAT_H_
#define FLASHLM_LAYOUT_STORE_FORMAT_H_

#include <bit>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "layout/model_config.h"
#include "storage/bytes.h"
#include "storage/status.h"

namespace flashlm::layout {

static_assert(std::endian::native == std::endian::little,
              "store records are written as little-endian memory images");

// 2: catalog.sum seals the catalog (layout/catalog_seal.h); version 1 stores had none.
inline constexpr uint32_t kStoreFormatVersion = 2;
inline constexpr char kStoreMagic[8] = {'F', 'L', 'M', 'S', 'T', 'O', 'R', 'E'};
inline constexpr std::string_view kCatalogFileName = "catalog.mdb";
// Folders whose name contains kTempMarker (the writer makes "<kTempMarker><pid>-<n>" beside OUT)
// are repacks in progress (or killed); never stores.
inline constexpr std::string_view kTempMarker = ".flashlm-tmp-";

// "data-00000.bin" for index 0.
std::string DataFileName(uint32_t file_index);

// Catalog keys. Keys with a trailing '/' are prefixes followed by a name or a 5-digit layer.
namespace catalog_key {
inline constexpr std::string_view kHeader = "header";             // StoreHeader
inline constexpr std::string_view kConfig = "config";             // JSON ModelConfig
inline constexpr std::string_view kLayout = "layout";             // JSON layout parameters
inline constexpr std::string_view kProvenance = "provenance";     // JSON source + flashlm version
inline constexpr std::string_view kVocabMeta = "vocab/meta";      // JSON kind, special ids, flags
inline constexpr std::string_view kVocabTokens = "vocab/tokens";  // StringList
inline constexpr std::string_view kVocabScores = "vocab/scores";  // f32[n]
inline constexpr std::string_view kVocabTypes = "vocab/types";    // i32[n]
inline constexpr std::string_view kVocabMerges = "vocab/merges";  // StringList
inline constexpr std::string_view kExtents = "extents";           // ExtentRecord[extent_count]
inline constexpr std::string_view kTensorPrefix = "tensor/";      // + name -> TensorRecord
inline constexpr std::string_view kFfnPrefix = "ffn/";            // + 00000 -> FfnLayerRecord
inline constexpr std::string_view kPermPrefix = "perm/";          // + 00000 -> u32[n_neurons]
inline constexpr std::string_view kActivationsPrefix = "activations/";  // + 00000 -> f32[n]
inline constexpr std::string_view kHotPrefix = "hot/";  // + 00000 -> u32: hot set = [0, count)
}  // namespace catalog_key

// "ffn/00003" etc.
std::string LayerKey(std::string_view prefix, uint32_t layer);

enum class Codec : uint8_t { kNone = 0, kZstd = 1 };
std::string_view CodecName(Codec c);

// How FFN neurons are bundled. Values are stored.
enum class BundleKind : uint8_t {
  kGateUpDown = 0,    // bundle i = [gate row i | up row i | down column i]
  kGateSeparate = 1,  // ffn_gate is a dense tensor; bundle i = [up row i | down column i]
};
std::string_view BundleKindName(BundleKind k);  // "gate-up-down", "gate+up-down"

enum class Placement : uint8_t {
  kDense = 0,    // rows packed into extents of rows_per_extent rows each
  kBundled = 1,  // spread over the layer's neuron bundles (ffn_gate/up/down)
};

// Which part of a bundle a bundled tensor is. Values are stored.
enum class FfnPart : uint8_t { kNone = 0, kGate = 1, kUp = 2, kDown = 3 };

// Catalog "header": identifies a store and its format version. 32 bytes.
struct StoreHeader {
  char magic[8];             // kStoreMagic
  uint32_t format_version;   // kStoreFormatVersion
  uint32_t data_file_count;  // data-00000.bin ... ; 1 in this version
  uint32_t alignment_bytes;  // every extent offset is a multiple of this (power of two)
  uint32_t reserved;         // 0
  uint64_t extent_count;     // records in "extents"
};
static_assert(sizeof(StoreHeader) == 32);

// One extent: a byte range of a data file with its codec and checksum. 40 bytes.
struct ExtentRecord {
  uint64_t offset_bytes;  // multiple of alignment_bytes
  uint64_t stored_bytes;  // bytes on flash (compressed length when codec is zstd)
  uint64_t raw_bytes;     // bytes after decoding
  uint64_t checksum;      // XXH3-64 of the stored bytes
  uint32_t file_index;    // data file
  uint8_t codec;          // Codec
  uint8_t reserved[3];    // 0
};
static_assert(sizeof(ExtentRecord) == 40);

// Catalog "tensor/<name>": where a tensor lives. 56 bytes.
struct TensorRecord {
  uint32_t order;            // position in the tensor directory (source order)
  uint8_t dtype;             // DType of the stored bytes
  uint8_t placement;         // Placement
  uint8_t n_dims;            // 1 or 2
  uint8_t ffn_part;          // FfnPart (kBundled), else 0
  uint64_t shape[2];         // outermost first; shape[1] unused when n_dims == 1
  uint64_t first_extent;     // kDense: first of extent_count extents; kBundled: unused (0)
  uint64_t extent_count;     // kDense: ceil(rows / rows_per_extent); kBundled: 0
  uint64_t rows_per_extent;  // kDense: rows per extent (the last may hold fewer); kBundled: 0
  uint32_t layer;            // kBundled: the FFN layer; else 0
  uint32_t reserved1;        // 0
};
static_assert(sizeof(TensorRecord) == 56);

// Catalog "ffn/<layer>": one layer's neuron bundles. 56 bytes.
// Bundle at position p (0 <= p < n_neurons) is extent first_extent + p and holds neuron
// perm[p] ("perm/<layer>"; identity when has_permutation is 0). Its raw bytes are the parts in
// order [gate row][up row][down column] (gate absent for kGateSeparate), each part
// part_bytes = RowBytes(dtype, dim) long; the down column is quantised as a row of dim values.
struct FfnLayerRecord {
  uint32_t layer;
  uint32_t n_neurons;       // hidden_dim
  uint32_t dim;             // values per part
  uint8_t bundle_kind;      // BundleKind
  uint8_t dtype;            // DType of every part
  uint8_t has_permutation;  // 1: "perm/<layer>" holds u32[n_neurons], position -> neuron
  uint8_t reserved0;        // 0
  uint64_t first_extent;
  uint64_t part_bytes;    // RowBytes(dtype, dim)
  uint64_t bundle_bytes;  // raw bytes of one bundle (2 or 3 parts)
  uint64_t stride_bytes;  // AlignUp(bundle_bytes, alignment): one O_DIRECT read per bundle
  uint64_t reserved1;     // 0
};
static_assert(sizeof(FfnLayerRecord) == 56);

// StringList: u32 count, then per string u32 length + bytes (no terminator).
std::string EncodeStringList(const std::vector<std::string>& list);
// Errors: Corruption when a length runs past the end or bytes are left over.
Result<std::vector<std::string>> DecodeStringList(ConstByteSpan bytes);

// JSON encodings of the catalog's "config" and "vocab/meta" values (field names as in
// ModelConfig / Vocab). Decoders never throw: Corruption names the missing or mistyped field.
std::string EncodeConfigJson(const ModelConfig& config);
Result<ModelConfig> DecodeConfigJson(std::string_view json);
std::string EncodeVocabMetaJson(const Vocab& vocab);
// Fills the non-list fields of `vocab`.
Status DecodeVocabMetaJson(std::string_view json, Vocab* vocab);

}  // namespace flashlm::layout

#endif  // FLASHLM_LAYOUT_STORE_FORMAT_H_
