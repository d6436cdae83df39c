// HugeBuffer: page-aligned bytes on transparent huge pages where the kernel gives them, as the
// engine keeps resident weights; the benchmarks' weights live in one.
#ifndef FLASHLM_BENCH_ENGINE_HUGE_BUFFER_H_
#define FLASHLM_BENCH_ENGINE_HUGE_BUFFER_H_

#include <sys/mman.h>

#include <cstddef>
#include <cstdint>

#include "storage/check.h"

namespace flashlm::engine {

struct HugeBuffer {
  explicit HugeBuffer(uint64_t n) : size(n) {
    void* p = mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(p != MAP_FAILED);
    madvise(p, n, MADV_HUGEPAGE);
    data = static_cast<std::byte*>(p);
  }
  ~HugeBuffer() { munmap(data, size); }
  HugeBuffer(const HugeBuffer&) = delete;
  HugeBuffer& operator=(const HugeBuffer&) = delete;
  std::byte* data;
  uint64_t size;
};

}  // namespace flashlm::engine

#endif  // FLASHLM_BENCH_ENGINE_HUGE_BUFFER_H_
