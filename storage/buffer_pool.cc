#include "storage/buffer_pool.h"

#include <string>

#include "storage/check.h"

namespace flashlm::storage {

namespace {
// Bytes of the one allocation behind a pool: multi-page buffers round the total up to whole 2 MiB
// huge pages (at most 2 MiB extra), which AlignedBuffer backs with transparent huge pages: a read
// then lands in one physical segment instead of one per 4 KiB page, which doubled large-read
// bandwidth on the virtio disk (docs/benchmarks.md, "Reads").
uint64_t PoolBytes(uint32_t buffer_count, uint64_t each) {
  const uint64_t total = each * buffer_count;
  return each > 4096 ? AlignUp(total, uint64_t{2} << 20) : total;
}
}  // namespace

uint64_t BufferPool::ResidentBytes(uint32_t buffer_count, uint64_t buffer_bytes,
                                   uint64_t alignment_bytes) {
  const uint64_t each = AlignUp(buffer_bytes, alignment_bytes);
  return AlignedBuffer::ResidentBytes(PoolBytes(buffer_count, each), alignment_bytes) +
         uint64_t{buffer_count} * (sizeof(uint32_t) + sizeof(uint8_t));
}

Result<BufferPool> BufferPool::Create(uint32_t buffer_count, uint64_t buffer_bytes,
                                      uint64_t alignment_bytes) {
  if (buffer_count == 0) return InvalidArgumentError("buffer pool needs at least one buffer");
  if (buffer_bytes == 0) return InvalidArgumentError("buffer pool buffer size is 0");
  if (!IsPowerOfTwo(alignment_bytes)) {
    return InvalidArgumentError("buffer pool alignment " + std::to_string(alignment_bytes) +
                                " is not a power of two");
  }
  uint64_t each = AlignUp(buffer_bytes, alignment_bytes);
  if (each > (uint64_t{1} << 40) / buffer_count) {
    return InvalidArgumentError("buffer pool of " + std::to_string(buffer_count) + " x " +
                                std::to_string(each) + " bytes is too large");
  }
  BufferPool pool;
  ASSIGN_OR_RETURN(pool.memory_,
                   AlignedBuffer::Allocate(PoolBytes(buffer_count, each), alignment_bytes));
  pool.buffer_count_ = buffer_count;
  pool.buffer_bytes_ = each;
  pool.free_.reserve(buffer_count);
  for (uint32_t i = buffer_count; i-- > 0;) pool.free_.push_back(i);  // hands out 0 first
  pool.in_use_.assign(buffer_count, 0);
  return pool;
}

ByteSpan BufferPool::buffer(uint32_t index) const {
  CHECK_LT(index, buffer_count_);
  return memory_.span().subspan(index * buffer_bytes_, buffer_bytes_);
}

std::optional<uint32_t> BufferPool::Acquire() {
  if (free_.empty()) return std::nullopt;
  uint32_t i = free_.back();
  free_.pop_back();
  in_use_[i] = 1;
  return i;
}

void BufferPool::Release(uint32_t index) {
  CHECK_LT(index, buffer_count_);
  CHECK_EQ(in_use_[index], 1);
  in_use_[index] = 0;
  free_.push_back(index);
}

int32_t BufferPool::IndexOf(ByteSpan span) const {
  if (memory_.empty() || span.empty()) return -1;
  auto base = reinterpret_cast<uintptr_t>(memory_.data());
  auto p = reinterpret_cast<uintptr_t>(span.data());
  if (p < base || p - base >= memory_.size_bytes()) return -1;
  uint64_t index = (p - base) / buffer_bytes_;
  if (index >= buffer_count_) return -1;  // in the padding after the last buffer
  uint64_t end_in_buffer = (p - base) - index * buffer_bytes_ + span.size();
  if (end_in_buffer > buffer_bytes_) return -1;
  return static_cast<int32_t>(index);
}

}  // namespace flashlm::storage
