#include "engine/thread_pool.h"

#include <algorithm>

namespace flashlm::engine {

ThreadPool::ThreadPool(uint32_t n_threads) {
  if (n_threads == 0) n_threads = std::max(1u, std::thread::hardware_concurrency());
  n_threads_ = n_threads;
  workers_.reserve(n_threads_ - 1);
  for (uint32_t i = 1; i < n_threads_; ++i) workers_.emplace_back([this, i] { WorkerLoop(i); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  start_cv_.notify_all();
  for (auto& w : workers_) w.join();
}

void ThreadPool::RunChunk(uint32_t index) {
  // Chunk boundaries in units of grain so that SIMD tails stay in one thread.
  const uint64_t units = (n_ + grain_ - 1) / grain_;
  const uint64_t per = units / n_threads_, extra = units % n_threads_;
  const uint64_t ub = index * per + std::min<uint64_t>(index, extra);
  const uint64_t ue = ub + per + (index < extra ? 1 : 0);
  const uint64_t b = std::min(n_, ub * grain_), e = std::min(n_, ue * grain_);
  if (b < e) call_(ctx_, b, e, index);
}

void ThreadPool::Run(uint64_t n, uint64_t grain, Trampoline call, void* ctx) {
  if (n == 0) return;
  grain = std::max<uint64_t>(grain, 1);
  if (n_threads_ == 1 || n <= grain) {
    call(ctx, 0, n, 0);
    return;
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    call_ = call;
    ctx_ = ctx;
    n_ = n;
    grain_ = grain;
    pending_.store(n_threads_ - 1, std::memory_order_relaxed);
    generation_.fetch_add(1, std::memory_order_release);
  }
  start_cv_.notify_all();
  RunChunk(0);
  // Workers finish quickly; spin briefly before sleeping.
  for (int spin = 0; spin < 20000; ++spin) {
    if (pending_.load(std::memory_order_acquire) == 0) return;
  }
  std::unique_lock<std::mutex> lock(mu_);
  done_cv_.wait(lock, [this] { return pending_.load(std::memory_order_acquire) == 0; });
}

void ThreadPool::WorkerLoop(uint32_t index) {
  uint64_t seen = 0;
  for (;;) {
    // Spin for a while (about 50 us) before sleeping: the next call usually follows at once.
    for (int spin = 0; spin < 20000; ++spin) {
      if (generation_.load(std::memory_order_acquire) != seen) break;
#if defined(__x86_64__)
      __builtin_ia32_pause();
#endif
    }
    {
      std::unique_lock<std::mutex> lock(mu_);
      start_cv_.wait(lock, [&] { return stop_ || generation_.load() != seen; });
      if (stop_) return;
      seen = generation_.load();
    }
    RunChunk(index);
    if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
      std::lock_guard<std::mutex> lock(mu_);
      done_cv_.notify_one();
    }
  }
}

}  // namespace flashlm::engine
