#include "storage/zstd_codec.h"

#include <zstd.h>
#include <zstd_errors.h>

#include <string>

namespace flashlm::storage {

size_t ZstdCompressBound(size_t raw_bytes) { return ZSTD_compressBound(raw_bytes); }

Result<size_t> ZstdCompress(ConstByteSpan src, ByteSpan dst, int level) {
  size_t n = ZSTD_compress(dst.data(), dst.size(), src.data(), src.size(), level);
  if (ZSTD_isError(n)) {
    if (ZSTD_getErrorCode(n) == ZSTD_error_dstSize_tooSmall) {
      return ResourceExhaustedError("zstd: destination too small");
    }
    return InternalError(std::string("zstd compress: ") + ZSTD_getErrorName(n));
  }
  return n;
}

Status ZstdDecompress(ConstByteSpan src, ByteSpan dst) {
  // The frame header records the content size; a mismatch means the extent is not what the
  // catalog says, which is corruption rather than a caller error.
  unsigned long long content = ZSTD_getFrameContentSize(src.data(), src.size());
  if (content == ZSTD_CONTENTSIZE_ERROR || content == ZSTD_CONTENTSIZE_UNKNOWN) {
    return CorruptionError("zstd: malformed frame header");
  }
  if (content != dst.size()) {
    return CorruptionError("zstd: frame holds " + std::to_string(content) + " bytes, expected " +
                           std::to_string(dst.size()));
  }
  size_t n = ZSTD_decompress(dst.data(), dst.size(), src.data(), src.size());
  if (ZSTD_isError(n)) return CorruptionError(std::string("zstd: ") + ZSTD_getErrorName(n));
  if (n != dst.size()) return CorruptionError("zstd: short frame");
  return Status::Ok();
}

}  // namespace flashlm::storage
