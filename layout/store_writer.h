// StoreWriter: writes one store folder atomically. Used by repack; knows the format, not models.
// Data is written with O_DIRECT from two aligned 8 MiB buffers, one filling while the other is
// written by a background task (the only other thread; it touches only its buffer and the fd).
//
// Protocol: Create() makes "<out><kTempMarker><pid>" beside `out` and opens its data file.
// AppendExtent() writes extents one by one (streaming: only the extent being written is held).
// Finish() fsyncs the data file, writes the whole catalog in one LMDB transaction (header last
// written, all committed at once), fsyncs, renames the temp folder to `out` and fsyncs the
// parent folder. Destroying a writer that has not finished removes the temp folder, so a failed
// repack leaves nothing behind; a killed process leaves only a temp-named folder, which
// StoreReader refuses to open. Not thread-safe.
#ifndef FLASHLM_LAYOUT_STORE_WRITER_H_
#define FLASHLM_LAYOUT_STORE_WRITER_H_

#include <cstdint>
#include <future>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "layout/store_format.h"
#include "storage/aligned_buffer.h"
#include "storage/bytes.h"
#include "storage/file.h"
#include "storage/status.h"

namespace flashlm::layout {

struct StoreWriterOptions {
  uint64_t alignment_bytes = 4096;  // power of two in [512, 16 MiB]
  Codec codec = Codec::kNone;       // kZstd: compress each extent where it pays
  int zstd_level = 3;
  // zstd is kept for an extent only if it saves at least this fraction of the aligned size.
  double zstd_min_saving = 0.10;
};

struct StoreWriteStats {
  uint64_t extent_count = 0;
  uint64_t raw_bytes = 0;     // sum of raw extent sizes
  uint64_t stored_bytes = 0;  // sum of stored extent sizes
  uint64_t file_bytes = 0;    // data file size, padding included
  uint64_t compressed_extents = 0;
};

class StoreWriter {
 public:
  // Errors: InvalidArgument (bad alignment, `out` exists), IoError.
  static Result<std::unique_ptr<StoreWriter>> Create(const std::string& out,
                                                     const StoreWriterOptions& options);
  ~StoreWriter();  // removes the temp folder unless Finish() succeeded
  StoreWriter(const StoreWriter&) = delete;
  StoreWriter& operator=(const StoreWriter&) = delete;

  // Writes `raw` as the next extent at the next aligned offset; returns its index.
  // Errors: IoError.
  Result<uint64_t> AppendExtent(ConstByteSpan raw);

  // Catalog entries written by Finish(). Keys must not be "header" or "extents".
  void PutRecord(std::string key, ConstByteSpan value);
  void PutText(std::string key, std::string_view value) {
    PutRecord(std::move(key), AsBytes(value));
  }

  // Makes the store durable and visible at `out`. Errors: IoError, InvalidArgument (out appeared).
  Status Finish();

  const std::string& temp_path() const { return temp_path_; }
  const StoreWriteStats& stats() const { return stats_; }

 private:
  StoreWriter(std::string out, std::string temp, const StoreWriterOptions& options,
              storage::File file, storage::AlignedBuffer buffer, storage::AlignedBuffer spare)
      : out_path_(std::move(out)),
        temp_path_(std::move(temp)),
        options_(options),
        file_(std::move(file)),
        buffer_(std::move(buffer)),
        spare_(std::move(spare)) {}
  // Appends `bytes` (or `count` zeros when bytes is empty) to the write buffer, writing it out
  // each time it fills.
  Status Append(ConstByteSpan bytes, uint64_t zeros);
  // Hands the full buffer to a background write and continues in the spare one.
  Status FlushFull();
  // Waits for the background write, if any. Errors: the write's.
  Status WaitForWrite();

  std::string out_path_;
  std::string temp_path_;
  StoreWriterOptions options_;
  storage::File file_;  // data-00000.bin, O_DIRECT when the filesystem allows
  bool finished_ = false;
  uint64_t end_bytes_ = 0;  // aligned end of the data written so far
  std::vector<ExtentRecord> extents_;
  std::map<std::string, std::vector<std::byte>> records_;  // catalog key -> value
  std::vector<std::byte> scratch_;                         // compressed extent, reused
  // Extents and their padding are gathered into one aligned buffer and written in whole-buffer
  // O_DIRECT writes (no page-cache copy of a multi-GB store).
  // Double-buffered: one buffer fills while the other is written by a background task.
  storage::AlignedBuffer buffer_;  // file bytes [buffer_offset_, buffer_offset_ + buffer_used_)
  storage::AlignedBuffer spare_;   // being written while pending_ is valid
  uint64_t buffer_offset_ = 0;     // multiple of buffer_.size_bytes()
  uint64_t buffer_used_ = 0;
  // Declared last: destroyed first, so a write still in flight finishes before the buffers and
  // the file go away (a std::async future's destructor waits).
  std::future<Status> pending_;
  StoreWriteStats stats_;
};

}  // namespace flashlm::layout

#endif  // FLASHLM_LAYOUT_STORE_WRITER_H_
