#include "layout/store_writer.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "storage/checksum.h"
#include "storage/lmdb_env.h"
#include "storage/zstd_codec.h"

namespace flashlm::layout {
namespace {

Status FsyncPath(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoError("open for fsync " + path, errno);
  int rc = ::fsync(fd);
  int e = errno;
  ::close(fd);
  if (rc != 0) return ErrnoError("fsync " + path, e);
  return Status::Ok();
}

std::string ParentOf(const std::string& path) {
  std::filesystem::path p = std::filesystem::path(path).parent_path();
  return p.empty() ? "." : p.string();
}

}  // namespace

Result<std::unique_ptr<StoreWriter>> StoreWriter::Create(const std::string& out,
                                                         const StoreWriterOptions& options) {
  if (!IsPowerOfTwo(options.alignment_bytes) || options.alignment_bytes < 512 ||
      options.alignment_bytes > (16u << 20)) {
    return InvalidArgumentError("alignment must be a power of two from 512 to 16 MiB, got " +
                                std::to_string(options.alignment_bytes));
  }
  std::string trimmed = out;
  while (trimmed.size() > 1 && trimmed.back() == '/') trimmed.pop_back();
  if (trimmed.empty()) return InvalidArgumentError("empty output path");
  std::error_code ec;
  if (std::filesystem::exists(trimmed, ec)) {
    return InvalidArgumentError("output already exists: " + trimmed + " (remove it first)");
  }
  std::string temp = trimmed + std::string(kTempMarker) + std::to_string(::getpid());
  std::filesystem::remove_all(temp, ec);  // a stale temp of an earlier run with our pid
  if (::mkdir(temp.c_str(), 0755) != 0) return ErrnoError("mkdir " + temp, errno);
  std::string data = temp + "/" + DataFileName(0);
  int fd = ::open(data.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    int e = errno;
    std::filesystem::remove_all(temp, ec);
    return ErrnoError("create " + data, e);
  }
  return std::unique_ptr<StoreWriter>(new StoreWriter(trimmed, temp, options, fd));
}

StoreWriter::~StoreWriter() {
  if (fd_ >= 0) ::close(fd_);
  if (!finished_) {
    std::error_code ec;
    std::filesystem::remove_all(temp_path_, ec);
  }
}

Status StoreWriter::WriteAt(ConstByteSpan bytes, uint64_t offset_bytes) {
  while (!bytes.empty()) {
    ssize_t n = ::pwrite(fd_, bytes.data(), bytes.size(), static_cast<off_t>(offset_bytes));
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoError("write " + temp_path_ + "/" + DataFileName(0), errno);
    }
    bytes = bytes.subspan(static_cast<size_t>(n));
    offset_bytes += static_cast<uint64_t>(n);
  }
  return Status::Ok();
}

constexpr uint64_t kWriteBufferBytes = 8u << 20;

Status StoreWriter::Flush() {
  if (buffer_.empty()) return Status::Ok();
  RETURN_IF_ERROR(WriteAt(buffer_, buffer_offset_));
  buffer_offset_ += buffer_.size();
  buffer_.clear();
  return Status::Ok();
}

