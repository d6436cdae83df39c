// Starts the built `flashlm serve` on a free loopback port (--port 0; the port is read from its
// stderr), waits until /health answers 200, and stops it with SIGTERM (or SIGKILL after a
// deadline) when destroyed. For the serve tests; one process per object.
#ifndef FLASHLM_TESTS_TOOLS_SERVE_PROCESS_H_
#define FLASHLM_TESTS_TOOLS_SERVE_PROCESS_H_

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace flashlm::testing {

class ServeProcess {
 public:
  // `args` are serve's arguments after the model path (one element each, no shell).
  ServeProcess(const std::string& model, const std::vector<std::string>& args,
               const std::string& log_path)
      : log_path_(log_path) {
    std::vector<std::string> argv = {std::string(FLASHLM_BINARY_DIR) + "/flashlm", "serve", model,
                                     "--port", "0"};
    argv.insert(argv.end(), args.begin(), args.end());
    pid_ = fork();
    if (pid_ == 0) {
      const int fd = open(log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      dup2(fd, 2);
      std::vector<char*> cargv;
      for (std::string& a : argv) cargv.push_back(a.data());
      cargv.push_back(nullptr);
      execv(cargv[0], cargv.data());
      _exit(127);
    }
    // The port line comes first, before the model loads.
    const std::regex port_re("listening on http://[^:]+:([0-9]+)");
    for (int i = 0; i < 3000 && port_ == 0 && alive(); ++i) {
      std::smatch m;
      const std::string log = Log();
      if (std::regex_search(log, m, port_re)) port_ = std::stoi(m[1]);
      if (port_ == 0) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }
  ~ServeProcess() {
    if (pid_ > 0 && exit_code_ == kRunning) Stop(20);
  }

  int port() const { return port_; }
  pid_t pid() const { return pid_; }
  std::string base() const { return "http://127.0.0.1:" + std::to_string(port_); }
  std::string Log() const {
    std::ifstream in(log_path_);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }
  bool alive() {
    if (exit_code_ != kRunning) return false;
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      exit_code_ = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
      return false;
    }
    return true;
  }
  // Waits until the log says ready (the model is loaded), at most timeout_s.
  bool WaitReady(int timeout_s = 60) {
    for (int i = 0; i < timeout_s * 100 && alive(); ++i) {
      if (Log().find("serve: ready") != std::string::npos) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return false;
  }
  // SIGTERM, then waits up to timeout_s for the exit (SIGKILL after). Returns the exit code (-1:
  // killed by a signal).
  int Stop(int timeout_s) {
    if (exit_code_ != kRunning) return exit_code_;
    kill(pid_, SIGTERM);
    return Wait(timeout_s);
  }
  int Wait(int timeout_s) {
    for (int i = 0; i < timeout_s * 100; ++i) {
      if (!alive()) return exit_code_;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    kill(pid_, SIGKILL);
    int status = 0;
    waitpid(pid_, &status, 0);
    exit_code_ = -2;
    return exit_code_;
  }

 private:
  static constexpr int kRunning = -100;
  std::string log_path_;
  pid_t pid_ = -1;
  int port_ = 0;
  int exit_code_ = kRunning;
};

}  // namespace flashlm::testing

#endif  // FLASHLM_TESTS_TOOLS_SERVE_PROCESS_H_
