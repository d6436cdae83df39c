// Status and Result<T>: how every library function in flashlm reports failure.
//
// Library code never throws; a failure is a value the caller sees. An OK Status holds no heap
// memory (a null pointer), so returning OK on the per-token path allocates nothing. An error
// carries a code and a message that names what failed (the file, the extent, the flag).
// Status and Result are values: copyable, movable, not thread-safe to mutate concurrently.
#ifndef FLASHLM_STORAGE_STATUS_H_
#define FLASHLM_STORAGE_STATUS_H_

#include <cassert>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace flashlm {

enum class StatusCode : int {
  kOk = 0,
  kNotFound,
  kCorruption,
  kIoError,
  kInvalidArgument,
  kNotSupported,
  kResourceExhausted,
  kCancelled,
  kFailedPrecondition,
  kInternal,
};

// Returns a stable, human-readable name for `code` ("Corruption", ...).
std::string_view StatusCodeName(StatusCode code);

class [[nodiscard]] Status {
 public:
  Status() = default;  // OK
  Status(StatusCode code, std::string_view message);
  Status(const Status& other);
  Status& operator=(const Status& other);
  Status(Status&&) noexcept = default;
  Status& operator=(Status&&) noexcept = default;

  static Status Ok() { return Status(); }

  bool ok() const { return rep_ == nullptr; }
  StatusCode code() const { return rep_ ? rep_->code : StatusCode::kOk; }
  // Empty for OK. The view lives as long as this Status is unmodified.
  std::string_view message() const { return rep_ ? std::string_view(rep_->message) : ""; }
  // "Corruption: extent 12 checksum mismatch" or "OK".
  std::string ToString() const;

  // Returns a copy whose message is "<context>: <message>"; OK stays OK.
  Status WithContext(std::string_view context) const;

  // Explicitly discards a status the caller has decided not to act on.
  void IgnoreError() const {}

 private:
  struct Rep {
    StatusCode code;
    std::string message;
  };
  std::unique_ptr<Rep> rep_;
};

inline Status NotFoundError(std::string_view msg) { return Status(StatusCode::kNotFound, msg); }
inline Status CorruptionError(std::string_view msg) {
  return Status(StatusCode::kCorruption, msg);
}
inline Status IoError(std::string_view msg) { return Status(StatusCode::kIoError, msg); }
inline Status InvalidArgumentError(std::string_view msg) {
  return Status(StatusCode::kInvalidArgument, msg);
}
inline Status NotSupportedError(std::string_view msg) {
  return Status(StatusCode::kNotSupported, msg);
}
inline Status ResourceExhaustedError(std::string_view msg) {
  return Status(StatusCode::kResourceExhausted, msg);
}
inline Status CancelledError(std::string_view msg) { return Status(StatusCode::kCancelled, msg); }
inline Status FailedPreconditionError(std::string_view msg) {
  return Status(StatusCode::kFailedPrecondition, msg);
}
inline Status InternalError(std::string_view msg) { return Status(StatusCode::kInternal, msg); }

// An IoError whose message is "<what>: <strerror(errno_value)>".
Status ErrnoError(std::string_view what, int errno_value);

// Result<T> holds either a T or a non-OK Status.
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}  // NOLINT: implicit by design
  Result(Status status) : v_(std::move(status)) {  // NOLINT: implicit by design
    assert(!std::get<Status>(v_).ok() && "Result constructed from an OK status");
  }

  bool ok() const { return std::holds_alternative<T>(v_); }
  // OK when a value is held.
  Status status() const { return ok() ? Status() : std::get<Status>(v_); }

  // Preconditions: ok().
  T& value() & { return std::get<T>(v_); }
  const T& value() const& { return std::get<T>(v_); }
  T&& value() && { return std::get<T>(std::move(v_)); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T* operator->() { return &std::get<T>(v_); }
  const T* operator->() const { return &std::get<T>(v_); }

 private:
  std::variant<T, Status> v_;
};

namespace internal {
inline Status AsStatus(Status s) { return s; }
template <typename T>
Status AsStatus(const Result<T>& r) {
  return r.status();
}
}  // namespace internal

}  // namespace flashlm

#define FLASHLM_CONCAT_INNER_(a, b) a##b
#define FLASHLM_CONCAT_(a, b) FLASHLM_CONCAT_INNER_(a, b)

// Returns from the enclosing function with the status of `expr` when it is not OK.
#define RETURN_IF_ERROR(expr)                                                  \
  do {                                                                         \
    ::flashlm::Status flashlm_status_ = ::flashlm::internal::AsStatus((expr)); \
    if (!flashlm_status_.ok()) return flashlm_status_;                         \
  } while (0)

// ASSIGN_OR_RETURN(auto x, MakeX()); declares/assigns the value or returns the error.
#define ASSIGN_OR_RETURN(lhs, expr) \
  ASSIGN_OR_RETURN_IMPL_(FLASHLM_CONCAT_(flashlm_result_, __LINE__), lhs, expr)
#define ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                           \
  if (!tmp.ok()) return tmp.status();          \
  lhs = std::move(tmp).value()

#endif  // FLASHLM_STORAGE_STATUS_H_
