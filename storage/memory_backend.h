// MemoryBackend: a ReadBackend over byte vectors held in memory, for tests and for layers above
// storage that want a disk-free double. Reads complete synchronously inside Submit (Reap only
// hands them out) with the same semantics as the real backends: EOF shortens a read with an OK
// status, O_DIRECT alignment is enforced for files registered from a direct File, and an
// injected FaultInjector's short reads / EAGAIN / EINTR are finished internally while EIO fails
// the request. One instance belongs to one thread.
#ifndef FLASHLM_STORAGE_MEMORY_BACKEND_H_
#define FLASHLM_STORAGE_MEMORY_BACKEND_H_

#include <memory>
#include <vector>

#include "storage/backend_internal.h"
#include "storage/read_backend.h"

namespace flashlm::storage {

class MemoryBackend final : public ReadBackend {
 public:
  // Errors: InvalidArgument (bad options).
  static Result<std::unique_ptr<MemoryBackend>> Create(const ReadBackendOptions& options);

  std::string_view name() const override { return "memory"; }
  // Copies the whole file into memory (its contents at this moment). Errors: ResourceExhausted
  // (table full, or the file is larger than 1 GiB), IoError.
  Result<uint32_t> RegisterFile(const File& file) override;
  // Adds an in-memory file with the given contents and required alignment (1 = any).
  Result<uint32_t> AddFile(std::vector<std::byte> contents, uint64_t alignment_bytes = 1);
  Status Submit(std::span<const ReadRequest> batch) override;
  Result<size_t> Reap(size_t min_completions, std::span<ReadCompletion> out) override;
  size_t in_flight() const override { return ready_.size(); }
  size_t queue_depth_max() const override { return options_.queue_depth_max; }
  const IoStats& stats() const override { return stats_; }
  void ResetStats() override { stats_.Reset(); }

 private:
  explicit MemoryBackend(const ReadBackendOptions& options)
      : options_(options), ready_(options.queue_depth_max) {}
  ReadCompletion Execute(const ReadRequest& r);

  ReadBackendOptions options_;
  std::vector<internal::FileEntry> files_;
  std::vector<std::vector<std::byte>> contents_;  // [file id] the file's bytes
  internal::CompletionRing ready_;
  IoStats stats_;
};

}  // namespace flashlm::storage

#endif  // FLASHLM_STORAGE_MEMORY_BACKEND_H_
