#include "server/http_server.h"

#include <httplib.h>
#include <sys/socket.h>

#include <chrono>
#include <ctime>
#include <nlohmann/json.hpp>
#include <thread>

#include "server/completion_request.h"
#include "server/json_fields.h"
#include "server/web_page.h"
#include "storage/io_stats.h"

namespace flashlm::server {
namespace {

using nlohmann::json;

// Bounds on what a request may ask for (the body's size is bounded by max_body_bytes).
constexpr size_t kDetokenizeIdsMax = 1 << 16;
// How long a waiting handler sleeps between checks of its request (and of its client).
constexpr uint32_t kWaitSliceMs = 100;

// Generated text may hold bytes that are not UTF-8 (a byte token on its own): they are replaced,
// never thrown over.
std::string Dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

const char* ErrorType(int status) {
  switch (status) {
    case 401:
      return "authentication_error";
    case 404:
      return "not_found_error";
    case 413:
      return "invalid_request_error";
    case 429:
      return "rate_limit_error";
    case 503:
      return "unavailable_error";
    default:
      return status >= 500 ? "server_error" : "invalid_request_error";
  }
}

void SendError(httplib::Response& res, int status, const std::string& message,
               const char* param = nullptr, const char* code = nullptr) {
  json e = {{"message", message},
            {"type", ErrorType(status)},
            {"param", param ? json(param) : json(nullptr)},
            {"code", code ? json(code) : json(nullptr)}};
  res.status = status;
  res.set_content(Dump(json{{"error", e}}), "application/json");
}

void SendJson(httplib::Response& res, const json& j) {
  res.status = 200;
  res.set_content(Dump(j), "application/json");
}

// Parses a JSON object body; on failure answers 400 and returns false.
bool ParseBody(const httplib::Request& req, httplib::Response& res, json* body) {
  *body = json::parse(req.body, nullptr, /*allow_exceptions=*/false);
  if (body->is_discarded()) {
    SendError(res, 400, "the body is not valid JSON", nullptr, "invalid_json");
    return false;
  }
  if (!body->is_object()) {
    SendError(res, 400, "the body must be a JSON object", nullptr, "invalid_json");
    return false;
  }
  return true;
}

json Timings(const engine::RequestResult& r) {
  const engine::GenerationStats& s = r.stats;
  const double predicted_ms = s.decode_ms;
  return json{
      {"queue_ms", r.queue_ms},
      {"prompt_n", s.prompt_tokens},
      {"prompt_ms", s.prefill_ms},
      {"prompt_per_second", s.prefill_tokens_per_s()},
      {"ttft_ms", r.queue_ms + s.ttft_ms},
      {"predicted_n", s.generated_tokens},
      {"predicted_ms", predicted_ms},
      {"predicted_per_second", s.decode_tokens_per_s()},
      {"total_ms", r.queue_ms + s.total_ms},
      // The forward passes that carried this request's tokens; their reads are shared with the
      // other sequences of each pass (mean_batch_sequences of them on average).
      {"passes", r.passes},
      {"mean_batch_sequences", r.mean_batch_sequences},
      {"passes_ms", r.pass_ms},
      {"passes_bytes_read", r.pass_bytes_read},
      {"passes_reads", r.pass_reads},
      {"passes_io_wait_ms", r.pass_io_wait_ms},
      {"passes_compute_ms", std::max(0.0, r.pass_ms - r.pass_io_wait_ms)},
      {"passes_effective_mib_per_s",
       r.pass_io_wait_ms > 0 ? r.pass_bytes_read / (1024.0 * 1024.0) / (r.pass_io_wait_ms / 1e3)
                             : 0.0},
  };
}

std::string RouteOf(const std::string& path) {
  static const char* kRoutes[] = {"/",           "/health",         "/metrics",
                                  "/stats",      "/v1/models",      "/tokenize",
                                  "/detokenize", "/v1/completions", "/v1/chat/completions"};
  for (const char* r : kRoutes) {
    if (path == r) return r;
  }
  return "other";
}

void ReuseAddress(int fd) {
  int yes = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
}

}  // namespace

HttpServer::HttpServer(const ServerOptions& options)
    : options_(options), http_(std::make_unique<httplib::Server>()) {}

HttpServer::~HttpServer() = default;

Result<std::unique_ptr<HttpServer>> HttpServer::Create(const ServerOptions& options) {
  if (options.port < 0 || options.port > 65535) return InvalidArgumentError("port out of range");
  if (options.http_threads == 0) return InvalidArgumentError("http_threads must be positive");
  if (options.max_body_bytes == 0) return InvalidArgumentError("max_body_bytes must be positive");
  std::unique_ptr<HttpServer> s(new HttpServer(options));
  const uint32_t threads = options.http_threads;
  s->http_->new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  s->http_->set_payload_max_length(options.max_body_bytes);
  s->http_->set_keep_alive_timeout(2);
  s->http_->set_read_timeout(10);
  s->http_->set_write_timeout(10);
  s->Routes();
  // httplib (Debian's 0.11) listens with a backlog of 5: a burst of connections beyond the free
  // worker threads would see SYNs dropped and retried a second later. Keep the bound socket's
  // descriptor and listen again with the system's limit once it is bound (Linux updates the
  // backlog of a listening socket). SO_REUSEADDR only: a second server on a busy port must fail
  // to bind, not share the port as httplib's default SO_REUSEPORT would let it.
  int bound_fd = -1;
  s->http_->set_socket_options([&bound_fd](int fd) {
    ReuseAddress(fd);
    bound_fd = fd;
  });
  if (options.port == 0) {
    s->port_ = s->http_->bind_to_any_port(options.host);
    if (s->port_ <= 0) return IoError("cannot bind " + options.host + " to a free port");
  } else {
    if (!s->http_->bind_to_port(options.host, options.port)) {
      return IoError("cannot bind " + options.host + ":" + std::to_string(options.port));
    }
    s->port_ = options.port;
  }
  s->http_->set_socket_options(ReuseAddress);  // the lambda above refers to this frame
  if (bound_fd >= 0 && ::listen(bound_fd, SOMAXCONN) != 0) {
    return IoError("cannot listen on " + options.host);
  }
  return s;
}

void HttpServer::Ready(engine::Session& session, engine::Scheduler& scheduler) {
  session_.store(&session);
  scheduler_.store(&scheduler);
}

Status HttpServer::Serve() {
  const bool ok = draining_.load() || http_->listen_after_bind();
  serve_done_.store(true);
  if (!ok && !draining_.load()) return IoError("the HTTP accept loop failed");
  return Status::Ok();
}

void HttpServer::Drain() {
  draining_.store(true);
  // httplib cuts streams short once stopped: let the generations in flight finish first (each is
  // bounded by the request timeout).
  while (in_flight_.load() > 0) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  // stop() acts only on a running loop: wait for Serve to have started it (or given up).
  while (!serve_done_.load() && !http_->is_running()) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  http_->stop();
}

bool HttpServer::Authorized(const httplib::Request& req, httplib::Response& res) const {
  // The page at / is static and public; what it calls is not.
  if (options_.api_key.empty() || req.path == "/health" || req.path == "/") return true;
  if (req.get_header_value("Authorization") == "Bearer " + options_.api_key) return true;
  res.set_header("WWW-Authenticate", "Bearer");
  SendError(res, 401, "missing or wrong API key (Authorization: Bearer KEY)", nullptr,
            "invalid_api_key");
  return false;
}

void HttpServer::Routes() {
  using Handled = httplib::Server::HandlerResponse;
  http_->set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
    if (!Authorized(req, res)) return Handled::Handled;
    if (draining_.load() && req.path != "/health" && req.path != "/metrics") {
      SendError(res, 503, "the server is shutting down", nullptr, "draining");
      return Handled::Handled;
    }
    return Handled::Unhandled;
  });
  // Errors httplib answers by itself (404, 413, 400 on a bad request line) get an error object.
  http_->set_error_handler(
      httplib::Server::HandlerWithResponse([](const httplib::Request& req, httplib::Response& res) {
        if (!res.body.empty()) return Handled::Unhandled;
        const int status = res.status;
        if (status == 413) {
          SendError(res, 413, "the request body is too large", nullptr, "body_too_large");
        } else if (status == 404) {
          SendError(res, 404, "no route " + req.method + " " + req.path, nullptr, "not_found");
        } else {
          SendError(res, status, "request failed", nullptr, nullptr);
        }
        return Handled::Handled;
      }));
  http_->set_exception_handler(
      [](const httplib::Request&, httplib::Response& res, std::exception_ptr) {
        SendError(res, 500, "internal error", nullptr, "internal");
      });
  http_->set_logger([this](const httplib::Request& req, const httplib::Response& res) {
    metrics_.RecordRequest(RouteOf(req.path), res.status);
  });

  http_->Get("/health", [this](const httplib::Request&, httplib::Response& res) {
    if (draining_.load()) {
      res.status = 503;
      res.set_content(R"({"status":"draining"})", "application/json");
    } else if (scheduler_.load() == nullptr) {
      res.status = 503;
      res.set_content(R"({"status":"loading"})", "application/json");
    } else {
      res.set_content(R"({"status":"ok"})", "application/json");
    }
  });
  http_->Get("/", [](const httplib::Request&, httplib::Response& res) {
    res.set_content(std::string(WebPage()), "text/html; charset=utf-8");
  });
  auto loaded = [this](httplib::Response& res) {
    if (scheduler_.load() != nullptr) return true;
    SendError(res, 503, "the model is loading", nullptr, "loading");
    return false;
  };
  http_->Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
    engine::Scheduler* sch = scheduler_.load();
    engine::Session* ses = session_.load();
    const engine::SchedulerSnapshot snap = sch ? sch->Snapshot() : engine::SchedulerSnapshot();
    res.set_content(metrics_.Prometheus(snap, ses ? ses->planned_bytes() : 0),
                    "text/plain; version=0.0.4");
  });
  http_->Get("/stats", [this, loaded](const httplib::Request&, httplib::Response& res) {
    if (!loaded(res)) return;
    json j = metrics_.Json(scheduler_.load()->Snapshot(), session_.load()->planned_bytes());
    j["now_ms"] = static_cast<double>(storage::NowNs()) / 1e6;
    SendJson(res, j);
  });
  http_->Get("/v1/models", [this, loaded](const httplib::Request&, httplib::Response& res) {
    if (!loaded(res)) return;
    const engine::Scheduler& sch = *scheduler_.load();
    SendJson(res, json{{"object", "list"},
                       {"data", json::array({json{{"id", options_.model_name},
                                                  {"object", "model"},
                                                  {"created", 0},
                                                  {"owned_by", "flashlm"},
                                                  {"context_length", sch.context()}}})}});
  });
  http_->Post("/tokenize", [this, loaded](const httplib::Request& req, httplib::Response& res) {
    if (!loaded(res)) return;
    json body;
    if (!ParseBody(req, res, &body)) return;
    Fields f(body);
    f.Known({"content", "add_special", "parse_special"});
    std::string content;
    bool add_special = false, parse_special = false;
    if (!f.Has("content")) f.Fail("content", "'content' is required");
    f.String("content", &content);
    f.Bool("add_special", &add_special);
    f.Bool("parse_special", &parse_special);
    if (!f.ok()) return SendError(res, 400, f.error(), f.error_param());
    const engine::Tokenizer& tok = session_.load()->tokenizer();
    SendJson(res, json{{"tokens",
                        tok.Encode(content, add_special && tok.bos_id() >= 0, parse_special)}});
  });
  http_->Post("/detokenize", [this, loaded](const httplib::Request& req, httplib::Response& res) {
    if (!loaded(res)) return;
    json body;
    if (!ParseBody(req, res, &body)) return;
    Fields f(body);
    f.Known({"tokens"});
    const engine::Tokenizer& tok = session_.load()->tokenizer();
    std::vector<int32_t> ids;
    if (!f.Has("tokens") || !body["tokens"].is_array() ||
        body["tokens"].size() > kDetokenizeIdsMax) {
      f.Fail("tokens", "'tokens' must be an array of at most " + std::to_string(kDetokenizeIdsMax) +
                           " token ids");
    } else {
      for (const json& v : body["tokens"]) {
        if (!v.is_number_integer() || v.get<int64_t>() < 0 ||
            v.get<int64_t>() >= static_cast<int64_t>(tok.size())) {
          f.Fail("tokens", "token ids must be integers in [0, " + std::to_string(tok.size()) + ")");
          break;
        }
        ids.push_back(static_cast<int32_t>(v.get<int64_t>()));
      }
    }
    if (!f.ok()) return SendError(res, 400, f.error(), f.error_param());
    SendJson(res, json{{"content", tok.Decode(ids)}});
  });
  http_->Post("/v1/completions", [this](const httplib::Request& req, httplib::Response& res) {
    Generate(req, res, /*chat=*/false);
  });
  http_->Post("/v1/chat/completions", [this](const httplib::Request& req, httplib::Response& res) {
    Generate(req, res, /*chat=*/true);
  });
}

