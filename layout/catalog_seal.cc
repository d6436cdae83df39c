#include "layout/catalog_seal.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <vector>

#include "layout/store_format.h"
#include "storage/checksum.h"
#include "storage/file.h"

namespace flashlm::layout {
namespace {

std::string Hex(uint64_t v) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "%016" PRIx64, v);
  return buf;
}

uint64_t SealChecksum(const CatalogSeal& s) {
  return storage::Checksum64(
      ConstByteSpan(reinterpret_cast<const std::byte*>(&s), offsetof(CatalogSeal, seal_xxh3)));
}

// Size and XXH3-64 of the regular file at `path`, read to its end; the size must not exceed
// kCatalogBytesMax.
struct Digest {
  uint64_t bytes = 0;
  uint64_t xxh3 = 0;
};
Result<Digest> DigestCatalog(const std::string& path) {
  Result<int> opened = storage::OpenRegularFile(path);
  if (!opened.ok()) {
    if (opened.status().code() == StatusCode::kInvalidArgument) {
      return CorruptionError("catalog is not a regular file: " + path);
    }
    return opened.status();
  }
  const int fd = *opened;
  storage::Checksum64Stream hash;
  std::vector<std::byte> buf(1 << 20);  // bytes of the catalog, in order
  Digest d;
  const Status st = storage::ReadFileInPieces(fd, path, kCatalogBytesMax, buf, [&](ConstByteSpan b) {
    d.bytes += b.size();
    hash.Update(b);
  });
  ::close(fd);
  if (st.code() == StatusCode::kInvalidArgument) {
    return CorruptionError("catalog " + path + " is larger than " + FormatBytes(kCatalogBytesMax));
  }
  RETURN_IF_ERROR(st);
  d.xxh3 = hash.Digest();
  return d;
}

}  // namespace

Status WriteCatalogSeal(const std::string& store_dir) {
  const std::string catalog = store_dir + "/" + std::string(kCatalogFileName);
  ASSIGN_OR_RETURN(Digest d, DigestCatalog(catalog));
  CatalogSeal seal{};
  std::memcpy(seal.magic, kCatalogSealMagic, sizeof seal.magic);
  seal.catalog_bytes = d.bytes;
  seal.catalog_xxh3 = d.xxh3;
  seal.seal_xxh3 = SealChecksum(seal);
  return storage::WriteFileAtomically(
      store_dir + "/" + std::string(kCatalogSealFileName),
      ConstByteSpan(reinterpret_cast<const std::byte*>(&seal), sizeof seal));
}

Result<uint64_t> CheckCatalogSeal(const std::string& store_dir) {
  const std::string catalog = store_dir + "/" + std::string(kCatalogFileName);
  const std::string seal_path = store_dir + "/" + std::string(kCatalogSealFileName);
  Result<int> opened = storage::OpenRegularFile(seal_path);
  if (!opened.ok()) {
    if (opened.status().code() == StatusCode::kNotFound) {
      return NotSupportedError(
          "store " + store_dir + " has no " + std::string(kCatalogSealFileName) +
          ": it was written before store format version " + std::to_string(kStoreFormatVersion) +
          " (or the file was lost); this flashlm (" FLASHLM_VERSION ") reads version " +
          std::to_string(kStoreFormatVersion) + ". Repack the model with this flashlm.");
    }
    if (opened.status().code() == StatusCode::kInvalidArgument) {
      return CorruptionError(std::string(opened.status().message()));
    }
    return opened.status();
  }
  CatalogSeal seal{};
  char extra = 0;
  const ssize_t n = ::pread(*opened, &seal, sizeof seal, 0);
  const int e = errno;
  const ssize_t more =
      n == static_cast<ssize_t>(sizeof seal) ? ::pread(*opened, &extra, 1, sizeof seal) : 0;
  ::close(*opened);
  if (n < 0) return ErrnoError("read " + seal_path, e);
  if (n != static_cast<ssize_t>(sizeof seal) || more != 0 ||
      std::memcmp(seal.magic, kCatalogSealMagic, sizeof seal.magic) != 0 ||
      seal.seal_xxh3 != SealChecksum(seal)) {
    return CorruptionError("store " + store_dir + ": " + std::string(kCatalogSealFileName) +
                           " is damaged (not 32 bytes with a valid magic and checksum)");
  }
  ASSIGN_OR_RETURN(Digest d, DigestCatalog(catalog));
  if (d.bytes != seal.catalog_bytes) {
    return CorruptionError("store " + store_dir + ": " + std::string(kCatalogFileName) + " has " +
                           std::to_string(d.bytes) + " bytes, its seal says " +
                           std::to_string(seal.catalog_bytes) + " (cut short or overwritten)");
  }
  if (d.xxh3 != seal.catalog_xxh3) {
    return CorruptionError("store " + store_dir + ": " + std::string(kCatalogFileName) +
                           " fails its checksum (XXH3-64 " + Hex(d.xxh3) + ", sealed " +
                           Hex(seal.catalog_xxh3) + "): the catalog is damaged");
  }
  return seal.catalog_xxh3;
}

}  // namespace flashlm::layout
