// ReadBackend: the batched asynchronous read interface every byte from flash goes through.
//
// A caller submits a batch of ReadRequests and later reaps ReadCompletions, each carrying its
// own Status and byte count (RocksDB's MultiRead / liburing's submit-reap shape). Contract:
//  - Short reads are finished inside the backend: a completion is either the full length, or
//    shorter only because the file ended (EOF is reported as bytes_read < length with an OK
//    status, never as an error code of its own kind), or an error.
//  - EAGAIN and EINTR are retried inside the backend; they never reach the caller.
//  - At most queue_depth_max() requests are in flight; Submit of more returns ResourceExhausted
//    and submits none of the batch.
//  - `dest` must stay valid and untouched until its completion is reaped. With O_DIRECT files,
//    offset, length and dest address must be multiples of the file's alignment_bytes().
//  - One backend instance belongs to one thread; it is not thread-safe.
// Implementations: io_uring (uring_backend.h), pread with a thread pool (pread_backend.h),
// in-memory (memory_backend.h), fault-injecting wrapper (fault_backend.h). MakeReadBackend()
// picks io_uring and falls back to pread, logging which it chose and why.
#ifndef FLASHLM_STORAGE_READ_BACKEND_H_
#define FLASHLM_STORAGE_READ_BACKEND_H_

#include <cstdint>
#include <memory>
#include <span>
#include <string_view>

#include "storage/bytes.h"
#include "storage/io_stats.h"
#include "storage/status.h"

namespace flashlm::storage {

class BufferPool;
class FaultInjector;
class File;

struct ReadRequest {
  uint32_t file_id = 0;       // from ReadBackend::RegisterFile
  uint64_t offset_bytes = 0;  // position in the file
  ByteSpan dest;              // where the bytes go; its size is the read length
  uint64_t tag = 0;           // opaque, returned in the completion
};

struct ReadCompletion {
  uint64_t tag = 0;
  Status status;            // OK, or why this request failed
  uint64_t bytes_read = 0;  // == dest.size() unless EOF came first or status is an error
};

class ReadBackend {
 public:
  virtual ~ReadBackend() = default;

  // "uring", "pread", "memory", "fault(<inner>)".
  virtual std::string_view name() const = 0;

  // Makes `file` readable through this backend and returns the id requests use. The File must
  // outlive the backend. Errors: ResourceExhausted when the backend's file table is full.
  virtual Result<uint32_t> RegisterFile(const File& file) = 0;

  // Queues every request of `batch` or none. Errors: ResourceExhausted (more than the free
  // queue slots), InvalidArgument (unknown file id, misaligned O_DIRECT request).
  virtual Status Submit(std::span<const ReadRequest> batch) = 0;

  // Waits until at least `min_completions` requests (capped at in_flight()) have completed,
  // then moves up to out.size() completions into `out`. Returns how many were written.
  virtual Result<size_t> Reap(size_t min_completions, std::span<ReadCompletion> out) = 0;

  virtual size_t in_flight() const = 0;
  virtual size_t queue_depth_max() const = 0;

  // Counters since construction or the last ResetStats(). The reference lives as long as the
  // backend.
  virtual const IoStats& stats() const = 0;
  virtual void ResetStats() = 0;
};

// Bounds fixed when a backend is built; nothing grows afterwards.
struct ReadBackendOptions {
  uint32_t queue_depth_max = 32;  // requests in flight (submitted and not yet reaped)
  uint32_t files_max = 64;        // RegisterFile capacity
  // uring: buffers registered with the kernel; reads landing inside one use READ_FIXED. The pool
  // must outlive the backend. Other backends ignore it.
  const BufferPool* registered_buffers = nullptr;
  // Test seam: faults injected at the system-call level (short reads, EAGAIN, EINTR, EIO,
  // delays) and bit flips in completed data. Must outlive the backend. nullptr = none.
  FaultInjector* faults = nullptr;
  // pread: worker threads; 0 = queue_depth_max (capped at 64). Others ignore it.
  uint32_t threads_max = 0;
};

enum class BackendKind { kAuto, kUring, kPread, kMemory };

// "auto", "uring", "pread", "memory" -> kind. Errors: InvalidArgument naming the choices.
Result<BackendKind> ParseBackendKind(std::string_view name);

// Builds a backend. kAuto tries io_uring and falls back to pread, logging (INFO) which it chose
// and (WARNING) why io_uring was refused. kUring fails with NotSupported when the kernel or the
// container refuses a ring. Errors: InvalidArgument (queue_depth_max or files_max is 0 or too
// large), NotSupported, ResourceExhausted.
Result<std::unique_ptr<ReadBackend>> MakeReadBackend(BackendKind kind,
                                                     const ReadBackendOptions& options);

}  // namespace flashlm::storage

#endif  // FLASHLM_STORAGE_READ_BACKEND_H_
