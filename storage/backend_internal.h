// Pieces shared by the ReadBackend implementations; not part of the public API.
// Not thread-safe; each belongs to one backend.
#ifndef FLASHLM_STORAGE_BACKEND_INTERNAL_H_
#define FLASHLM_STORAGE_BACKEND_INTERNAL_H_

#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "storage/check.h"
#include "storage/file.h"
#include "storage/read_backend.h"

namespace flashlm::storage::internal {

// A fixed-capacity FIFO of finished completions waiting to be reaped. Allocates only at
// construction; an OK Status holds no heap memory, so pushing successes never allocates.
class CompletionRing {
 public:
  explicit CompletionRing(size_t capacity) : items_(capacity) {}
  size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  void Push(ReadCompletion c) {
    CHECK_LT(size_, items_.size());
    items_[(head_ + size_) % items_.size()] = std::move(c);
    ++size_;
  }
  ReadCompletion Pop() {
    CHECK_GT(size_, 0u);
    ReadCompletion c = std::move(items_[head_]);
    head_ = (head_ + 1) % items_.size();
    --size_;
    return c;
  }

 private:
  std::vector<ReadCompletion> items_;  // [capacity] ring storage
  size_t head_ = 0;
  size_t size_ = 0;
};

// Validates options common to every backend. Errors: InvalidArgument.
inline Status CheckOptions(const ReadBackendOptions& o) {
  if (o.queue_depth_max == 0 || o.queue_depth_max > 4096) {
    return InvalidArgumentError("queue_depth_max must be in [1, 4096], got " +
                                std::to_string(o.queue_depth_max));
  }
  if (o.files_max == 0 || o.files_max > 65536) {
    return InvalidArgumentError("files_max must be in [1, 65536], got " +
                                std::to_string(o.files_max));
  }
  return Status::Ok();
}

// What a backend remembers about a registered file.
struct FileEntry {
  int fd = -1;
  uint64_t granularity_bytes = 1;  // required alignment: O_DIRECT alignment, or 1 when buffered
  std::string path;                // for error messages (built at registration)
};

// Checks one request against the registered files. Errors: InvalidArgument.
inline Status CheckRequest(const ReadRequest& r, std::span<const FileEntry> files) {
  if (r.file_id >= files.size()) {
    return InvalidArgumentError("read request names unknown file id " + std::to_string(r.file_id));
  }
  const FileEntry& f = files[r.file_id];
  uint64_t g = f.granularity_bytes;
  if (r.offset_bytes > UINT64_MAX - r.dest.size() || r.offset_bytes > (uint64_t{1} << 62)) {
    return InvalidArgumentError(f.path + ": read offset " + std::to_string(r.offset_bytes) +
                                " overflows");
  }
  if (g > 1 && (r.offset_bytes % g != 0 || r.dest.size() % g != 0 ||
                reinterpret_cast<uintptr_t>(r.dest.data()) % g != 0)) {
    return InvalidArgumentError(f.path + ": O_DIRECT read at offset " +
                                std::to_string(r.offset_bytes) + " of " +
                                std::to_string(r.dest.size()) +
                                " bytes (or its buffer) is not aligned to " + std::to_string(g));
  }
  return Status::Ok();
}

inline FileEntry EntryFor(const File& file) {
  return FileEntry{file.fd(), file.required_alignment_bytes(), file.path()};
}

// The message of a failed read: "<path>: read at <offset> (<n> bytes): <strerror>".
Status ReadError(const FileEntry& f, uint64_t offset_bytes, uint64_t length_bytes, int err);

}  // namespace flashlm::storage::internal

#endif  // FLASHLM_STORAGE_BACKEND_INTERNAL_H_
