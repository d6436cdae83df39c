#include "storage/file.h"

#include <fcntl.h>
#include <linux/fs.h>
#include <linux/stat.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <filesystem>
#include <string>
#include <utility>

#include "storage/logging.h"

namespace flashlm::storage {
namespace {

std::atomic<bool> g_fallback_logged{false};

// The direct-I/O alignment of an open file, 0 when the kernel does not say.
uint64_t ReportedAlignment(int fd, bool is_block_device) {
  if (is_block_device) {
    int logical = 0;
    if (ioctl(fd, BLKSSZGET, &logical) == 0 && logical > 0) return static_cast<uint64_t>(logical);
    return 0;
  }
#ifdef STATX_DIOALIGN
  struct statx sx {};
  if (syscall(SYS_statx, fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &sx) == 0 &&
      (sx.stx_mask & STATX_DIOALIGN) && sx.stx_dio_offset_align != 0) {
    uint64_t a = sx.stx_dio_offset_align;
    if (sx.stx_dio_mem_align > a) a = sx.stx_dio_mem_align;
    if (IsPowerOfTwo(a)) return a;
  }
#endif
  return 0;
}

// The direct-I/O alignment of an open file, 4096 when the kernel does not say.
uint64_t QueryAlignment(int fd, bool is_block_device) {
  const uint64_t a = ReportedAlignment(fd, is_block_device);
  return a == 0 ? 4096 : a;
}

}  // namespace

uint64_t DirectIoAlignmentIn(const std::string& dir, bool* reported) {
  if (reported != nullptr) *reported = false;
  const int fd = ::open(dir.c_str(), O_TMPFILE | O_RDWR | O_DIRECT | O_CLOEXEC, 0600);
  if (fd < 0) return 4096;
  const uint64_t a = ReportedAlignment(fd, /*is_block_device=*/false);
  ::close(fd);
  if (a == 0) return 4096;
  if (reported != nullptr) *reported = true;
  return a < 512 ? 512 : a;
}

Result<File> File::OpenForRead(const std::string& path, const FileOptions& options) {
  return Open(path, O_RDONLY, options);
}

Result<File> File::Create(const std::string& path, const FileOptions& options) {
  return Open(path, O_RDWR | O_CREAT | O_TRUNC, options);
}

Result<File> File::Open(const std::string& path, int flags, const FileOptions& options) {
  flags |= O_CLOEXEC | O_NONBLOCK;  // a FIFO must not block the open; cleared below
  int fd = -1;
  bool direct = false;
  if (options.direct) {
    if (options.simulate_direct_open_errno != 0) {
      errno = options.simulate_direct_open_errno;
    } else {
      fd = ::open(path.c_str(), flags | O_DIRECT, 0644);
    }
    if (fd >= 0) {
      direct = true;
    } else if (errno == EINVAL) {
      // The filesystem refuses O_DIRECT: reads still work through the page cache.
      bool first = !g_fallback_logged.exchange(true);
      if (first) {
        LOG(WARNING) << path << ": O_DIRECT refused (EINVAL); using buffered I/O (page cache) "
                     << "for this and any later file that refuses it";
      } else {
        LOG(INFO) << path << ": O_DIRECT refused (EINVAL); using buffered I/O";
      }
    } else {
      int e = errno;
      if (e == ENOENT) return NotFoundError(path + ": no such file");
      return ErrnoError("open " + path, e);
    }
  }
  if (fd < 0) {
    fd = ::open(path.c_str(), flags, 0644);
    if (fd < 0) {
      int e = errno;
      if (e == ENOENT) return NotFoundError(path + ": no such file");
      return ErrnoError("open " + path, e);
    }
  }
  File f;
  f.fd_ = fd;
  f.path_ = path;
  f.direct_ = direct;
  f.writable_ = (flags & O_ACCMODE) != O_RDONLY;
  struct stat st {};
  if (fstat(fd, &st) != 0) return ErrnoError("stat " + path, errno);
  bool is_block = S_ISBLK(st.st_mode);
  if (!S_ISREG(st.st_mode) && !is_block) {
    return InvalidArgumentError(path + ": not a regular file or block device");
  }
  if (::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) & ~O_NONBLOCK) != 0) {
    return ErrnoError("fcntl " + path, errno);
  }
  if (is_block) {
    uint64_t bytes = 0;
    if (ioctl(fd, BLKGETSIZE64, &bytes) != 0) return ErrnoError("BLKGETSIZE64 " + path, errno);
    f.size_bytes_ = bytes;
  } else {
    f.size_bytes_ = static_cast<uint64_t>(st.st_size);
  }
  f.alignment_bytes_ = QueryAlignment(fd, is_block);
  return f;
}

