// Arena: the buffers of one component carved out of one allocation made at start-up.
//
// A component lists its buffers once, in a function both its byte count and its constructor call
// (ArenaLayout::Add returns each buffer's offset), so the bytes a budget plans for and the bytes
// allocated cannot drift apart. Arena::Create allocates the layout's total, zeroed and resident;
// views live as long as the arena. Not thread-safe to create; views may be shared as their owner
// says.
#ifndef FLASHLM_ENGINE_ARENA_H_
#define FLASHLM_ENGINE_ARENA_H_

#include <cstdint>
#include <span>

#include "storage/aligned_buffer.h"
#include "storage/bytes.h"
#include "storage/status.h"

namespace flashlm::engine {

struct ArenaLayout {
  uint64_t bytes = 0;
  // Reserves `size_bytes` at the next 64-byte boundary and returns its offset.
  uint64_t Add(uint64_t size_bytes) {
    const uint64_t at = AlignUp(bytes, 64);
    bytes = at + size_bytes;
    return at;
  }
  uint64_t AddFloats(uint64_t count) { return Add(count * sizeof(float)); }
  // DRAM the arena occupies (what budgets count).
  uint64_t resident_bytes() const {
    return bytes == 0 ? 0 : storage::AlignedBuffer::ResidentBytes(bytes, 64, /*huge_pages=*/false);
  }
};

class Arena {
 public:
  Arena() = default;
  // Errors: ResourceExhausted.
  static Result<Arena> Create(const ArenaLayout& layout) {
    Arena a;
    if (layout.bytes > 0) {
      ASSIGN_OR_RETURN(a.memory_, storage::AlignedBuffer::Allocate(layout.bytes, 64,
                                                                   /*huge_pages=*/false));
      // Resident now, so the first pass (a timed prefill) does not fault its pages in.
      RETURN_IF_ERROR(a.memory_.Populate());
    }
    return a;
  }
  ByteSpan Bytes(uint64_t offset, uint64_t size_bytes) const {
    return memory_.span().subspan(offset, size_bytes);
  }
  std::span<float> Floats(uint64_t offset, uint64_t count) const {
    return {reinterpret_cast<float*>(memory_.data() + offset), count};
  }
  uint64_t size_bytes() const { return memory_.size_bytes(); }

 private:
  storage::AlignedBuffer memory_;
};

}  // namespace flashlm::engine

#endif  // FLASHLM_ENGINE_ARENA_H_
