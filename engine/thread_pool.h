// ThreadPool: a fixed set of worker threads created once at start-up, used by the kernels to
// split a loop over the machine's cores. ParallelFor allocates nothing: the task is passed as a
// function pointer plus a context pointer. The range is cut into one long chunk per thread (most
// of the range) and a few short ones; threads claim chunks from a shared counter, so a thread the
// OS has descheduled (the machines are shared) does not hold the others up for long: whoever is
// running takes the remaining chunks. Between calls workers spin (about a third of a
// millisecond), then sleep on a condition variable.
// Not re-entrant: one ParallelFor at a time, called from one owner thread.
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

  // Calls fn(begin, end, thread_index) over disjoint chunks covering [0, n) (chunk boundaries are
  // multiples of `grain`); thread_index < size() and no two concurrent calls share one.
  // Returns when all chunks are done.
  template <typename Fn>
  void ParallelFor(uint64_t n, uint64_t grain, Fn&& fn) {
    using F = std::remove_reference_t<Fn>;
    Run(
        n, grain,
        [](void* ctx, uint64_t b, uint64_t e, uint32_t t) { (*static_cast<F*>(ctx))(b, e, t); },
        const_cast<void*>(static_cast<const void*>(&fn)));
  }

 private:
  using Trampoline = void (*)(void*, uint64_t, uint64_t, uint32_t);
  void Run(uint64_t n, uint64_t grain, Trampoline call, void* ctx);
  void WorkerLoop(uint32_t index);
  // Claims and runs chunks of the task published as `generation` until none is left.
  void Work(uint32_t generation, uint32_t index);

  uint32_t n_threads_;
  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable start_cv_;
  std::condition_variable done_cv_;
  bool stop_ = false;  // guarded by mu_
  // Bits 63..32: generation of the current task; 31..16: its chunk count; 15..0: next chunk to
  // claim. A claim is a CAS on the whole word, so a late worker can never claim a chunk of a newer
  // task, and everything a claim decides on is in the word itself.
  std::atomic<uint64_t> claim_{0};
  std::atomic<uint32_t> done_chunks_{0};
  // The current task; written by the owner before it publishes claim_, read by a worker only
  // after a successful claim (the owner cannot move on while a claimed chunk is unfinished).
  Trampoline call_ = nullptr;
  void* ctx_ = nullptr;
  uint64_t n_ = 0;
  uint64_t chunk_ = 1;        // length of a tail chunk
  uint64_t lead_ = 0;         // length of a lead chunk (one per thread, first)
  uint32_t lead_chunks_ = 0;  // 0 (a range too short to lead with) or size()
};

}  // namespace flashlm::engine

#endif  // FLASHLM_ENGINE_THREAD_POOL_H_
