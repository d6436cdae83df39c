// AlignedBuffer: one allocation (heap, or from 2 MiB up an anonymous mapping) whose address and
// size are multiples of an alignment, as O_DIRECT reads require. Owns its memory (move-only); the
// span it hands out lives as long as the buffer. Not thread-safe to mutate; distinct buffers are
// independent.
#ifndef FLASHLM_STORAGE_ALIGNED_BUFFER_H_
#define FLASHLM_STORAGE_ALIGNED_BUFFER_H_

#include <cstddef>
#include <cstdint>

#include "storage/bytes.h"
#include "storage/status.h"

namespace flashlm::storage {

class AlignedBuffer {
 public:
  AlignedBuffer() = default;
  // Allocates AlignUp(size_bytes, alignment_bytes) zeroed bytes aligned to alignment_bytes.
  // From 2 MiB up the bytes are a fresh anonymous mapping: zero without being written, its pages
  // become resident as they are first touched. With huge_pages such buffers are 2 MiB-aligned
  // and advised MADV_HUGEPAGE before first touch, so that direct I/O into them needs few
  // physical segments (see docs/benchmarks.md, "Reads"); their resident size then rounds up to a
  // multiple of 2 MiB.
  // Errors: InvalidArgument (alignment not a power of two, or size 0), ResourceExhausted.
  static Result<AlignedBuffer> Allocate(uint64_t size_bytes, uint64_t alignment_bytes,
                                        bool huge_pages = true);
  // The DRAM such a buffer occupies once all of it is touched: the size rounded up to the
  // alignment and, with huge pages from 2 MiB up, to whole huge pages. What budgets count.
  static uint64_t ResidentBytes(uint64_t size_bytes, uint64_t alignment_bytes,
                                bool huge_pages = true);

  AlignedBuffer(AlignedBuffer&& other) noexcept;
  AlignedBuffer& operator=(AlignedBuffer&& other) noexcept;
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  ~AlignedBuffer();

  std::byte* data() const { return data_; }
  uint64_t size_bytes() const { return size_bytes_; }
  uint64_t alignment_bytes() const { return alignment_bytes_; }
  ByteSpan span() const { return {data_, static_cast<size_t>(size_bytes_)}; }
  bool empty() const { return data_ == nullptr; }

  // Makes every page of the buffer resident now (zeroed once, by the kernel), so that no later
  // first touch pays for it: for buffers whose pages will all be used and whose first use is
  // timed, such as a KV cache (its first prefill would otherwise fault in and zero a huge page
  // per layer). MADV_POPULATE_WRITE where the kernel has it, else a write of one zero byte per
  // page (the buffer's bytes stay zero). No-op for heap buffers, which are already written.
  // Errors: ResourceExhausted (the kernel could not provide the pages).
  Status Populate();

 private:
  void Release();

  std::byte* data_ = nullptr;
  uint64_t size_bytes_ = 0;
  uint64_t alignment_bytes_ = 0;
  uint64_t mapped_bytes_ = 0;  // > 0: data_ is a mapping of this length (else from the heap)
};

}  // namespace flashlm::storage

#endif  // FLASHLM_STORAGE_ALIGNED_BUFFER_H_
