// ThreadPool: a fixed set of worker threads created once at start-up, used by the kernels to
// split a loop over the machine's cores. ParallelFor allocates nothing: the task is passed as a
// function pointer plus a context pointer, and between calls workers spin briefly on an atomic
// (calls come in quick succession during a forward pass) and then sleep on a condition variable. Not re-entrant: one ParallelFor at a time, called from one owner thread.
#ifndef FLASHLM_ENGINE_THREAD_POOL_H_
#define FLASHLM_ENGINE_THREAD_POOL_H_

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

namespace flashlm::engine {

class ThreadPool {
 public:
  // `n_threads` counts the calling thread: 1 means no workers (everything runs inline).
  // 0 picks std::thread::hardware_concurrency().
  explicit ThreadPool(uint32_t n_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  uint32_t size() const { return n_threads_; }

  // Calls fn(begin, end, thread_index) over disjoint chunks covering [0, n), one chunk per thread
  // (chunks are contiguous and rounded to multiples of `grain`). Returns when all chunks are done.
  template <typename Fn>
  void ParallelFor(uint64_t n, uint64_t grain, Fn&& fn) {
    using F = std::remove_reference_t<Fn>;
    Run(n, grain, [](void* ctx, uint64_t b, uint64_t e, uint32_t t) { (*static_cast<F*>(ctx))(b, e, t); },
        const_cast<void*>(static_cast<const void*>(&fn)));
  }

 private:
  using Trampoline = void (*)(void*, uint64_t, uint64_t, uint32_t);
  void Run(uint64_t n, uint64_t grain, Trampoline call, void* ctx);
  void WorkerLoop(uint32_t index);
  void RunChunk(uint32_t index);

  uint32_t n_threads_;
  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable start_cv_;
  std::condition_variable done_cv_;
  std::atomic<uint64_t> generation_{0};  // bumped under mu_; workers may spin on it
  bool stop_ = false;        // guarded by mu_
  std::atomic<uint32_t> pending_{0};
  // The current task (written before generation_ is bumped under mu_).
  Trampoline call_ = nullptr;
  void* ctx_ = nullptr;
  uint64_t n_ = 0;
  uint64_t grain_ = 1;
};

}  // namespace flashlm::engine

#endif  // FLASHLM_ENGINE_THREAD_POOL_H_
