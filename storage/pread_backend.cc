#include "storage/pread_backend.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "storage/fault_injector.h"

namespace flashlm::storage {

namespace internal {
Status ReadError(const FileEntry& f, uint64_t offset_bytes, uint64_t length_bytes, int err) {
  return IoError(f.path + ": read at offset " + std::to_string(offset_bytes) + " (" +
                 std::to_string(length_bytes) + " bytes): " + std::strerror(err));
}
}  // namespace internal

Result<std::unique_ptr<PreadBackend>> PreadBackend::Create(const ReadBackendOptions& options) {
  RETURN_IF_ERROR(internal::CheckOptions(options));
  return std::unique_ptr<PreadBackend>(new PreadBackend(options));
}

PreadBackend::PreadBackend(const ReadBackendOptions& options)
    : options_(options),
      slots_(options.queue_depth_max),
      pending_(options.queue_depth_max),
      done_(options.queue_depth_max) {
  free_slots_.reserve(slots_.size());
  for (uint32_t i = static_cast<uint32_t>(slots_.size()); i-- > 0;) free_slots_.push_back(i);
  files_.reserve(options.files_max);
  uint32_t threads = options.threads_max != 0 ? options.threads_max : options.queue_depth_max;
  threads = std::min<uint32_t>({threads, options.queue_depth_max, 64});
  workers_.reserve(threads);
  for (uint32_t i = 0; i < threads; ++i) workers_.emplace_back([this] { WorkerLoop(); });
}

PreadBackend::~PreadBackend() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  work_cv_.notify_all();
  for (auto& t : workers_) t.join();
}

Result<uint32_t> PreadBackend::RegisterFile(const File& file) {
  if (files_.size() >= options_.files_max) {
    return ResourceExhaustedError("pread backend file table is full (" +
                                  std::to_string(options_.files_max) + " files)");
  }
  files_.push_back(internal::EntryFor(file));
  return static_cast<uint32_t>(files_.size() - 1);
}

Status PreadBackend::Submit(std::span<const ReadRequest> batch) {
  if (batch.size() > slots_.size() - in_flight_) {
    return ResourceExhaustedError("submit of " + std::to_string(batch.size()) +
                                  " reads with only " + std::to_string(slots_.size() - in_flight_) +
                                  " free slots");
  }
  for (const ReadRequest& r : batch) RETURN_IF_ERROR(internal::CheckRequest(r, files_));
  uint64_t now = NowNs();
  stats_.RecordSubmit(now);
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const ReadRequest& r : batch) {
      uint32_t s = free_slots_.back();
      free_slots_.pop_back();
      slots_[s].request = r;
      slots_[s].submit_ns = now;
      slots_[s].bytes_read = 0;
      slots_[s].error = 0;
      slots_[s].retries = 0;
      pending_[(pending_head_ + pending_size_) % pending_.size()] = s;
      ++pending_size_;
    }
  }
  in_flight_ += batch.size();
  if (batch.size() == 1) {
    work_cv_.notify_one();
  } else if (!batch.empty()) {
    work_cv_.notify_all();
  }
  return Status::Ok();
}

void PreadBackend::WorkerLoop() {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    work_cv_.wait(lock, [this] { return stop_ || pending_size_ > 0; });
    if (pending_size_ == 0) return;  // stop_ and nothing left
    uint32_t s = pending_[pending_head_];
    pending_head_ = (pending_head_ + 1) % pending_.size();
    --pending_size_;
    lock.unlock();
    Execute(slots_[s]);
    lock.lock();
    done_[(done_head_ + done_size_) % done_.size()] = s;
    ++done_size_;
    done_cv_.notify_one();
  }
}

// One request, start to finish: continue after short reads, retry EINTR/EAGAIN, stop at EOF
// (0 bytes, or an O_DIRECT read that ends off the alignment grid) or on the first hard error.
void PreadBackend::Execute(Slot& slot) {
  const ReadRequest& r = slot.request;
  const internal::FileEntry& f = files_[r.file_id];
  uint64_t done = 0;
  while (done < r.dest.size()) {
    uint64_t want = r.dest.size() - done;
    ssize_t n =
        ::pread(f.fd, r.dest.data() + done, want, static_cast<off_t>(r.offset_bytes + done));
    int64_t res = n >= 0 ? n : -errno;
    if (options_.faults != nullptr) {
      res = options_.faults->FilterResult(want, f.granularity_bytes, res);
    }
    if (res == -EINTR || res == -EAGAIN) {
      ++slot.retries;
      continue;
    }
    if (res < 0) {
      slot.error = static_cast<int>(-res);
      break;
    }
    if (res == 0) break;
    done += static_cast<uint64_t>(res);
    if (f.granularity_bytes > 1 && done % f.granularity_bytes != 0) break;
    if (done < r.dest.size()) ++slot.retries;
  }
  slot.bytes_read = done;
  if (slot.error == 0 && options_.faults != nullptr) {
    options_.faults->MaybeFlipBit(r.dest.first(done));
  }
  slot.complete_ns = NowNs();
}

Result<size_t> PreadBackend::Reap(size_t min_completions, std::span<ReadCompletion> out) {
  size_t want = std::min({min_completions, in_flight_, out.size()});
  size_t written = 0;
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    while (done_size_ > 0 && written < out.size()) {
      uint32_t s = done_[done_head_];
      done_head_ = (done_head_ + 1) % done_.size();
      --done_size_;
      Slot& slot = slots_[s];
      ReadCompletion& c = out[written++];
      c.tag = slot.request.tag;
      c.bytes_read = slot.bytes_read;
      for (uint32_t i = 0; i < slot.retries; ++i) stats_.RecordRetry();
      if (slot.error == 0) {
        c.status = Status::Ok();
        stats_.RecordRead(slot.bytes_read, slot.complete_ns - slot.submit_ns, slot.complete_ns);
      } else {
        c.status = internal::ReadError(files_[slot.request.file_id],
                                       slot.request.offset_bytes + slot.bytes_read,
                                       slot.request.dest.size(), slot.error);
        c.bytes_read = 0;
        stats_.RecordError(slot.complete_ns);
      }
      free_slots_.push_back(s);
      --in_flight_;
    }
    if (written >= want) break;
    done_cv_.wait(lock, [this] { return done_size_ > 0; });
  }
  return written;
}

}  // namespace flashlm::storage