File::File(File&& o) noexcept
    : fd_(std::exchange(o.fd_, -1)),
      path_(std::move(o.path_)),
      size_bytes_(o.size_bytes_),
      alignment_bytes_(o.alignment_bytes_),
      direct_(o.direct_),
      writable_(o.writable_) {}

File& File::operator=(File&& o) noexcept {
  if (this != &o) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = std::exchange(o.fd_, -1);
    path_ = std::move(o.path_);
    size_bytes_ = o.size_bytes_;
    alignment_bytes_ = o.alignment_bytes_;
    direct_ = o.direct_;
    writable_ = o.writable_;
  }
  return *this;
}

File::~File() {
  if (fd_ >= 0) ::close(fd_);
}

Status File::CheckAligned(uint64_t offset_bytes, ConstByteSpan data) const {
  uint64_t a = required_alignment_bytes();
  if (offset_bytes % a != 0 || data.size() % a != 0 ||
      reinterpret_cast<uintptr_t>(data.data()) % a != 0) {
    return InvalidArgumentError(path_ + ": O_DIRECT I/O at offset " + std::to_string(offset_bytes) +
                                " length " + std::to_string(data.size()) + " is not aligned to " +
                                std::to_string(a) + " bytes");
  }
  return Status::Ok();
}

Result<uint64_t> File::ReadAt(uint64_t offset_bytes, ByteSpan data) const {
  RETURN_IF_ERROR(CheckAligned(offset_bytes, data));
  uint64_t done = 0;
  while (done < data.size()) {
    ssize_t n = ::pread(fd_, data.data() + done, data.size() - done,
                        static_cast<off_t>(offset_bytes + done));
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      return ErrnoError("read " + path_ + " at " + std::to_string(offset_bytes + done), errno);
    }
    if (n == 0) break;  // EOF
    done += static_cast<uint64_t>(n);
    // A direct read that stopped short at an unaligned point has hit EOF.
    if (direct_ && done % alignment_bytes_ != 0) break;
  }
  return done;
}

Status File::WriteAt(uint64_t offset_bytes, ConstByteSpan data) {
  if (!writable_) return FailedPreconditionError(path_ + ": opened read-only");
  RETURN_IF_ERROR(CheckAligned(offset_bytes, data));
  uint64_t done = 0;
  while (done < data.size()) {
    ssize_t n = ::pwrite(fd_, data.data() + done, data.size() - done,
                         static_cast<off_t>(offset_bytes + done));
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      return ErrnoError("write " + path_ + " at " + std::to_string(offset_bytes + done), errno);
    }
    if (n == 0) return IoError("write " + path_ + ": no progress");
    done += static_cast<uint64_t>(n);
  }
  if (offset_bytes + done > size_bytes_) size_bytes_ = offset_bytes + done;
  return Status::Ok();
}

Status File::Sync() {
  if (::fdatasync(fd_) != 0) return ErrnoError("fdatasync " + path_, errno);
  return Status::Ok();
}

