#include "storage/memory_backend.h"

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "storage/fault_injector.h"
#include "storage/file.h"

namespace flashlm::storage {

Result<std::unique_ptr<MemoryBackend>> MemoryBackend::Create(const ReadBackendOptions& options) {
  RETURN_IF_ERROR(internal::CheckOptions(options));
  return std::unique_ptr<MemoryBackend>(new MemoryBackend(options));
}

Result<uint32_t> MemoryBackend::RegisterFile(const File& file) {
  if (file.size_bytes() > (uint64_t{1} << 30)) {
    return ResourceExhaustedError(file.path() + ": too large for the memory backend");
  }
  // Read through an aligned bounce buffer so that O_DIRECT files work too.
  uint64_t align = std::max<uint64_t>(file.required_alignment_bytes(), 1);
  uint64_t padded = AlignUp(std::max<uint64_t>(file.size_bytes(), 1), align);
  auto* raw = static_cast<std::byte*>(
      std::aligned_alloc(std::max<uint64_t>(align, 16), AlignUp(padded, 16)));
  if (raw == nullptr) return ResourceExhaustedError("out of memory");
  std::unique_ptr<std::byte, decltype(&std::free)> buf(raw, &std::free);
  Result<uint64_t> n = file.ReadAt(0, ByteSpan(raw, padded));
  if (!n.ok()) return n.status();
  std::vector<std::byte> bytes(raw, raw + std::min<uint64_t>(*n, file.size_bytes()));
  ASSIGN_OR_RETURN(uint32_t id, AddFile(std::move(bytes), file.required_alignment_bytes()));
  files_[id].path = file.path();
  return id;
}

Result<uint32_t> MemoryBackend::AddFile(std::vector<std::byte> contents, uint64_t alignment_bytes) {
  if (files_.size() >= options_.files_max) {
    return ResourceExhaustedError("memory backend file table is full (" +
                                  std::to_string(options_.files_max) + " files)");
  }
  if (!IsPowerOfTwo(alignment_bytes)) {
    return InvalidArgumentError("alignment " + std::to_string(alignment_bytes) +
                                " is not a power of two");
  }
  uint32_t id = static_cast<uint32_t>(files_.size());
  files_.push_back(internal::FileEntry{-1, alignment_bytes, "memory file " + std::to_string(id)});
  contents_.push_back(std::move(contents));
  return id;
}

// The same loop as a pread: copy what the "syscall" returns, continue after short counts, retry
// EAGAIN/EINTR, stop at EOF or an error.
ReadCompletion MemoryBackend::Execute(const ReadRequest& r) {
  const std::vector<std::byte>& file = contents_[r.file_id];
  const internal::FileEntry& f = files_[r.file_id];
  uint64_t start = NowNs();
  uint64_t done = 0;
  int error = 0;
  while (done < r.dest.size()) {
    uint64_t pos = r.offset_bytes + done;
    uint64_t avail = pos < file.size() ? file.size() - pos : 0;
    uint64_t want = r.dest.size() - done;
    int64_t res = static_cast<int64_t>(std::min(avail, want));
    if (options_.faults != nullptr)
      res = options_.faults->FilterResult(want, f.granularity_bytes, res);
    if (res == -EAGAIN || res == -EINTR) {
      stats_.RecordRetry();
      continue;
    }
    if (res < 0) {
      error = static_cast<int>(-res);
      break;
    }
    if (res == 0) break;
    std::memcpy(r.dest.data() + done, file.data() + pos, static_cast<size_t>(res));
    done += static_cast<uint64_t>(res);
    if (done < r.dest.size() && pos + res < file.size()) stats_.RecordRetry();
  }
  ReadCompletion c;
  c.tag = r.tag;
  uint64_t now = NowNs();
  if (error != 0) {
    c.status = internal::ReadError(f, r.offset_bytes + done, r.dest.size(), error);
    stats_.RecordError(now);
    return c;
  }
  if (options_.faults != nullptr) options_.faults->MaybeFlipBit(r.dest.first(done));
  c.bytes_read = done;
  stats_.RecordRead(done, now - start, now);
  return c;
}

Status MemoryBackend::Submit(std::span<const ReadRequest> batch) {
  size_t free = options_.queue_depth_max - ready_.size();
  if (batch.size() > free) {
    return ResourceExhaustedError("submit of " + std::to_string(batch.size()) +
                                  " reads with only " + std::to_string(free) + " free slots");
  }
  for (const ReadRequest& r : batch) RETURN_IF_ERROR(internal::CheckRequest(r, files_));
  stats_.RecordSubmit(NowNs());
  for (const ReadRequest& r : batch) ready_.Push(Execute(r));
  return Status::Ok();
}

Result<size_t> MemoryBackend::Reap(size_t min_completions, std::span<ReadCompletion> out) {
  size_t written = 0;
  while (!ready_.empty() && written < out.size()) out[written++] = ready_.Pop();
  return written;
}

}  // namespace flashlm::storage
