// HttpServer: flashlm's OpenAI-compatible HTTP front over a Scheduler (cpp-httplib).
//
// Routes: POST /v1/completions, POST /v1/chat/completions (OpenAI shapes, SSE streaming ending
// with `data: [DONE]`, `usage`, and a `timings` object with the request's timings and the I/O of
// the forward passes that carried it), GET /v1/models, GET /health, POST /tokenize,
// POST /detokenize, GET /metrics (Prometheus text), GET /stats (the same as JSON), GET / (the web
// page, embedded in the binary).
//
// Life cycle: Create binds the port (and says which); Serve() runs the accept loop on the calling
// thread until Drain(). Until Ready() hands it a scheduler the server answers /health with 503
// {"status":"loading"} and the model routes with 503. Drain() (SIGTERM): the listener closes, no
// new request is taken, in-flight requests finish, then Serve() returns.
//
// Bounds: the request body (413 above max_body_bytes), the prompt against the context, max_tokens,
// the per-request timeout, the scheduler's queue (429 when full), and the worker threads
// (http_threads: each request being answered holds one). Bad input gets a 4xx with an OpenAI-style
// error object {"error": {"message", "type", "param", "code"}}; an engine error a 500; the server
// keeps serving either way. A client that goes away mid-stream cancels its sequence. With an API
// key every route but /health and / (the static page) needs `Authorization: Bearer KEY`.
// Thread-safe: handlers run on httplib's worker threads.
#ifndef FLASHLM_SERVER_HTTP_SERVER_H_
#define FLASHLM_SERVER_HTTP_SERVER_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include "engine/scheduler.h"
#include "engine/session.h"
#include "server/chat_template.h"
#include "server/metrics.h"
#include "storage/status.h"

namespace httplib {
class Server;
class Request;
class Response;
}  // namespace httplib

namespace flashlm::server {

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8080;      // 0: any free port (see port())
  std::string api_key;  // empty: no authentication
  std::string model_name = "flashlm";
  uint64_t max_body_bytes = 1 << 20;
  uint32_t timeout_s = 600;  // per request, from submission; 0: none
  uint32_t http_threads = 32;
  ChatTemplate chat_template = ChatTemplate::kPlain;
};

class HttpServer {
 public:
  // Binds host:port and listens with the system's backlog (SOMAXCONN), so connections beyond
  // the free worker threads wait in the kernel's queue instead of being dropped. The port is not
  // shared: a second server on a bound port fails. Errors: InvalidArgument (bad options),
  // IoError (the port cannot be bound).
  static Result<std::unique_ptr<HttpServer>> Create(const ServerOptions& options);
  ~HttpServer();

  int port() const { return port_; }
  // Hands over the model: from now on the model routes are served. `session` and `scheduler`
  // must outlive Serve().
  void Ready(engine::Session& session, engine::Scheduler& scheduler);
  // Runs the accept loop until Drain(); returns once every in-flight request has finished.
  // Errors: IoError when the loop fails.
  Status Serve();
  // Closes the listener; safe from any thread (not from a signal handler).
  void Drain();

 private:
  explicit HttpServer(const ServerOptions& options);
  void Routes();
  void Generate(const httplib::Request& req, httplib::Response& res, bool chat);
  bool Authorized(const httplib::Request& req, httplib::Response& res) const;

  ServerOptions options_;
  std::unique_ptr<httplib::Server> http_;
  int port_ = 0;
  std::atomic<engine::Session*> session_{nullptr};
  std::atomic<engine::Scheduler*> scheduler_{nullptr};
  std::atomic<bool> draining_{false};
  std::atomic<bool> serve_done_{false};
  std::atomic<int> in_flight_{0};  // generation requests being answered
  std::atomic<uint64_t> next_id_{1};
  Metrics metrics_;
};

}  // namespace flashlm::server

#endif  // FLASHLM_SERVER_HTTP_SERVER_H_
