// The catalog seal: `catalog.sum`, a 32-byte file beside `catalog.mdb` holding the catalog
// file's exact size and the XXH3-64 of all its bytes (store format version 2, docs/format.md).
//
// LMDB trusts the bytes it maps: its page headers, node offsets and value sizes are not
// checked against damage, and a flipped bit in a record changes the model silently. The seal
// covers every byte of the catalog — records and LMDB's own structure — and is checked before
// LMDB opens the file, so LMDB only ever parses bytes the writer committed. The check reads the
// whole catalog once (a few MB even for 7B models; XXH3 runs at GB/s).
// Stateless functions; thread-safe.
#ifndef FLASHLM_LAYOUT_CATALOG_SEAL_H_
#define FLASHLM_LAYOUT_CATALOG_SEAL_H_

#include <cstdint>
#include <string>
#include <string_view>

#include "storage/status.h"

namespace flashlm::layout {

inline constexpr std::string_view kCatalogSealFileName = "catalog.sum";
inline constexpr char kCatalogSealMagic[8] = {'F', 'L', 'M', 'C', 'S', 'E', 'A', 'L'};

// catalog.sum, 32 bytes, little-endian.
struct CatalogSeal {
  char magic[8];           // kCatalogSealMagic
  uint64_t catalog_bytes;  // size of catalog.mdb
  uint64_t catalog_xxh3;   // XXH3-64 (seed 0) of catalog.mdb's catalog_bytes bytes
  uint64_t seal_xxh3;      // XXH3-64 of the 24 bytes above
};
static_assert(sizeof(CatalogSeal) == 32);

// The largest catalog a store may have (the seal check reads all of it).
inline constexpr uint64_t kCatalogBytesMax = uint64_t{4} << 30;

// Writes `<store_dir>/catalog.sum` for the finished `<store_dir>/catalog.mdb` and fsyncs it.
// The catalog must not change afterwards. Errors: IoError, Corruption (the catalog is not a
// regular file or exceeds kCatalogBytesMax).
Status WriteCatalogSeal(const std::string& store_dir);

// Checks `<store_dir>/catalog.mdb` against `<store_dir>/catalog.sum`. Opens only regular files
// (never blocks on a FIFO). Errors: NotSupported (no catalog.sum: a store older than format
// version 2, or the file was lost), Corruption (seal damaged, catalog of another size, checksum
// mismatch — the message names the file and both values), IoError. Returns the sealed XXH3-64
// of the catalog: the store's identity (what files kept beside a store, such as calibrated FFN
// thresholds, are tied to).
Result<uint64_t> CheckCatalogSeal(const std::string& store_dir);

}  // namespace flashlm::layout

#endif  // FLASHLM_LAYOUT_CATALOG_SEAL_H_
