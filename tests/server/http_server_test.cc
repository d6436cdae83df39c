// HttpServer's socket: a port is bound once, and the listen queue holds a burst of connections.
#include "server/http_server.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <vector>

namespace flashlm::server {
namespace {

ServerOptions AnyPort() {
  ServerOptions o;
  o.port = 0;
  return o;
}

TEST(HttpServerTest, ASecondServerOnABoundPortFails) {
  auto first = HttpServer::Create(AnyPort());
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  ServerOptions same;
  same.port = (*first)->port();
  auto second = HttpServer::Create(same);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), StatusCode::kIoError) << second.status().ToString();
}

TEST(HttpServerTest, RejectsBadOptions) {
  ServerOptions o = AnyPort();
  o.port = 70000;
  EXPECT_EQ(HttpServer::Create(o).status().code(), StatusCode::kInvalidArgument);
  o = AnyPort();
  o.http_threads = 0;
  EXPECT_EQ(HttpServer::Create(o).status().code(), StatusCode::kInvalidArgument);
}

// Nobody accepts (Serve is not running), so every handshake that completes sits in the listen
// queue: with httplib's own backlog of 5 only about six of these would ever complete.
TEST(HttpServerTest, ListenQueueHoldsABurstOfConnections) {
  auto server = HttpServer::Create(AnyPort());
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  constexpr int kConnections = 48;
  std::vector<int> fds;
  std::vector<pollfd> polls;
  for (int i = 0; i < kConnections; ++i) {
    const int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    ASSERT_GE(fd, 0);
    fds.push_back(fd);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>((*server)->port()));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    const int rc = connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
    ASSERT_TRUE(rc == 0 || errno == EINPROGRESS) << errno;
    polls.push_back({fd, POLLOUT, 0});
  }
  // Loopback handshakes complete at once when the queue has room; a dropped SYN is retried only
  // after a second, so three seconds of waiting separates the two cases without racing either.
  int connected = 0;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(3);
  while (!polls.empty() && std::chrono::steady_clock::now() < deadline) {
    poll(polls.data(), polls.size(), 100);
    std::vector<pollfd> pending;
    for (const pollfd& p : polls) {
      int err = -1;
      socklen_t len = sizeof(err);
      if ((p.revents & POLLOUT) && getsockopt(p.fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 &&
          err == 0) {
        ++connected;
      } else {
        pending.push_back({p.fd, POLLOUT, 0});
      }
    }
    polls.swap(pending);
  }
  for (int fd : fds) close(fd);
  EXPECT_EQ(connected, kConnections);
}

}  // namespace
}  // namespace flashlm::server
