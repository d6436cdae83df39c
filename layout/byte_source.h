// ByteSource: random-access reads from a checkpoint file or an in-memory buffer. The readers in
// layout/ parse through this seam so that the fuzz targets and the corrupt-input tests drive the
// very same code from memory that production drives from disk.
//
// A ByteSource is not thread-safe (one reader owns it); it owns its file descriptor or buffer.
#ifndef FLASHLM_LAYOUT_BYTE_SOURCE_H_
#define FLASHLM_LAYOUT_BYTE_SOURCE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "storage/bytes.h"
#include "storage/status.h"

namespace flashlm::layout {

class ByteSource {
 public:
  virtual ~ByteSource() = default;
  // Total size in bytes, fixed at open.
  virtual uint64_t size_bytes() const = 0;
  // Fills all of `out` from `offset_bytes`. Errors: Corruption when the range passes the end
  // (named with the source's name), IoError when the read fails.
  virtual Status ReadAt(uint64_t offset_bytes, ByteSpan out) = 0;
  // The file path or "<memory>", for error messages.
  virtual const std::string& name() const = 0;
};

// Opens `path` read-only. Errors: NotFound, IoError.
Result<std::unique_ptr<ByteSource>> OpenFileSource(std::string_view path);

// A source over a copy of `bytes`.
std::unique_ptr<ByteSource> MemorySource(ConstByteSpan bytes, std::string name = "<memory>");

// Checks that [offset, offset + length) lies inside [0, size) without 64-bit overflow.
inline bool RangeInside(uint64_t offset, uint64_t length, uint64_t size) {
  return offset <= size && length <= size - offset;
}

}  // namespace flashlm::layout

#endif  // FLASHLM_LAYOUT_BYTE_SOURCE_H_
