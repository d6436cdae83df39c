#include "storage/aligned_buffer.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
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
  const uint64_t rounded = AlignUp(size_bytes, alignment_bytes);
  AlignedBuffer b;
  b.size_bytes_ = rounded;
  b.alignment_bytes_ = alignment_bytes;
  if (rounded >= kHugePageBytes) {
    // Large buffers are mapped: fresh anonymous pages are already zero, so nothing is written
    // here and each page is zeroed once, by the kernel, on first touch (memset after the
    // allocation touched every page of a 1 GB model a second time). With huge_pages they start
    // on a 2 MiB boundary and ask for transparent huge pages before they are first touched: I/O
    // into them then needs a few large physical segments instead of one per 4 KiB page (a 1 MiB
    // read into 4 KiB pages is 256 segments, above virtio-blk's usual 254).
    const uint64_t page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
    uint64_t align = std::max(alignment_bytes, page);
    if (huge_pages) align = std::max(align, kHugePageBytes);
    const uint64_t length = AlignUp(rounded, huge_pages ? kHugePageBytes : page);
    const uint64_t slack = align - page;  // mmap returns page-aligned addresses
    void* m =
        mmap(nullptr, length + slack, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) {
      return ResourceExhaustedError("cannot map " + std::to_string(rounded) + " bytes");
    }
    const uintptr_t start = reinterpret_cast<uintptr_t>(m);
    const uintptr_t aligned = AlignUp(start, align);
    // Trim the slack before and after the aligned range.
    if (aligned > start) (void)munmap(m, aligned - start);
    const uintptr_t tail = aligned + length;
    if (start + length + slack > tail) {
      (void)munmap(reinterpret_cast<void*>(tail), start + length + slack - tail);
    }
    if (huge_pages) (void)madvise(reinterpret_cast<void*>(aligned), length, MADV_HUGEPAGE);
    b.data_ = reinterpret_cast<std::byte*>(aligned);
    b.mapped_bytes_ = length;
    return b;
  }
  // aligned_alloc needs at least pointer alignment.
  const uint64_t align = std::max<uint64_t>(alignment_bytes, sizeof(void*));
  void* p = std::aligned_alloc(align, AlignUp(rounded, align));
  if (p == nullptr) {
    return ResourceExhaustedError("cannot allocate " + std::to_string(rounded) + " bytes");
  }
  std::memset(p, 0, rounded);
  b.data_ = static_cast<std::byte*>(p);
  return b;
}

Status AlignedBuffer::Populate() {
  if (mapped_bytes_ == 0) return Status::Ok();
#ifdef MADV_POPULATE_WRITE
  if (madvise(data_, mapped_bytes_, MADV_POPULATE_WRITE) == 0) return Status::Ok();
  if (errno != EINVAL) {  // EINVAL: a kernel before 5.14; anything else: no memory
    return ResourceExhaustedError("cannot make " + std::to_string(mapped_bytes_) +
                                  " bytes resident: " + std::strerror(errno));
  }
#endif
  const uint64_t page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  for (uint64_t o = 0; o < mapped_bytes_; o += page) {
    reinterpret_cast<volatile std::byte*>(data_)[o] = std::byte{0};
  }
  return Status::Ok();
}

void AlignedBuffer::Release() {
  if (data_ == nullptr) return;
  if (mapped_bytes_ > 0) {
    (void)munmap(data_, mapped_bytes_);
  } else {
    std::free(data_);
  }
  data_ = nullptr;
}

AlignedBuffer::AlignedBuffer(AlignedBuffer&& o) noexcept
    : data_(std::exchange(o.data_, nullptr)),
      size_bytes_(std::exchange(o.size_bytes_, 0)),
      alignment_bytes_(std::exchange(o.alignment_bytes_, 0)),
      mapped_bytes_(std::exchange(o.mapped_bytes_, 0)) {}

AlignedBuffer& AlignedBuffer::operator=(AlignedBuffer&& o) noexcept {
  if (this != &o) {
    Release();
    data_ = std::exchange(o.data_, nullptr);
    size_bytes_ = std::exchange(o.size_bytes_, 0);
    alignment_bytes_ = std::exchange(o.alignment_bytes_, 0);
    mapped_bytes_ = std::exchange(o.mapped_bytes_, 0);
  }
  return *this;
}

AlignedBuffer::~AlignedBuffer() { Release(); }

}  // namespace flashlm::storage
