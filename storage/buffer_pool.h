// BufferPool: a fixed set of equal, aligned buffers carved from one allocation made at start-up.
//
// The pool is the unit the io_uring backend registers with the kernel (io_uring_register_buffers):
// a read whose destination lies inside buffer i is issued as IORING_OP_READ_FIXED with index i.
// Acquire/Release hand buffers out by index without allocating (a free-index stack). The pool
// owns the memory; spans stay valid for the pool's lifetime. It must outlive every backend that
// registered it. Not thread-safe: one owner thread.
#ifndef FLASHLM_STORAGE_BUFFER_POOL_H_
#define FLASHLM_STORAGE_BUFFER_POOL_H_

#include <cstdint>
#include <optional>
#include <vector>

#include "storage/aligned_buffer.h"
#include "storage/bytes.h"
#include "storage/status.h"

namespace flashlm::storage {

class BufferPool {
 public:
  // `buffer_count` buffers of AlignUp(buffer_bytes, alignment_bytes) each. Pools of buffers
  // larger than 4 KiB are backed by transparent huge pages where the kernel allows (memory
  // rounded up to 2 MiB).
  // Errors: InvalidArgument (zero count/size, bad alignment), ResourceExhausted.
  static Result<BufferPool> Create(uint32_t buffer_count, uint64_t buffer_bytes,
                                   uint64_t alignment_bytes = 4096);
  // DRAM such a pool holds once touched (memory and bookkeeping), for budgets.
  static uint64_t ResidentBytes(uint32_t buffer_count, uint64_t buffer_bytes,
                                uint64_t alignment_bytes = 4096);

  BufferPool(BufferPool&&) noexcept = default;
  BufferPool& operator=(BufferPool&&) noexcept = default;

  uint32_t buffer_count() const { return buffer_count_; }
  uint64_t buffer_bytes() const { return buffer_bytes_; }
  uint64_t alignment_bytes() const { return memory_.alignment_bytes(); }
  uint32_t free_count() const { return static_cast<uint32_t>(free_.size()); }

  // Buffer `index` (< buffer_count()), whether acquired or not.
  ByteSpan buffer(uint32_t index) const;
  // Takes a free buffer; nullopt when all are in use.
  std::optional<uint32_t> Acquire();
  // Returns an acquired buffer. Precondition (CHECKed): index was acquired and not released.
  void Release(uint32_t index);

  // The buffer index containing all of `span`, or -1 when it is not inside one buffer.
  int32_t IndexOf(ByteSpan span) const;
  // The whole pool, for registration.
  ByteSpan memory() const { return memory_.span(); }

 private:
  BufferPool() = default;
  AlignedBuffer memory_;
  uint32_t buffer_count_ = 0;
  uint64_t buffer_bytes_ = 0;
  std::vector<uint32_t> free_;   // [n] free buffer indices, a stack
  std::vector<uint8_t> in_use_;  // [buffer_count] 1 when acquired
};

}  // namespace flashlm::storage

#endif  // FLASHLM_STORAGE_BUFFER_POOL_H_