Status File::Truncate(uint64_t size_bytes) {
  if (!writable_) return FailedPreconditionError(path_ + ": opened read-only");
  if (::ftruncate(fd_, static_cast<off_t>(size_bytes)) != 0) {
    return ErrnoError("truncate " + path_, errno);
  }
  size_bytes_ = size_bytes;
  return Status::Ok();
}

Result<int> OpenRegularFile(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) {
    const int e = errno;
    if (e == ENOENT) return NotFoundError(path + ": no such file");
    return ErrnoError("open " + path, e);
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int e = errno;
    ::close(fd);
    return ErrnoError("stat " + path, e);
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return InvalidArgumentError(path + ": not a regular file");
  }
  if (::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) & ~O_NONBLOCK) != 0) {
    const int e = errno;
    ::close(fd);
    return ErrnoError("fcntl " + path, e);
  }
  return fd;
}

Status ReadFileInPieces(int fd, const std::string& path, uint64_t max_bytes, ByteSpan buffer,
                        const std::function<void(ConstByteSpan)>& piece) {
  uint64_t total = 0;
  for (;;) {
    const ssize_t n = ::read(fd, buffer.data(), buffer.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoError("read " + path, errno);
    }
    if (n == 0) return Status::Ok();
    total += static_cast<uint64_t>(n);
    if (total > max_bytes) {
      return InvalidArgumentError(path + " is larger than the limit of " + FormatBytes(max_bytes));
    }
    piece(ConstByteSpan(buffer.data(), static_cast<size_t>(n)));
  }
}

Result<std::string> ReadFileBounded(const std::string& path, uint64_t max_bytes) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) {
    return InvalidArgumentError(path + " is a folder, not a file");
  }
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int e = errno;
    if (e == ENOENT) return NotFoundError(path + ": no such file");
    return ErrnoError("open " + path, e);
  }
  std::string out;
  std::byte buf[1 << 16];  // bytes of the file, in order
  const Status st = ReadFileInPieces(fd, path, max_bytes, ByteSpan(buf, sizeof buf),
                                     [&out](ConstByteSpan b) {
                                       out.append(reinterpret_cast<const char*>(b.data()), b.size());
                                     });
  ::close(fd);
  if (!st.ok()) return st;
  return out;
}

namespace {

// write(2) until all of `bytes` is written.
Status WriteAll(int fd, ConstByteSpan bytes, const std::string& what) {
  size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoError("write " + what, errno);
    }
    done += static_cast<size_t>(n);
  }
  return Status::Ok();
}

}  // namespace

Status WriteFileAtomically(const std::string& path, ConstByteSpan bytes) {
  static std::atomic<uint32_t> counter{0};
  const std::filesystem::path target(path);
  const std::filesystem::path folder =
      target.parent_path().empty() ? std::filesystem::path(".") : target.parent_path();
  // Short whatever `path` is: ".flashlm-<pid>-<n>.tmp" always fits NAME_MAX.
  const std::string temp = (folder / (".flashlm-" + std::to_string(::getpid()) + "-" +
                                      std::to_string(counter++) + ".tmp"))
                               .string();
  const int fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoError("cannot write " + path + ": create " + temp, errno);
  Status s = WriteAll(fd, bytes, path);
  if (s.ok() && ::fsync(fd) != 0) s = ErrnoError("fsync " + path, errno);
  if (::close(fd) != 0 && s.ok()) s = ErrnoError("close " + path, errno);
  if (s.ok() && ::rename(temp.c_str(), path.c_str()) != 0) {
    s = ErrnoError("cannot write " + path + ": rename", errno);
  }
  if (!s.ok()) {
    ::unlink(temp.c_str());
    return s;
  }
  const int dfd = ::open(folder.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0) return ErrnoError("open folder of " + path, errno);
  const int rc = ::fsync(dfd);
  const int e = errno;
  ::close(dfd);
  if (rc != 0) return ErrnoError("fsync folder of " + path, e);
  return Status::Ok();
}

}  // namespace flashlm::storage
