// FaultBackend: a ReadBackend decorator that adds request-level faults to any inner backend:
// a successful completion may be turned into an IoError (eio_rate), have one bit of its data
// flipped (bit_flip_rate) or be delayed (delay_rate, delay_us) before the caller sees it.
// Faults below the request level (short reads, EAGAIN, EINTR), which the backend itself must
// absorb, are injected by passing a FaultInjector in ReadBackendOptions::faults to the inner
// backend; MakeFaultBackend does both with one injector. Owns the inner backend; one thread.
#ifndef FLASHLM_STORAGE_FAULT_BACKEND_H_
#define FLASHLM_STORAGE_FAULT_BACKEND_H_

#include <memory>
#include <string>
#include <vector>

#include "storage/fault_injector.h"
#include "storage/read_backend.h"

namespace flashlm::storage {

class FaultBackend final : public ReadBackend {
 public:
  // `faults` must outlive the backend. Only its eio/bit-flip/delay rates are used here.
  FaultBackend(std::unique_ptr<ReadBackend> inner, FaultInjector* faults);

  std::string_view name() const override { return name_; }
  Result<uint32_t> RegisterFile(const File& file) override { return inner_->RegisterFile(file); }
  Status Submit(std::span<const ReadRequest> batch) override;
  Result<size_t> Reap(size_t min_completions, std::span<ReadCompletion> out) override;
  size_t in_flight() const override { return inner_->in_flight(); }
  size_t queue_depth_max() const override { return inner_->queue_depth_max(); }
  const IoStats& stats() const override { return inner_->stats(); }
  void ResetStats() override { inner_->ResetStats(); }
  ReadBackend& inner() { return *inner_; }

 private:
  std::unique_ptr<ReadBackend> inner_;
  FaultInjector* faults_;
  std::string name_;                  // "fault(<inner>)"
  std::vector<ReadRequest> slots_;    // [queue_depth_max] the caller's request per slot
  std::vector<uint32_t> free_slots_;  // stack of free slot indices
  std::vector<ReadRequest> scratch_;  // [queue_depth_max] the batch as sent to the inner backend
};

// A FaultBackend over a fresh `inner` backend that also injects `faults` at the system-call
// level. Errors: as MakeReadBackend.
Result<std::unique_ptr<ReadBackend>> MakeFaultBackend(BackendKind inner,
                                                      const ReadBackendOptions& options,
                                                      FaultInjector* faults);

}  // namespace flashlm::storage

#endif  // FLASHLM_STORAGE_FAULT_BACKEND_H_
