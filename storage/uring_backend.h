// UringBackend: ReadBackend over one io_uring owned by the calling thread.
//
// Set-up (Create) asks for IORING_SETUP_COOP_TASKRUN | SINGLE_ISSUER | DEFER_TASKRUN (as fio
// does) and drops DEFER_TASKRUN, then all flags, when the kernel refuses them (EINVAL),
// logging it (FLASHLM_URING_FLAG_LEVEL=1 or 2 starts lower, for benchmarking); a refused ring
// (EPERM in containers with seccomp, ENOSYS, io_uring_disabled) is NotSupported with the reason, so
// callers can fall back to pread. Files are registered as fixed files (IOSQE_FIXED_FILE) and the
// optional BufferPool as fixed buffers (IORING_OP_READ_FIXED when a request's dest lies inside one
// pool buffer, plain READ otherwise); either registration may fail (old kernel, memlock limit) and
// is then logged and skipped. Slots for queue_depth_max requests are preallocated; Submit and Reap
// do not allocate on success. One instance belongs to one thread (SINGLE_ISSUER makes the kernel
// enforce it).
#ifndef FLASHLM_STORAGE_URING_BACKEND_H_
#define FLASHLM_STORAGE_URING_BACKEND_H_

#include <liburing.h>

#include <memory>
#include <string>
#include <vector>

#include "storage/backend_internal.h"
#include "storage/read_backend.h"

namespace flashlm::storage {

class UringBackend final : public ReadBackend {
 public:
  // Errors: InvalidArgument (bad options), NotSupported (no ring: message says why).
  static Result<std::unique_ptr<UringBackend>> Create(const ReadBackendOptions& options);
  ~UringBackend() override;  // waits for reads still in the kernel, then closes the ring

  std::string_view name() const override { return "uring"; }
  Result<uint32_t> RegisterFile(const File& file) override;
  Status Submit(std::span<const ReadRequest> batch) override;
  Result<size_t> Reap(size_t min_completions, std::span<ReadCompletion> out) override;
  size_t in_flight() const override { return active_ + ready_.size(); }
  size_t queue_depth_max() const override { return slots_.size(); }
  const IoStats& stats() const override { return stats_; }
  void ResetStats() override { stats_.Reset(); }

  // What set-up obtained, for logs and tests.
  unsigned setup_flags() const { return setup_flags_; }
  bool fixed_files() const { return fixed_files_; }
  bool fixed_buffers() const { return fixed_buffers_; }

 private:
  struct Slot {
    ReadRequest request;
    uint64_t done_bytes = 0;  // bytes already read (short reads continue from here)
    uint64_t submit_ns = 0;
    int32_t buffer_index = -1;  // registered buffer holding dest, or -1
  };
  explicit UringBackend(const ReadBackendOptions& options);
  // Queues an SQE for the unread remainder of slot `s`. The SQ has room for every slot.
  void PrepareRead(uint32_t s);
  // Hands SQEs to the kernel, retrying EINTR/EAGAIN/EBUSY. Errors: IoError.
  Status SubmitPending();
  // Acts on one CQE: completes its slot into ready_ or requeues the remainder.
  void HandleCqe(uint32_t s, int32_t res, uint64_t now_ns);
  void Complete(uint32_t s, Status status, uint64_t now_ns);
  // Processes every CQE already posted (runs deferred task work first). Returns how many.
  unsigned DrainCq();

  ReadBackendOptions options_;
  io_uring ring_{};
  bool ring_ready_ = false;
  unsigned setup_flags_ = 0;
  bool fixed_files_ = false;
  bool fixed_buffers_ = false;
  std::vector<Slot> slots_;           // [queue_depth_max]
  std::vector<uint32_t> free_slots_;  // stack of free slot indices
  internal::CompletionRing ready_;    // finished, waiting for Reap
  std::vector<internal::FileEntry> files_;
  size_t active_ = 0;         // slots owned by the kernel (submitted or queued SQEs)
  unsigned unsubmitted_ = 0;  // SQEs prepared but not yet handed to the kernel
  IoStats stats_;
};

}  // namespace flashlm::storage

#endif  // FLASHLM_STORAGE_URING_BACKEND_H_
