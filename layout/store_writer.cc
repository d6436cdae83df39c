#include "layout/store_writer.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>

#include "layout/catalog_seal.h"
#include "storage/checksum.h"
#include "storage/lmdb_env.h"
#include "storage/zstd_codec.h"

namespace flashlm::layout {
namespace {

constexpr uint64_t kWriteBufferBytes = 8u << 20;  // multiple of any O_DIRECT alignment

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
  // Beside OUT, under a short name of its own (not OUT's name plus a suffix), so that any legal
  // OUT works: ".flashlm-tmp-<pid>-<n>".
  static std::atomic<uint32_t> counter{0};
  std::filesystem::path parent = std::filesystem::path(trimmed).parent_path();
  if (parent.empty()) parent = ".";
  const std::string temp = (parent / (std::string(kTempMarker) + std::to_string(::getpid()) + "-" +
                                      std::to_string(counter++)))
                               .string();
  std::filesystem::remove_all(temp, ec);  // a stale temp of an earlier run with our pid
  if (::mkdir(temp.c_str(), 0755) != 0) return ErrnoError("mkdir " + temp, errno);
  std::string data = temp + "/" + DataFileName(0);
  auto file = storage::File::Create(data);
  auto buffer = [&]() -> Result<storage::AlignedBuffer> {
    if (!file.ok()) return file.status();
    return storage::AlignedBuffer::Allocate(kWriteBufferBytes,
                                            std::max<uint64_t>(4096, file->alignment_bytes()));
  };
  Result<storage::AlignedBuffer> a = buffer();
  Result<storage::AlignedBuffer> b = buffer();
  if (!a.ok() || !b.ok()) {
    std::filesystem::remove_all(temp, ec);
    return a.ok() ? b.status() : a.status();
  }
  return std::unique_ptr<StoreWriter>(
      new StoreWriter(trimmed, temp, options, std::move(*file), std::move(*a), std::move(*b)));
}

StoreWriter::~StoreWriter() {
  WaitForWrite().IgnoreError();  // before the temp folder goes
  if (!finished_) {
    std::error_code ec;
    std::filesystem::remove_all(temp_path_, ec);
  }
}

Status StoreWriter::WaitForWrite() {
  if (!pending_.valid()) return Status::Ok();
  return pending_.get();
}

Status StoreWriter::FlushFull() {
  RETURN_IF_ERROR(WaitForWrite());  // the spare buffer is free again
  std::swap(buffer_, spare_);
  const uint64_t offset = buffer_offset_;
  storage::File* file = &file_;  // only the task touches it until WaitForWrite()
  ConstByteSpan bytes = spare_.span();
  pending_ = std::async(std::launch::async,
                        [file, offset, bytes] { return file->WriteAt(offset, bytes); });
  buffer_offset_ += buffer_.size_bytes();
  buffer_used_ = 0;
  return Status::Ok();
}

Status StoreWriter::Append(ConstByteSpan bytes, uint64_t zeros) {
  uint64_t left = bytes.empty() ? zeros : bytes.size();
  uint64_t from = 0;
  while (left > 0) {
    const uint64_t n = std::min(left, buffer_.size_bytes() - buffer_used_);
    if (bytes.empty()) {
      std::memset(buffer_.data() + buffer_used_, 0, n);
    } else {
      std::memcpy(buffer_.data() + buffer_used_, bytes.data() + from, n);
    }
    buffer_used_ += n;
    from += n;
    left -= n;
    if (buffer_used_ == buffer_.size_bytes()) RETURN_IF_ERROR(FlushFull());
  }
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
    const double saved = 1.0 - double(AlignUp(n, align)) / double(AlignUp(raw.size(), align));
    if (saved >= options_.zstd_min_saving) {
      stored = ConstByteSpan(scratch_.data(), n);
      rec.codec = static_cast<uint8_t>(Codec::kZstd);
      ++stats_.compressed_extents;
    }
  }
  rec.stored_bytes = stored.size();
  rec.checksum = storage::Checksum64(stored);
  const uint64_t padded_end = AlignUp(rec.offset_bytes + stored.size(), align);
  RETURN_IF_ERROR(Append(stored, 0));
  RETURN_IF_ERROR(Append({}, padded_end - rec.offset_bytes - stored.size()));
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
  // The last, partial buffer: written rounded up to the file's O_DIRECT alignment (zeros), then
  // the file is cut back to the aligned end of the last extent, so that an O_DIRECT read of the
  // last extent's aligned cover stays inside the file.
  RETURN_IF_ERROR(WaitForWrite());
  if (buffer_used_ > 0) {
    const uint64_t a = std::max<uint64_t>(1, file_.required_alignment_bytes());
    const uint64_t n = AlignUp(buffer_used_, a);
    std::memset(buffer_.data() + buffer_used_, 0, n - buffer_used_);
    RETURN_IF_ERROR(file_.WriteAt(buffer_offset_, buffer_.span().first(n)));
  }
  RETURN_IF_ERROR(file_.Truncate(end_bytes_));
  RETURN_IF_ERROR(file_.Sync());
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
    RETURN_IF_ERROR(
        txn.Put(catalog_key::kHeader,
                ConstByteSpan(reinterpret_cast<const std::byte*>(&header), sizeof header)));
    RETURN_IF_ERROR(txn.Commit());  // LMDB fsyncs on commit by default
  }
  std::error_code ec;
  std::filesystem::remove(catalog + "-lock", ec);  // readers open with MDB_NOLOCK
  // The seal covers every byte of the finished catalog (layout/catalog_seal.h).
  RETURN_IF_ERROR(WriteCatalogSeal(temp_path_));
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
