// File: an open file descriptor plus what readers need to know about it: its size, whether it
// was opened with O_DIRECT, and the alignment O_DIRECT requires.
//
// Files are opened with O_DIRECT by default. Where the filesystem refuses O_DIRECT (open fails
// with EINVAL, e.g. tmpfs on older kernels, some FUSE and overlay mounts) the file is reopened
// buffered and the fallback is logged once per process at WARNING (later ones at INFO). Callers
// check is_direct() when it matters (benchmarks do).
//
// Alignment: alignment_bytes() is the direct-I/O alignment of the file's filesystem/device
// (statx STATX_DIOALIGN: the larger of the offset and memory alignments; BLKSSZGET for block
// devices; 4096 when neither is known). With is_direct(), every read's offset, length and buffer
// address must be multiples of it; required_alignment_bytes() is 1 for a buffered file.
//
// A File is move-only and owns its descriptor (closed in the destructor). It is immutable after
// opening (except size after writes through a writable File) and can be shared read-only by
// threads. Backends refer to it by pointer: a File must outlive every backend it is registered
// with.
#ifndef FLASHLM_STORAGE_FILE_H_
#define FLASHLM_STORAGE_FILE_H_

#include <cstdint>
#include <functional>
#include <string>

#include "storage/bytes.h"
#include "storage/status.h"

namespace flashlm::storage {

struct FileOptions {
  bool direct = true;  // try O_DIRECT (falls back to buffered on EINVAL)
  // Test seam: pretend the O_DIRECT open failed with this errno (0 = off). Lets tests exercise
  // the EINVAL fallback on filesystems that accept O_DIRECT.
  int simulate_direct_open_errno = 0;
};

class File {
 public:
  // Opens `path` read-only. The open never blocks: it is made with O_NONBLOCK (cleared once the
  // file is known to be regular), so a FIFO in place of a data file is refused, not waited on.
  // Errors: NotFound (no such file), InvalidArgument (not a regular file or block device),
  // IoError (permission, other open/stat failures; the message names the path).
  static Result<File> OpenForRead(const std::string& path, const FileOptions& options = {});
  // Creates or truncates `path` for writing (and reading). Same O_DIRECT policy.
  static Result<File> Create(const std::string& path, const FileOptions& options = {});

  File(File&& other) noexcept;
  File& operator=(File&& other) noexcept;
  File(const File&) = delete;
  File& operator=(const File&) = delete;
  ~File();

  int fd() const { return fd_; }
  const std::string& path() const { return path_; }
  uint64_t size_bytes() const { return size_bytes_; }
  bool is_direct() const { return direct_; }
  bool writable() const { return writable_; }
  uint64_t alignment_bytes() const { return alignment_bytes_; }
  uint64_t required_alignment_bytes() const { return direct_ ? alignment_bytes_ : 1; }

  // Reads exactly data.size() bytes at offset_bytes, retrying short reads, EINTR and EAGAIN.
  // Returns the number of bytes read, which is smaller only at end of file. Synchronous; for
  // the hot path use a ReadBackend. Errors: IoError, InvalidArgument (misaligned for O_DIRECT).
  Result<uint64_t> ReadAt(uint64_t offset_bytes, ByteSpan data) const;
  // Writes all of data at offset_bytes (writable files only), retrying short writes and EINTR.
  // Errors: FailedPrecondition (read-only file), InvalidArgument (misaligned for O_DIRECT),
  // IoError.
  Status WriteAt(uint64_t offset_bytes, ConstByteSpan data);
  // fdatasync. Errors: IoError.
  Status Sync();
  // Shrinks or extends the file (writable only). Errors: FailedPrecondition, IoError.
  Status Truncate(uint64_t size_bytes);

 private:
  File() = default;
  static Result<File> Open(const std::string& path, int flags, const FileOptions& options);
  Status CheckAligned(uint64_t offset_bytes, ConstByteSpan data) const;

  int fd_ = -1;
  std::string path_;
  uint64_t size_bytes_ = 0;
  uint64_t alignment_bytes_ = 4096;
  bool direct_ = false;
  bool writable_ = false;
};

// The direct-I/O alignment of a file created in directory `dir` (what File::alignment_bytes()
// would say of it), at least 512: probed with an unnamed O_TMPFILE opened with O_DIRECT, so
// nothing is left behind. 4096 when the filesystem does not say (no O_TMPFILE, no O_DIRECT, no
// STATX_DIOALIGN, e.g. tmpfs, or `dir` cannot be opened); `reported` (if given) says which.
uint64_t DirectIoAlignmentIn(const std::string& dir, bool* reported = nullptr);

// Opens `path` read-only and returns the descriptor (the caller closes it) only when it is a
// regular file. Never blocks: the open uses O_NONBLOCK, cleared before returning, so a FIFO or
// device in place of an input file is refused instead of hanging or reading without end.
// Errors: NotFound (no such file), InvalidArgument (not a regular file, naming it), IoError.
Result<int> OpenRegularFile(const std::string& path);

// Reads `fd` (named `path` in messages) to its end in pieces of at most buffer.size() bytes,
// passing each to `piece` in order; `fd` stays open. Errors: InvalidArgument when more than
// `max_bytes` arrive (the message states the limit; reading stops there), IoError.
Status ReadFileInPieces(int fd, const std::string& path, uint64_t max_bytes, ByteSpan buffer,
                        const std::function<void(ConstByteSpan)>& piece);

// The whole content of the file at `path`, at most `max_bytes` of it. Any readable file (a pipe
// too; a folder is refused); reading stops at max_bytes + 1, so an endless source (/dev/zero) is
// refused, not read without bound. Errors: NotFound, InvalidArgument (larger than max_bytes, a
// folder: the message states the limit), IoError.
Result<std::string> ReadFileBounded(const std::string& path, uint64_t max_bytes);

// Writes `bytes` to `path` completely or not at all: a temporary file beside it (a short name,
// so that any legal `path` works), written, fsync'd, renamed over `path`, and the folder
// fsync'd. On any failure the temporary is removed and `path` is left as it was.
// Errors: IoError naming the path and the cause (ENOSPC, EACCES, no such folder, ...).
Status WriteFileAtomically(const std::string& path, ConstByteSpan bytes);

}  // namespace flashlm::storage

#endif  // FLASHLM_STORAGE_FILE_H_
