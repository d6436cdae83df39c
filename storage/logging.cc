#include "storage/logging.h"

#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>

#include "storage/check.h"

namespace flashlm {
namespace {
std::atomic<int> g_level{static_cast<int>(LogLevel::kWarning)};

const char* LevelTag(LogLevel level) {
  switch (level) {
    case LogLevel::kDebug: return "debug";
    case LogLevel::kInfo: return "info";
    case LogLevel::kWarning: return "warning";
    case LogLevel::kError: return "error";
    case LogLevel::kSilent: return "";
  }
  return "";
}
}  // namespace

void SetLogLevel(LogLevel level) { g_level.store(static_cast<int>(level)); }
LogLevel GetLogLevel() { return static_cast<LogLevel>(g_level.load(std::memory_order_relaxed)); }

namespace internal {
LogMessage::LogMessage(LogLevel level, const char* file, int line) : level_(level) {
  stream_ << "flashlm " << LevelTag(level) << ": ";
  (void)file;
  (void)line;
}

LogMessage::~LogMessage() {
  stream_ << '\n';
  std::string s = stream_.str();
  ssize_t ignored = ::write(STDERR_FILENO, s.data(), s.size());
  (void)ignored;
}

[[noreturn]] void CheckFailed(const char* file, int line, const char* condition) {
  std::fprintf(stderr, "flashlm: CHECK failed at %s:%d: %s\n", file, line, condition);
  std::fflush(stderr);
  std::abort();
}
}  // namespace internal

}  // namespace flashlm
