#include "storage/aligned_buffer.h"

#include <sys/mman.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>

namespace flashlm::storage {
namespace {
constexpr uint64_t kHugePageBytes = uint64_t{2} << 20;
}  // namespace

uint64_t AlignedBuffer::ResidentBytes(uint64_t size_bytes, uint64_t alignment_bytes,
                                      bool huge_pages) {
  const uint64_t rounded = AlignUp(size_bytes, alignment_bytes);
  return huge_pages && rounded >= kHugePageBytes ? AlignUp(rounded, kHugePageBytes) : rounded;
}

Result<AlignedBuffer> AlignedBuffer::Allocate(uint64_t size_bytes, uint64_t alignment_bytes,
                                              bool huge_pages) {
  if (!IsPowerOfTwo(alignment_bytes)) {
    return InvalidArgumentError("buffer alignment " + std::to_string(alignment_bytes) +
                                " is not a power of two");
  }
  if (size_bytes == 0) return InvalidArgumentError("buffer size is 0");
  if (size_bytes > (uint64_t{1} << 48)) {
    return InvalidArgumentError("buffer size " + std::to_string(size_bytes) + " is too large");
  }
  uint64_t rounded = AlignUp(size_bytes, alignment_bytes);
  // aligned_alloc needs at least pointer alignment.
  uint64_t align = alignment_bytes < sizeof(void*) ? sizeof(void*) : alignment_bytes;
  // Large buffers start on a 2 MiB boundary and ask for transparent huge pages before they are
  // first touched: I/O into them then needs a few large physical segments instead of one per
  // 4 KiB page (a 1 MiB read into 4 KiB pages is 256 segments, above virtio-blk's usual 254).
  constexpr uint64_t kHuge = kHugePageBytes;
  bool huge = huge_pages && rounded >= kHuge;
  if (huge && align < kHuge) align = kHuge;
  void* p = std::aligned_alloc(align, AlignUp(rounded, align));
  if (p == nullptr) {
    return ResourceExhaustedError("cannot allocate " + std::to_string(rounded) + " bytes");
  }
  if (huge) (void)madvise(p, AlignUp(rounded, kHuge), MADV_HUGEPAGE);  // a hint; may fail
  std::memset(p, 0, rounded);
  AlignedBuffer b;
  b.data_ = static_cast<std::byte*>(p);
  b.size_bytes_ = rounded;
  b.alignment_bytes_ = alignment_bytes;
  return b;
}

AlignedBuffer::AlignedBuffer(AlignedBuffer&& o) noexcept
    : data_(std::exchange(o.data_, nullptr)),
      size_bytes_(std::exchange(o.size_bytes_, 0)),
      alignment_bytes_(std::exchange(o.alignment_bytes_, 0)) {}

AlignedBuffer& AlignedBuffer::operator=(AlignedBuffer&& o) noexcept {
  if (this != &o) {
    std::free(data_);
    data_ = std::exchange(o.data_, nullptr);
    size_bytes_ = std::exchange(o.size_bytes_, 0);
    alignment_bytes_ = std::exchange(o.alignment_bytes_, 0);
  }
  return *this;
}

AlignedBuffer::~AlignedBuffer() { std::free(data_); }

}  // namespace flashlm::storage
