// PreadBackend: the reference ReadBackend. Each request is one pread(2) loop (short reads
// continued, EINTR/EAGAIN retried, EOF ends it) run by a fixed pool of worker threads, so that a
// queue depth above one keeps several reads in the device at once. Threads, slots and queues are
// all created at construction; Submit and Reap do not allocate on success.
// The backend object belongs to one thread (the ReadBackend contract); the workers are internal.
#ifndef FLASHLM_STORAGE_PREAD_BACKEND_H_
#define FLASHLM_STORAGE_PREAD_BACKEND_H_

#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "storage/backend_internal.h"
#include "storage/read_backend.h"

namespace flashlm::storage {

class PreadBackend final : public ReadBackend {
 public:
  // Errors: InvalidArgument (bad options).
  static Result<std::unique_ptr<PreadBackend>> Create(const ReadBackendOptions& options);
  ~PreadBackend() override;  // waits for reads in flight, joins the workers

  std::string_view name() const override { return "pread"; }
  Result<uint32_t> RegisterFile(const File& file) override;
  Status Submit(std::span<const ReadRequest> batch) override;
  Result<size_t> Reap(size_t min_completions, std::span<ReadCompletion> out) override;
  size_t in_flight() const override { return in_flight_; }
  size_t queue_depth_max() const override { return slots_.size(); }
  const IoStats& stats() const override { return stats_; }
  void ResetStats() override { stats_.Reset(); }
  size_t thread_count() const { return workers_.size(); }

 private:
  struct Slot {
    ReadRequest request;
    uint64_t submit_ns = 0;
    uint64_t complete_ns = 0;
    uint64_t bytes_read = 0;
    int error = 0;         // errno of a failed read, 0 when OK
    uint32_t retries = 0;  // resubmissions after short reads, EINTR, EAGAIN
  };
  explicit PreadBackend(const ReadBackendOptions& options);
  void WorkerLoop();
  void Execute(Slot& slot);  // runs on a worker

  ReadBackendOptions options_;
  std::vector<Slot> slots_;           // [queue_depth_max]
  std::vector<uint32_t> free_slots_;  // stack of free slot indices (owner thread only)
  std::vector<internal::FileEntry> files_;
  size_t in_flight_ = 0;  // owner thread only
  IoStats stats_;         // owner thread only

  // Shared with the workers, under mu_.
  std::mutex mu_;
  std::condition_variable work_cv_;
  std::condition_variable done_cv_;
  std::vector<uint32_t> pending_;  // [queue_depth_max] ring of slot indices to read
  size_t pending_head_ = 0, pending_size_ = 0;
  std::vector<uint32_t> done_;  // [queue_depth_max] ring of finished slot indices
  size_t done_head_ = 0, done_size_ = 0;
  bool stop_ = false;
  std::vector<std::thread> workers_;
};

}  // namespace flashlm::storage

#endif  // FLASHLM_STORAGE_PREAD_BACKEND_H_
