#include "engine/thread_pool.h"

#include <algorithm>

#include "storage/bytes.h"

namespace flashlm::engine {
namespace {
inline void CpuRelax() {
#if defined(__x86_64__)
  __builtin_ia32_pause();
#endif
}
// 20000 pause instructions: 0.36 ms on the AMD EPYC (Zen 4) machines this was measured on (a
// pause is ~18 ns there; longer on Intel cores since Skylake). Shorter spins cost more wake-ups:
// out of core at 25% of the 1b ReLU synth, predictor sparsity, 2 threads, 3 runs each, 2000
// iterations decoded at 26.8-28.2 tok/s and 0 at 26.2-27.2 against 28.2-29.4 with 20000.
constexpr int kSpinIterations = 20000;
constexpr uint64_t kLeadPercent = 85;
constexpr uint64_t kTailChunksPerThread = 2;
}  // namespace

ThreadPool::ThreadPool(uint32_t n_threads) {
  if (n_threads == 0) n_threads = std::max(1u, std::thread::hardware_concurrency());
  n_threads = std::min(n_threads, 1024u);  // chunk counts must fit 16 bits
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

void ThreadPool::Work(uint32_t generation, uint32_t index) {
  uint64_t cur = claim_.load(std::memory_order_acquire);
  for (;;) {
    if (static_cast<uint32_t>(cur >> 32) != generation) return;
    const uint32_t chunk = static_cast<uint32_t>(cur & 0xFFFF);
    const uint32_t n_chunks = static_cast<uint32_t>((cur >> 16) & 0xFFFF);
    if (chunk >= n_chunks) return;
    if (!claim_.compare_exchange_weak(cur, cur + 1, std::memory_order_acq_rel,
                                      std::memory_order_acquire)) {
      continue;
    }
    uint64_t b, e;
    if (chunk < lead_chunks_) {
      b = chunk * lead_;
      e = std::min(n_, b + lead_);
    } else {
      b = lead_chunks_ * lead_ + (chunk - lead_chunks_) * chunk_;
      e = std::min(n_, b + chunk_);
    }
    call_(ctx_, b, e, index);
    done_chunks_.fetch_add(1, std::memory_order_release);
    cur = claim_.load(std::memory_order_acquire);
  }
}

void ThreadPool::Run(uint64_t n, uint64_t grain, Trampoline call, void* ctx) {
  if (n == 0) return;
  grain = std::max<uint64_t>(grain, 1);
  const uint64_t units = CeilDiv(n, grain);
  if (n_threads_ == 1 || units == 1) {
    call(ctx, 0, n, 0);
    return;
  }
  // Each thread's first chunk is one contiguous run of kLeadPercent / threads of the range; the
  // rest goes in kTailChunksPerThread smaller chunks a thread, claimed by whoever is free, to
  // rebalance around a thread that started late or stalled. Long runs keep each thread's stream
  // (and the kernels' prefetch ahead of it) going: the 1b q4_0 model decoded at 2 threads
  // 49.1-50.3 tok/s with four equal chunks a thread and 50.5-51.3 this way (5 interleaved runs;
  // docs/benchmarks.md, "Thread pool: a long first chunk a thread").
  const uint64_t lead_units = units * kLeadPercent / 100 / n_threads_;
  const uint32_t lead_chunks = lead_units == 0 ? 0 : n_threads_;
  const uint64_t lead = lead_units * grain;
  // tail > 0: lead_units * n_threads_ <= 85% of units; rest > 0 as n > (units - 1) * grain.
  const uint64_t tail = units - lead_units * lead_chunks, rest = n - lead * lead_chunks;
  const uint64_t chunk =
      CeilDiv(tail, std::min<uint64_t>(tail, uint64_t{n_threads_} * kTailChunksPerThread)) * grain;
  uint32_t generation;
  // <= 3 * threads: fits the claim word's 16 bits.
  const uint32_t n_chunks = lead_chunks + static_cast<uint32_t>(CeilDiv(rest, chunk));
  {
    std::lock_guard<std::mutex> lock(mu_);
    call_ = call;
    ctx_ = ctx;
    n_ = n;
    chunk_ = chunk;
    lead_ = lead;
    lead_chunks_ = lead_chunks;
    done_chunks_.store(0, std::memory_order_relaxed);
    generation = static_cast<uint32_t>(claim_.load(std::memory_order_relaxed) >> 32) + 1;
    claim_.store(uint64_t{generation} << 32 | uint64_t{n_chunks} << 16, std::memory_order_release);
  }
  start_cv_.notify_all();
  Work(generation, 0);
  for (int spin = 0; done_chunks_.load(std::memory_order_acquire) != n_chunks; ++spin) {
    if (spin > kSpinIterations)
      std::this_thread::yield();
    else
      CpuRelax();
  }
}

void ThreadPool::WorkerLoop(uint32_t index) {
  uint32_t seen = 0;
  for (;;) {
    uint32_t generation = static_cast<uint32_t>(claim_.load(std::memory_order_acquire) >> 32);
    for (int spin = 0; generation == seen && spin < kSpinIterations; ++spin) {
      CpuRelax();
      generation = static_cast<uint32_t>(claim_.load(std::memory_order_acquire) >> 32);
    }
    if (generation == seen) {
      std::unique_lock<std::mutex> lock(mu_);
      start_cv_.wait(lock, [&] {
        return stop_ || static_cast<uint32_t>(claim_.load(std::memory_order_acquire) >> 32) != seen;
      });
      if (stop_) return;
      generation = static_cast<uint32_t>(claim_.load(std::memory_order_acquire) >> 32);
    }
    seen = generation;
    Work(generation, index);
  }
}

}  // namespace flashlm::engine
