#include "storage/read_backend.h"

#include <string>

#include "storage/logging.h"
#include "storage/memory_backend.h"
#include "storage/pread_backend.h"
#include "storage/uring_backend.h"

namespace flashlm::storage {

Result<BackendKind> ParseBackendKind(std::string_view name) {
  if (name == "auto") return BackendKind::kAuto;
  if (name == "uring" || name == "io_uring") return BackendKind::kUring;
  if (name == "pread") return BackendKind::kPread;
  if (name == "memory") return BackendKind::kMemory;
  return InvalidArgumentError("unknown backend '" + std::string(name) +
                              "' (choose auto, uring, pread or memory)");
}

Result<std::unique_ptr<ReadBackend>> MakeReadBackend(BackendKind kind,
                                                     const ReadBackendOptions& options) {
  switch (kind) {
    case BackendKind::kUring: {
      ASSIGN_OR_RETURN(auto b, UringBackend::Create(options));
      return std::unique_ptr<ReadBackend>(std::move(b));
    }
    case BackendKind::kPread: {
      ASSIGN_OR_RETURN(auto b, PreadBackend::Create(options));
      return std::unique_ptr<ReadBackend>(std::move(b));
    }
    case BackendKind::kMemory: {
      ASSIGN_OR_RETURN(auto b, MemoryBackend::Create(options));
      return std::unique_ptr<ReadBackend>(std::move(b));
    }
    case BackendKind::kAuto:
      break;
  }
  Result<std::unique_ptr<UringBackend>> uring = UringBackend::Create(options);
  if (uring.ok()) {
    LOG(INFO) << "read backend: io_uring";
    return std::unique_ptr<ReadBackend>(std::move(uring).value());
  }
  if (uring.status().code() == StatusCode::kInvalidArgument) return uring.status();
  LOG(WARNING) << "io_uring unavailable (" << uring.status().message()
               << "); falling back to the pread backend";
  ASSIGN_OR_RETURN(auto b, PreadBackend::Create(options));
  return std::unique_ptr<ReadBackend>(std::move(b));
}

}  // namespace flashlm::storage