// One generation request: parse and check, submit to the scheduler, then either wait for the
// whole text or stream it as server-sent events from the response's content provider (which runs
// on this worker thread after the handler returns).
void HttpServer::Generate(const httplib::Request& req, httplib::Response& res, bool chat) {
  // Counts this request in flight until the last copy goes: at return, or for a stream when the
  // response (holding the content provider) is destroyed after the last write.
  ++in_flight_;
  std::shared_ptr<void> in_flight(nullptr, [this](void*) { --in_flight_; });
  engine::Scheduler* sch = scheduler_.load();
  engine::Session* ses = session_.load();
  if (sch == nullptr || ses == nullptr) {
    return SendError(res, 503, "the model is loading", nullptr, "loading");
  }
  CompletionRequest parsed;
  RequestError bad;
  if (!ParseCompletionRequest(req.body, chat, options_.chat_template, &parsed, &bad)) {
    return SendError(res, 400, bad.message, bad.param.empty() ? nullptr : bad.param.c_str(),
                     bad.param.empty() ? "invalid_json" : nullptr);
  }

  const engine::Tokenizer& tok = ses->tokenizer();
  engine::RequestSpec spec;
  spec.prompt = tok.Encode(parsed.text, tok.bos_id() >= 0, parsed.parse_special);
  if (spec.prompt.empty()) spec.prompt.push_back(tok.bos_id() >= 0 ? tok.bos_id() : 0);
  const uint64_t ctx = sch->context();
  if (spec.prompt.size() >= ctx) {
    return SendError(res, 400,
                     "the prompt is " + std::to_string(spec.prompt.size()) +
                         " tokens; the context holds " + std::to_string(ctx),
                     chat ? "messages" : "prompt", "context_length_exceeded");
  }
  const uint64_t room = ctx - spec.prompt.size();
  int64_t max_tokens = parsed.max_tokens;
  if (max_tokens < 0) max_tokens = chat ? static_cast<int64_t>(room) : std::min<int64_t>(16, room);
  if (static_cast<uint64_t>(max_tokens) > room) {
    return SendError(res, 400,
                     "max_tokens " + std::to_string(max_tokens) + " plus the prompt's " +
                         std::to_string(spec.prompt.size()) + " tokens exceed the context of " +
                         std::to_string(ctx),
                     "max_tokens", "context_length_exceeded");
  }
  spec.max_new_tokens = static_cast<uint32_t>(max_tokens);
  spec.stop_strings = std::move(parsed.stops);
  spec.ignore_eos = parsed.ignore_eos;
  spec.sampling = parsed.sampling;
  if (!parsed.seed_given) spec.sampling.seed = storage::NowNs();
  if (options_.timeout_s > 0) {
    spec.deadline_ns = storage::NowNs() + uint64_t{options_.timeout_s} * 1000000000ull;
  }
  auto submitted = sch->Submit(std::move(spec));
  if (!submitted.ok()) {
    const Status& st = submitted.status();
    if (st.code() == StatusCode::kResourceExhausted) {
      res.set_header("Retry-After", "1");
      return SendError(res, 429, std::string(st.message()), nullptr, "queue_full");
    }
    if (st.code() == StatusCode::kInvalidArgument) {
      return SendError(res, 400, std::string(st.message()));
    }
    return SendError(res, 503, std::string(st.message()), nullptr, "unavailable");
  }
  std::shared_ptr<engine::Request> request = std::move(*submitted);
  const std::string id = (chat ? "chatcmpl-" : "cmpl-") + std::to_string(next_id_++);
  const int64_t created = static_cast<int64_t>(std::time(nullptr));
  const std::string object = chat ? "chat.completion" : "text_completion";
  const std::string model = options_.model_name;
  auto usage = [](const engine::RequestResult& r) {
    return json{{"prompt_tokens", r.stats.prompt_tokens},
                {"completion_tokens", r.stats.generated_tokens},
                {"total_tokens", r.stats.prompt_tokens + r.stats.generated_tokens}};
  };
  auto record = [this](const engine::RequestResult& r) {
    if (r.stats.generated_tokens > 0) {
      metrics_.RecordGeneration(r.queue_ms + r.stats.ttft_ms, r.stats.token_ms);
    }
  };

  if (!parsed.stream) {
    std::string all, piece;
    while (!request->Wait(piece, kWaitSliceMs)) all += piece;
    all += piece;
    const engine::RequestResult r = request->result();
    record(r);
    if (!r.status.ok()) {
      return SendError(res, 500, "generation failed: " + r.status.ToString(), nullptr,
                       "engine_error");
    }
    if (r.finish_reason == "timeout") {
      return SendError(res, 504,
                       "the request ran past the server's timeout of " +
                           std::to_string(options_.timeout_s) + " s",
                       nullptr, "timeout");
    }
    json choice = {{"index", 0}, {"finish_reason", r.finish_reason}, {"logprobs", nullptr}};
    if (chat) {
      choice["message"] = {{"role", "assistant"}, {"content", all}};
    } else {
      choice["text"] = all;
    }
    return SendJson(res, json{{"id", id},
                              {"object", object},
                              {"created", created},
                              {"model", model},
                              {"choices", json::array({choice})},
                              {"usage", usage(r)},
                              {"timings", Timings(r)}});
  }

  // Streaming: one event per piece of text, a last one with finish_reason (and usage, timings),
  // then [DONE]. A failed write means the client went away: the request is cancelled.
  struct StreamState {
    bool sent_role = false, finished = false;
    std::string piece;
  };
  auto state = std::make_shared<StreamState>();
  const std::string chunk_object = chat ? "chat.completion.chunk" : "text_completion";
  auto chunk = [=](const std::string& content, const json& finish) {
    json choice = {{"index", 0}, {"finish_reason", finish}, {"logprobs", nullptr}};
    if (chat) {
      json delta = json::object();
      if (!state->sent_role) delta["role"] = "assistant";
      if (!content.empty() || !state->sent_role) delta["content"] = content;
      state->sent_role = true;
      choice["delta"] = delta;
    } else {
      choice["text"] = content;
    }
    return json{{"id", id},
                {"object", chunk_object},
                {"created", created},
                {"model", model},
                {"choices", json::array({choice})}};
  };
  res.set_header("Cache-Control", "no-cache");
  res.set_chunked_content_provider(
      "text/event-stream",
      [=](size_t, httplib::DataSink& sink) {
        auto send = [&](const std::string& data) {
          const std::string event = "data: " + data + "\n\n";
          return sink.write(event.data(), event.size());
        };
        if (state->finished) return false;
        const bool done = request->Wait(state->piece, kWaitSliceMs);
        if (!state->piece.empty() || (chat && !state->sent_role)) {
          if (!send(Dump(chunk(state->piece, nullptr)))) {
            request->Cancel();
            return false;
          }
        }
        if (!done) return true;
        state->finished = true;
        const engine::RequestResult r = request->result();
        record(r);
        if (!r.status.ok() || r.finish_reason == "timeout") {
          const bool timeout = r.status.ok();
          json e = {{"message", timeout ? std::string("the request ran past the server's timeout")
                                        : "generation failed: " + r.status.ToString()},
                    {"type", timeout ? "timeout_error" : "server_error"},
                    {"param", nullptr},
                    {"code", timeout ? "timeout" : "engine_error"}};
          send(Dump(json{{"error", e}}));
        } else {
          json last = chunk("", r.finish_reason);
          last["usage"] = usage(r);
          last["timings"] = Timings(r);
          send(Dump(last));
        }
        send("[DONE]");
        sink.done();
        return true;
      },
      [request, in_flight](bool) { request->Cancel(); });
}

}  // namespace flashlm::server