Result<uint64_t> StoreWriter::AppendExtent(ConstByteSpan raw) {
  if (finished_) return FailedPreconditionError("AppendExtent after Finish");
  const uint64_t align = options_.alignment_bytes;
  ExtentRecord rec{};
  rec.offset_bytes = end_bytes_;
  rec.raw_bytes = raw.size();
  rec.file_index = 0;
  rec.codec = static_cast<uint8_t>(Codec::kNone);
  ConstByteSpan stored = raw;
  if (options_.codec == Codec::kZstd && !raw.empty()) {
    scratch_.resize(storage::ZstdCompressBound(raw.size()));
    ASSIGN_OR_RETURN(size_t n, storage::ZstdCompress(raw, scratch_, options_.zstd_level));
    // Space on flash is counted in aligned units: compression that does not free at least the
    // threshold of them costs a decode on every read for nothing.
    const double saved =
        1.0 - double(AlignUp(n, align)) / double(AlignUp(raw.size(), align));
    if (saved >= options_.zstd_min_saving) {
      stored = ConstByteSpan(scratch_.data(), n);
      rec.codec = static_cast<uint8_t>(Codec::kZstd);
      ++stats_.compressed_extents;
    }
  }
  rec.stored_bytes = stored.size();
  rec.checksum = storage::Checksum64(stored);
  const uint64_t padded_end = AlignUp(rec.offset_bytes + stored.size(), align);
  if (buffer_.size() + (padded_end - rec.offset_bytes) > kWriteBufferBytes) RETURN_IF_ERROR(Flush());
  if (padded_end - rec.offset_bytes > kWriteBufferBytes) {
    // Large extent: written straight from the caller's bytes; the padding becomes a hole that
    // reads as zeros (and ftruncate in Finish extends the file over a trailing one).
    RETURN_IF_ERROR(WriteAt(stored, rec.offset_bytes));
    buffer_offset_ = padded_end;
  } else {
    if (buffer_.capacity() < kWriteBufferBytes) buffer_.reserve(kWriteBufferBytes);
    buffer_.insert(buffer_.end(), stored.begin(), stored.end());
    buffer_.resize(padded_end - buffer_offset_, std::byte{0});
  }
  end_bytes_ = padded_end;
  extents_.push_back(rec);
  ++stats_.extent_count;
  stats_.raw_bytes += raw.size();
  stats_.stored_bytes += stored.size();
  return extents_.size() - 1;
}

void StoreWriter::PutRecord(std::string key, ConstByteSpan value) {
  records_[std::move(key)] = std::vector<std::byte>(value.begin(), value.end());
}

Status StoreWriter::Finish() {
  if (finished_) return FailedPreconditionError("Finish twice");
  RETURN_IF_ERROR(Flush());
  // Pad the file to the aligned end so that an O_DIRECT read of the last extent's aligned
  // cover stays inside the file.
  if (::ftruncate(fd_, static_cast<off_t>(end_bytes_)) != 0) {
    return ErrnoError("truncate data file in " + temp_path_, errno);
  }
  if (::fsync(fd_) != 0) return ErrnoError("fsync data file in " + temp_path_, errno);
  ::close(fd_);
  fd_ = -1;
  stats_.file_bytes = end_bytes_;

  StoreHeader header{};
  std::memcpy(header.magic, kStoreMagic, sizeof header.magic);
  header.format_version = kStoreFormatVersion;
  header.data_file_count = 1;
  header.alignment_bytes = static_cast<uint32_t>(options_.alignment_bytes);
  header.extent_count = extents_.size();

  // Catalog size: records plus LMDB overhead (pages, branch nodes); generous, the file only
  // grows to what is used.
  uint64_t payload = extents_.size() * sizeof(ExtentRecord);
  for (const auto& [k, v] : records_) payload += k.size() + v.size() + 64;
  storage::LmdbEnv::Options opts;
  opts.read_only = false;
  opts.create = true;
  opts.map_size_bytes = AlignUp(payload * 2 + (64u << 20), 1u << 20);
  const std::string catalog = temp_path_ + "/" + std::string(kCatalogFileName);
  {
    ASSIGN_OR_RETURN(auto env, storage::LmdbEnv::Open(catalog, opts));
    ASSIGN_OR_RETURN(storage::WriteTxn txn, env->BeginWrite());
    for (const auto& [k, v] : records_) RETURN_IF_ERROR(txn.Put(k, v));
    RETURN_IF_ERROR(txn.Put(catalog_key::kExtents, std::as_bytes(std::span(extents_))));
    RETURN_IF_ERROR(txn.Put(catalog_key::kHeader,
                            ConstByteSpan(reinterpret_cast<const std::byte*>(&header),
                                          sizeof header)));
    RETURN_IF_ERROR(txn.Commit());  // LMDB fsyncs on commit by default
  }
  std::error_code ec;
  std::filesystem::remove(catalog + "-lock", ec);  // readers open with MDB_NOLOCK
  RETURN_IF_ERROR(FsyncPath(temp_path_));
  if (std::filesystem::exists(out_path_, ec)) {
    return InvalidArgumentError("output appeared while repacking: " + out_path_);
  }
  if (::rename(temp_path_.c_str(), out_path_.c_str()) != 0) {
    return ErrnoError("rename " + temp_path_ + " -> " + out_path_, errno);
  }
  finished_ = true;
  return FsyncPath(ParentOf(out_path_));
}

}  // namespace flashlm::layout
