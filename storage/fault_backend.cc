#include "storage/fault_backend.h"

#include <cerrno>
#include <cstring>

namespace flashlm::storage {

FaultBackend::FaultBackend(std::unique_ptr<ReadBackend> inner, FaultInjector* faults)
    : inner_(std::move(inner)),
      faults_(faults),
      name_("fault(" + std::string(inner_->name()) + ")"),
      slots_(inner_->queue_depth_max()),
      scratch_(inner_->queue_depth_max()) {
  free_slots_.reserve(slots_.size());
  for (uint32_t i = static_cast<uint32_t>(slots_.size()); i-- > 0;) free_slots_.push_back(i);
}

Status FaultBackend::Submit(std::span<const ReadRequest> batch) {
  if (batch.size() > free_slots_.size()) {
    return ResourceExhaustedError("submit of " + std::to_string(batch.size()) +
                                  " reads with only " + std::to_string(free_slots_.size()) +
                                  " free slots");
  }
  // The inner backend sees the slot index as the tag; the caller's tag is restored on reaping.
  for (size_t i = 0; i < batch.size(); ++i) {
    uint32_t s = free_slots_[free_slots_.size() - 1 - i];
    scratch_[i] = batch[i];
    scratch_[i].tag = s;
    slots_[s] = batch[i];
  }
  RETURN_IF_ERROR(inner_->Submit(std::span<const ReadRequest>(scratch_.data(), batch.size())));
  free_slots_.resize(free_slots_.size() - batch.size());
  return Status::Ok();
}

Result<size_t> FaultBackend::Reap(size_t min_completions, std::span<ReadCompletion> out) {
  ASSIGN_OR_RETURN(size_t n, inner_->Reap(min_completions, out));
  for (size_t i = 0; i < n; ++i) {
    ReadCompletion& c = out[i];
    auto s = static_cast<uint32_t>(c.tag);
    const ReadRequest& r = slots_[s];
    c.tag = r.tag;
    free_slots_.push_back(s);
    if (faults_ == nullptr || !c.status.ok()) continue;
    if (faults_->MaybeFailRequest()) {
      c.status = IoError("injected EIO: read at offset " + std::to_string(r.offset_bytes) + " (" +
                         std::to_string(r.dest.size()) + " bytes)");
      c.bytes_read = 0;
      continue;
    }
    faults_->MaybeFlipBit(r.dest.first(c.bytes_read));
  }
  return n;
}

Result<std::unique_ptr<ReadBackend>> MakeFaultBackend(BackendKind inner,
                                                      const ReadBackendOptions& options,
                                                      FaultInjector* faults) {
  ReadBackendOptions o = options;
  o.faults = faults;
  ASSIGN_OR_RETURN(std::unique_ptr<ReadBackend> b, MakeReadBackend(inner, o));
  // The inner backend already applies every fault kind; the wrapper only names it.
  return std::unique_ptr<ReadBackend>(new FaultBackend(std::move(b), nullptr));
}

}  // namespace flashlm::storage
