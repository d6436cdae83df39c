#include "storage/uring_backend.h"

#include <sys/uio.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "storage/buffer_pool.h"
#include "storage/fault_injector.h"
#include "storage/logging.h"

namespace flashlm::storage {

/*
 * The request life cycle, in four phases (one slot per request, user_data = slot index):
 *
 *  1. submit    Submit() validates the whole batch first (all or nothing), takes a free slot per
 *               request, prepares one SQE each (READ_FIXED into a registered buffer, else READ;
 *               fixed file when registered) and hands them to the kernel with one
 *               io_uring_submit.
 *  2. reap      Reap() drains every posted CQE without waiting; while fewer than min_completions
 *               are ready it waits in io_uring_submit_and_wait, which also flushes SQEs queued by
 *               phase 3 and, with DEFER_TASKRUN, runs the task work that posts completions.
 *  3. resubmit  A CQE that is -EAGAIN or -EINTR, or a short positive count that is not end of
 *               file, requeues the unread remainder from the same slot (offset and dest advanced
 *               by the bytes done). The slot never leaves the kernel's side, so the bound on
 *               requests in flight holds and the SQ (sized queue_depth_max) always has room.
 *  4. complete  Full length, EOF (0 bytes, or an O_DIRECT count off the alignment grid) or an
 *               error ends the request: its completion goes into the ready ring with its own
 *               Status and byte count, the slot is freed, and Reap copies ready completions out.
 */

Result<std::unique_ptr<UringBackend>> UringBackend::Create(const ReadBackendOptions& options) {
  RETURN_IF_ERROR(internal::CheckOptions(options));
  std::unique_ptr<UringBackend> b(new UringBackend(options));

  // COOP_TASKRUN (5.19) is what fio also asks for; DEFER_TASKRUN (6.1) needs SINGLE_ISSUER (6.0).
  unsigned wanted[] = {
      IORING_SETUP_COOP_TASKRUN | IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN,
      IORING_SETUP_COOP_TASKRUN | IORING_SETUP_SINGLE_ISSUER, 0};
  int ret = -EINVAL;
  size_t first = 0;
  // Diagnostic knob for benchmarking the set-up flags: 1 = skip DEFER_TASKRUN, 2 = no flags.
  if (const char* env = std::getenv("FLASHLM_URING_FLAG_LEVEL")) {
    first = std::min<size_t>(2, static_cast<size_t>(std::atoi(env)));
  }
  for (size_t w = first; w < 3; ++w) {
    unsigned flags = wanted[w];
    io_uring_params p{};
    p.flags = flags | IORING_SETUP_CQSIZE;
    p.cq_entries = 2 * options.queue_depth_max;
    ret = io_uring_queue_init_params(options.queue_depth_max, &b->ring_, &p);
    if (ret == 0) {
      b->setup_flags_ = flags;
      break;
    }
    if (ret != -EINVAL) break;
    LOG(INFO) << "io_uring set-up flags 0x" << std::hex << flags << std::dec
              << " refused (EINVAL); trying fewer";
  }
  if (ret != 0) {
    return NotSupportedError(
        std::string("io_uring_queue_init failed: ") + std::strerror(-ret) +
        (ret == -EPERM || ret == -ENOSYS ? " (the kernel or container forbids io_uring)" : ""));
  }
  b->ring_ready_ = true;

  ret = io_uring_register_files_sparse(&b->ring_, options.files_max);
  if (ret == 0) {
    b->fixed_files_ = true;
  } else {
    LOG(INFO) << "io_uring fixed files unavailable (" << std::strerror(-ret)
              << "); using plain descriptors";
  }

  if (options.registered_buffers != nullptr) {
    const BufferPool& pool = *options.registered_buffers;
    std::vector<iovec> iov(pool.buffer_count());
    for (uint32_t i = 0; i < pool.buffer_count(); ++i) {
      ByteSpan buf = pool.buffer(i);
      iov[i] = iovec{buf.data(), buf.size()};
    }
    ret = io_uring_register_buffers(&b->ring_, iov.data(), static_cast<unsigned>(iov.size()));
    if (ret == 0) {
      b->fixed_buffers_ = true;
    } else {
      LOG(WARNING) << "io_uring buffer registration of " << pool.buffer_count() << " x "
                   << pool.buffer_bytes() << " bytes failed (" << std::strerror(-ret)
                   << "; memlock limit?); reads use plain READ";
    }
  }
  LOG(INFO) << "io_uring ready: depth " << options.queue_depth_max << ", flags 0x" << std::hex
            << b->setup_flags_ << std::dec << ", fixed files " << b->fixed_files_
            << ", fixed buffers " << b->fixed_buffers_;
  return b;
}

UringBackend::UringBackend(const ReadBackendOptions& options)
    : options_(options), slots_(options.queue_depth_max), ready_(options.queue_depth_max) {
  free_slots_.reserve(slots_.size());
  for (uint32_t i = static_cast<uint32_t>(slots_.size()); i-- > 0;) free_slots_.push_back(i);
  files_.reserve(options.files_max);
}

UringBackend::~UringBackend() {
  if (!ring_ready_) return;
  // Buffers in flight belong to the caller; wait until the kernel is done with them.
  while (active_ > 0) {
    if (unsubmitted_ > 0 && !SubmitPending().ok()) break;
    io_uring_cqe* cqe = nullptr;
    if (io_uring_wait_cqe(&ring_, &cqe) != 0) break;
    DrainCq();
    while (!ready_.empty()) ready_.Pop();
  }
  io_uring_queue_exit(&ring_);
}

Result<uint32_t> UringBackend::RegisterFile(const File& file) {
  if (files_.size() >= options_.files_max) {
    return ResourceExhaustedError("uring backend file table is full (" +
                                  std::to_string(options_.files_max) + " files)");
  }
  uint32_t id = static_cast<uint32_t>(files_.size());
  if (fixed_files_) {
    int fd = file.fd();
    int ret = io_uring_register_files_update(&ring_, id, &fd, 1);
    if (ret != 1) {
      return IoError(file.path() +
                     ": io_uring file registration failed: " + std::strerror(ret < 0 ? -ret : EIO));
    }
  }
  files_.push_back(internal::EntryFor(file));
  return id;
}

void UringBackend::PrepareRead(uint32_t s) {
  Slot& slot = slots_[s];
  io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
  CHECK(sqe != nullptr);  // the SQ has queue_depth_max entries and each slot has at most one
  const ReadRequest& r = slot.request;
  std::byte* dest = r.dest.data() + slot.done_bytes;
  auto len = static_cast<unsigned>(r.dest.size() - slot.done_bytes);
  uint64_t off = r.offset_bytes + slot.done_bytes;
  int fd = fixed_files_ ? static_cast<int>(r.file_id) : files_[r.file_id].fd;
  if (slot.buffer_index >= 0) {
    io_uring_prep_read_fixed(sqe, fd, dest, len, off, slot.buffer_index);
  } else {
    io_uring_prep_read(sqe, fd, dest, len, off);
  }
  if (fixed_files_) sqe->flags |= IOSQE_FIXED_FILE;
  io_uring_sqe_set_data64(sqe, s);
  ++unsubmitted_;
}

Status UringBackend::SubmitPending() {
  while (unsubmitted_ > 0) {
    int ret = io_uring_submit(&ring_);
    if (ret >= 0) {
      unsubmitted_ -= std::min<unsigned>(unsubmitted_, static_cast<unsigned>(ret));
      continue;
    }
    if (ret == -EINTR || ret == -EAGAIN || ret == -EBUSY) {
      // EAGAIN/EBUSY: the kernel is short of resources or the CQ is full; reaping frees both.
      if (ret != -EINTR) DrainCq();
      continue;
    }
    return IoError(std::string("io_uring_submit: ") + std::strerror(-ret));
  }
  return Status::Ok();
}

Status UringBackend::Submit(std::span<const ReadRequest> batch) {
  size_t free = slots_.size() - in_flight();
  if (batch.size() > free) {
    return ResourceExhaustedError("submit of " + std::to_string(batch.size()) +
                                  " reads with only " + std::to_string(free) + " free slots");
  }
  for (const ReadRequest& r : batch) {
    RETURN_IF_ERROR(internal::CheckRequest(r, files_));
    if (r.dest.size() > (1u << 31)) {
      return InvalidArgumentError("io_uring read of " + std::to_string(r.dest.size()) +
                                  " bytes exceeds 2 GiB; split it (see ReadPlanner)");
    }
  }
  uint64_t now = NowNs();
  stats_.RecordSubmit(now);
  for (const ReadRequest& r : batch) {
    uint32_t s = free_slots_.back();
    free_slots_.pop_back();
    Slot& slot = slots_[s];
    slot.request = r;
    slot.done_bytes = 0;
    slot.submit_ns = now;
    slot.buffer_index = fixed_buffers_ ? options_.registered_buffers->IndexOf(r.dest) : -1;
    ++active_;
    if (r.dest.empty()) {
      Complete(s, Status::Ok(), now);
      continue;
    }
    PrepareRead(s);
  }
  return SubmitPending();
}

void UringBackend::Complete(uint32_t s, Status status, uint64_t now_ns) {
  Slot& slot = slots_[s];
  ReadCompletion c;
  c.tag = slot.request.tag;
  if (status.ok()) {
    c.bytes_read = slot.done_bytes;
    if (options_.faults != nullptr) {
      options_.faults->MaybeFlipBit(slot.request.dest.first(slot.done_bytes));
    }
    stats_.RecordRead(slot.done_bytes, now_ns - slot.submit_ns, now_ns);
  } else {
    stats_.RecordError(now_ns);
  }
  c.status = std::move(status);
  --active_;
  free_slots_.push_back(s);
  ready_.Push(std::move(c));
}

void UringBackend::HandleCqe(uint32_t s, int32_t res32, uint64_t now_ns) {
  Slot& slot = slots_[s];
  const internal::FileEntry& f = files_[slot.request.file_id];
  uint64_t remaining = slot.request.dest.size() - slot.done_bytes;
  int64_t res = res32;
  if (options_.faults != nullptr)
    res = options_.faults->FilterResult(remaining, f.granularity_bytes, res);
  if (res == -EAGAIN || res == -EINTR) {
    stats_.RecordRetry();
    PrepareRead(s);
    return;
  }
  if (res < 0) {
    Complete(s,
             internal::ReadError(f, slot.request.offset_bytes + slot.done_bytes,
                                 slot.request.dest.size(), static_cast<int>(-res)),
             now_ns);
    return;
  }
  slot.done_bytes += static_cast<uint64_t>(std::min<int64_t>(res, static_cast<int64_t>(remaining)));
  bool eof = res == 0 || (f.granularity_bytes > 1 && slot.done_bytes % f.granularity_bytes != 0);
  if (slot.done_bytes == slot.request.dest.size() || eof) {
    Complete(s, Status::Ok(), now_ns);
    return;
  }
  stats_.RecordRetry();
  PrepareRead(s);
}

unsigned UringBackend::DrainCq() {
  unsigned head;
  unsigned seen = 0;
  io_uring_cqe* cqe;
  uint64_t now = NowNs();
  io_uring_for_each_cqe(&ring_, head, cqe) {
    HandleCqe(static_cast<uint32_t>(io_uring_cqe_get_data64(cqe)), cqe->res, now);
    ++seen;
  }
  io_uring_cq_advance(&ring_, seen);
  return seen;
}

Result<size_t> UringBackend::Reap(size_t min_completions, std::span<ReadCompletion> out) {
  size_t want = std::min({min_completions, in_flight(), out.size()});
  size_t written = 0;
  bool asked_kernel = false;
  for (;;) {
    while (!ready_.empty() && written < out.size()) out[written++] = ready_.Pop();
    if (written >= out.size() || active_ == 0) break;
    if (DrainCq() > 0) {
      // Requeued remainders go out before anything waits on them.
      if (unsubmitted_ > 0) RETURN_IF_ERROR(SubmitPending());
      continue;
    }
    if (written >= want) {
      // A caller that got nothing yet deserves one look at completions the kernel has not
      // posted: with DEFER_TASKRUN they appear only when this thread enters the kernel.
      if (written == 0 && !asked_kernel && (setup_flags_ & IORING_SETUP_DEFER_TASKRUN)) {
        asked_kernel = true;
        io_uring_get_events(&ring_);
        continue;
      }
      break;
    }
    // Nothing posted yet: submit what is queued and sleep until a completion arrives.
    int ret = io_uring_submit_and_wait(&ring_, 1);
    if (ret >= 0) {
      unsubmitted_ -= std::min<unsigned>(unsubmitted_, static_cast<unsigned>(ret));
    } else if (ret != -EINTR && ret != -EAGAIN && ret != -EBUSY && ret != -ETIME) {
      return IoError(std::string("io_uring_submit_and_wait: ") + std::strerror(-ret));
    }
  }
  return written;
}

}  // namespace flashlm::storage
