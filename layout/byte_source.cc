#include "layout/byte_source.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "storage/file.h"

namespace flashlm::layout {
namespace {

Status PastEnd(const std::string& name, uint64_t offset, uint64_t length, uint64_t size) {
  return CorruptionError(name + ": read of " + std::to_string(length) + " bytes at offset " +
                         std::to_string(offset) + " passes the end of the data (" +
                         std::to_string(size) + " bytes)");
}

class FileSource final : public ByteSource {
 public:
  FileSource(int fd, uint64_t size, std::string name)
      : fd_(fd), size_bytes_(size), name_(std::move(name)) {}
  ~FileSource() override { ::close(fd_); }
  uint64_t size_bytes() const override { return size_bytes_; }
  const std::string& name() const override { return name_; }

  Status ReadAt(uint64_t offset, ByteSpan out) override {
    if (!RangeInside(offset, out.size(), size_bytes_)) {
      return PastEnd(name_, offset, out.size(), size_bytes_);
    }
    // pread may return short counts (signals, large requests): loop until done.
    uint64_t done = 0;
    while (done < out.size()) {
      const ssize_t n =
          ::pread(fd_, out.data() + done, out.size() - done, static_cast<off_t>(offset + done));
      if (n < 0) {
        if (errno == EINTR) continue;
        return ErrnoError("read " + name_, errno);
      }
      if (n == 0) return PastEnd(name_, offset, out.size(), size_bytes_);  // file shrank
      done += static_cast<uint64_t>(n);
    }
    return Status::Ok();
  }

 private:
  int fd_;
  uint64_t size_bytes_;
  std::string name_;
};

class MemSource final : public ByteSource {
 public:
  MemSource(ConstByteSpan bytes, std::string name)
      : bytes_(bytes.begin(), bytes.end()), name_(std::move(name)) {}
  uint64_t size_bytes() const override { return bytes_.size(); }
  const std::string& name() const override { return name_; }
  Status ReadAt(uint64_t offset, ByteSpan out) override {
    if (!RangeInside(offset, out.size(), bytes_.size())) {
      return PastEnd(name_, offset, out.size(), bytes_.size());
    }
    if (!out.empty()) std::memcpy(out.data(), bytes_.data() + offset, out.size());
    return Status::Ok();
  }

 private:
  std::vector<std::byte> bytes_;
  std::string name_;
};

}  // namespace

Result<std::unique_ptr<ByteSource>> OpenFileSource(std::string_view path) {
  const std::string p(path);
  ASSIGN_OR_RETURN(const int fd, storage::OpenRegularFile(p));  // never blocks on a FIFO
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    const int e = errno;
    ::close(fd);
    return ErrnoError("stat " + p, e);
  }
  return std::unique_ptr<ByteSource>(
      std::make_unique<FileSource>(fd, static_cast<uint64_t>(st.st_size), p));
}

std::unique_ptr<ByteSource> MemorySource(ConstByteSpan bytes, std::string name) {
  return std::make_unique<MemSource>(bytes, std::move(name));
}

}  // namespace flashlm::layout
