// Shared helpers for tests: where ../shared/models is, and a scratch directory per test.
#ifndef FLASHLM_TESTS_TEST_UTIL_H_
#define FLASHLM_TESTS_TEST_UTIL_H_

#include <gtest/gtest.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

namespace flashlm::testing {

// The shared models folder: $FLASHLM_SHARED_MODELS, else ../shared/models beside the checkout.
inline std::filesystem::path SharedModelsDir() {
  if (const char* env = std::getenv("FLASHLM_SHARED_MODELS")) return env;
  return FLASHLM_SHARED_MODELS_DIR;
}

// Path of a file under the shared models folder, or empty when it does not exist.
inline std::filesystem::path SharedModel(const std::string& relative) {
  std::filesystem::path p = SharedModelsDir() / relative;
  return std::filesystem::exists(p) ? p : std::filesystem::path();
}

// Skips the current test with a clear message when a shared model file is absent.
#define FLASHLM_REQUIRE_SHARED_MODEL(var, relative)                                         \
  std::filesystem::path var = ::flashlm::testing::SharedModel(relative);                    \
  if (var.empty()) {                                                                        \
    GTEST_SKIP() << "shared model '" << (relative) << "' not found under "                  \
                 << ::flashlm::testing::SharedModelsDir()                                   \
                 << " (set FLASHLM_SHARED_MODELS to the shared/models folder)";             \
  }

// Flips bits of the byte at `offset` of the file at `path` in place (corruption tests). Calling it
// again with the same arguments restores the byte.
inline void FlipByte(const std::filesystem::path& path, uint64_t offset, char mask = 0x20) {
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(static_cast<std::streamoff>(offset));
  char c = 0;
  f.read(&c, 1);
  c = static_cast<char>(c ^ mask);
  f.seekp(static_cast<std::streamoff>(offset));
  f.write(&c, 1);
}

// A fresh directory under the build tree (a real disk, so O_DIRECT works), removed at exit.
class ScratchDir {
 public:
  ScratchDir() {
    const ::testing::TestInfo* info = ::testing::UnitTest::GetInstance()->current_test_info();
    std::string name = info ? std::string(info->test_suite_name()) + "." + info->name() : "misc";
    for (char& c : name) {
      if (c == '/') c = '_';
    }
    path_ = std::filesystem::path(FLASHLM_BINARY_DIR) / "test-scratch" / name;
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~ScratchDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& name) const { return path_ / name; }

 private:
  std::filesystem::path path_;
};

}  // namespace flashlm::testing

#endif  // FLASHLM_TESTS_TEST_UTIL_H_
