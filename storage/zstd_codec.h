// zstd compression of whole extents (one-shot, no framing beyond zstd's own). Stateless and
// thread-safe; each call allocates its own zstd context. Not meant for the per-token path:
// the store compresses only extents where that saves space, and the reader decompresses into a
// caller buffer of the known raw size.
#ifndef FLASHLM_STORAGE_ZSTD_CODEC_H_
#define FLASHLM_STORAGE_ZSTD_CODEC_H_

#include <cstddef>

#include "storage/bytes.h"
#include "storage/status.h"

namespace flashlm::storage {

// Largest compressed size of `raw_bytes` input bytes (zstd's compress bound).
size_t ZstdCompressBound(size_t raw_bytes);

// Compresses `src` into `dst` (which should hold ZstdCompressBound(src.size()) bytes) at `level`
// (1..19). Returns the compressed length. Errors: ResourceExhausted when dst is too small,
// Internal for other zstd failures.
Result<size_t> ZstdCompress(ConstByteSpan src, ByteSpan dst, int level);

// Decompresses `src` into `dst`, which must be exactly the raw size. Errors: Corruption when the
// frame is malformed or its content size is not dst.size().
Status ZstdDecompress(ConstByteSpan src, ByteSpan dst);

}  // namespace flashlm::storage

#endif  // FLASHLM_STORAGE_ZSTD_CODEC_H_
