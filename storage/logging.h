// Minimal leveled logging to stderr. Thread-safe: each message is written with one write(2).
// The level is process-wide and set once at start-up (tools set it from --verbose / --quiet).
#ifndef FLASHLM_STORAGE_LOGGING_H_
#define FLASHLM_STORAGE_LOGGING_H_

#include <sstream>
#include <string>

namespace flashlm {

enum class LogLevel : int { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3, kSilent = 4 };

void SetLogLevel(LogLevel level);
LogLevel GetLogLevel();

namespace internal {
class LogMessage {
 public:
  LogMessage(LogLevel level, const char* file, int line);
  ~LogMessage();  // writes the line
  std::ostringstream& stream() { return stream_; }

 private:
  LogLevel level_;
  std::ostringstream stream_;
};
}  // namespace internal

}  // namespace flashlm

// LOG(INFO) << "opened " << path;  Messages below the current level cost one comparison.
#define FLASHLM_LOG_LEVEL_DEBUG ::flashlm::LogLevel::kDebug
#define FLASHLM_LOG_LEVEL_INFO ::flashlm::LogLevel::kInfo
#define FLASHLM_LOG_LEVEL_WARNING ::flashlm::LogLevel::kWarning
#define FLASHLM_LOG_LEVEL_ERROR ::flashlm::LogLevel::kError
#define LOG(severity)                                                   \
  if (FLASHLM_LOG_LEVEL_##severity < ::flashlm::GetLogLevel()) {        \
  } else                                                                \
    ::flashlm::internal::LogMessage(FLASHLM_LOG_LEVEL_##severity, __FILE__, __LINE__).stream()

#endif  // FLASHLM_STORAGE_LOGGING_H_
