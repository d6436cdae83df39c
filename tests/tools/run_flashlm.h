// Runs the built `flashlm` binary for end-to-end command tests and captures what it printed.
// Safe under parallel ctest: each call's stderr goes to a file named by pid and a counter.
#ifndef FLASHLM_TESTS_TOOLS_RUN_FLASHLM_H_
#define FLASHLM_TESTS_TOOLS_RUN_FLASHLM_H_

#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>

namespace flashlm::testing {

struct CmdRun {
  int exit_code = -1;  // -1 when the process did not exit normally (a signal)
  std::string out;     // stdout
  std::string err;     // stderr
  std::string all() const { return out + err; }
};

// Runs `build/flashlm ARGS` through the shell (ARGS is shell syntax: quote paths as needed),
// after `prefix` (e.g. "timeout -s KILL 60 ").
inline CmdRun RunFlashlm(const std::string& args, const std::string& prefix = "") {
  static std::atomic<int> counter{0};
  const std::string err_path = std::string(FLASHLM_BINARY_DIR) + "/cmd_err_" +
                               std::to_string(getpid()) + "_" + std::to_string(counter++) + ".txt";
  const std::string cmd =
      prefix + std::string(FLASHLM_BINARY_DIR) + "/flashlm " + args + " 2>" + err_path;
  CmdRun r;
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return r;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) r.out.append(buf, n);
  const int st = pclose(p);
  r.exit_code = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  std::ifstream e(err_path);
  std::stringstream ss;
  ss << e.rdbuf();
  r.err = ss.str();
  std::remove(err_path.c_str());
  return r;
}

}  // namespace flashlm::testing

#endif  // FLASHLM_TESTS_TOOLS_RUN_FLASHLM_H_
