// flashlm serve STORE [--host H] [--port P] [--parallel N] [--ctx N] [--api-key KEY]
// [--timeout S] [session flags]: the OpenAI-compatible HTTP daemon (server/http_server.h) over a
// continuous-batching scheduler (engine/scheduler.h). The port is bound first and /health
// answers 503 while the model loads. SIGTERM or SIGINT drains: no new requests, in-flight ones
// finish, exit 0.
#include <pthread.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <mutex>
#include <string>
#include <thread>

#include "engine/scheduler.h"
#include "engine/session.h"
#include "server/chat_template.h"
#include "server/http_server.h"
#include "tools/cli_util.h"
#include "tools/commands.h"
#include "tools/session_flags.h"

namespace flashlm::tools {

namespace {
struct ServeFlags {
  std::string path, host = "127.0.0.1", api_key, alias, chat_template = "plain";
  int64_t port = 8080, parallel = 4, ctx = 0, timeout_s = 600, queue = 64, max_body_kib = 1024;
  int64_t http_threads = 0;
  SessionFlags session;
};
}  // namespace

CommandRunner RegisterServe(CLI::App& app) {
  CLI::App* cmd = app.add_subcommand("serve", "Serve a model over an OpenAI-compatible HTTP API");
  auto f = std::make_shared<ServeFlags>();
  cmd->add_option("store", f->path, "Store folder or checkpoint (GGUF, HF folder, llama2.c .bin)")
      ->required();
  cmd->add_option("--host", f->host, "Address to listen on (default loopback)");
  cmd->add_option("--port", f->port, "Port (0: any free port, printed on stderr)");
  cmd->add_option("--parallel", f->parallel, "Sequences decoded together (slots)");
  cmd->add_option("--ctx", f->ctx, "Context per sequence (default: the model's, at most 4096)");
  cmd->add_option("--api-key", f->api_key, "Require Authorization: Bearer KEY (not on /health)");
  cmd->add_option("--timeout", f->timeout_s, "Per-request timeout in seconds (0: none)");
  cmd->add_option("--queue", f->queue, "Requests that may wait for a slot (then 429)");
  cmd->add_option("--max-body-kib", f->max_body_kib, "Largest request body in KiB (then 413)");
  cmd->add_option("--http-threads", f->http_threads,
                  "HTTP worker threads (default: parallel + queue + 8)");
  cmd->add_option("--alias", f->alias, "Model name in /v1/models (default: the path's name)");
  cmd->add_option("--chat-template", f->chat_template, "plain (default), chatml, llama2, llama3");
  AddSessionFlags(cmd, &f->session);
  return [cmd, f] {
    if (!cmd->parsed()) return -1;
    auto usage = [](const std::string& msg) {
      return ReportError("serve", InvalidArgumentError(msg));
    };
    if (f->port < 0 || f->port > 65535) return usage("--port must be in [0, 65535]");
    if (f->parallel < 1 || f->parallel > 256) return usage("--parallel must be in [1, 256]");
    if (f->ctx < 0 || f->ctx > engine::kContextMax) return usage("--ctx out of range");
    if (f->timeout_s < 0 || f->timeout_s > 86400) return usage("--timeout must be in [0, 86400]");
    if (f->queue < 1 || f->queue > 4096) return usage("--queue must be in [1, 4096]");
    if (f->max_body_kib < 1 || f->max_body_kib > (1 << 20))
      return usage("--max-body-kib out of range");
    if (f->http_threads < 0 || f->http_threads > 4096) return usage("--http-threads out of range");
    auto tmpl = server::ParseChatTemplate(f->chat_template);
    if (!tmpl.ok()) return ReportError("serve", tmpl.status());
    engine::SessionOptions options;
    if (Status st = ApplySessionFlags(f->session, &options); !st.ok()) {
      return ReportError("serve", st);
    }
    options.transformer.max_context = static_cast<uint32_t>(f->ctx);
    options.transformer.max_sequences = static_cast<uint32_t>(f->parallel);

    // Signals go to a thread of their own (sigwait), never to a handler: every thread started
    // from here on inherits the blocked mask. SIGPIPE: a client that went away is a failed write.
    std::signal(SIGPIPE, SIG_IGN);
    sigset_t signals;
    sigemptyset(&signals);
    sigaddset(&signals, SIGTERM);
    sigaddset(&signals, SIGINT);
    pthread_sigmask(SIG_BLOCK, &signals, nullptr);

    server::ServerOptions so;
    so.host = f->host;
    so.port = static_cast<int>(f->port);
    so.api_key = f->api_key;
    so.model_name = !f->alias.empty()
                        ? f->alias
                        : std::filesystem::path(f->path).lexically_normal().filename().string();
    if (so.model_name.empty()) so.model_name = "flashlm";
    so.max_body_bytes = static_cast<uint64_t>(f->max_body_kib) * 1024;
    so.timeout_s = static_cast<uint32_t>(f->timeout_s);
    so.http_threads =
        static_cast<uint32_t>(f->http_threads > 0 ? f->http_threads : f->parallel + f->queue + 8);
    so.chat_template = *tmpl;
    auto http = server::HttpServer::Create(so);
    if (!http.ok()) return ReportError("serve", http.status());
    std::fprintf(stderr, "serve: listening on http://%s:%d (loading %s)\n", so.host.c_str(),
                 (*http)->port(), f->path.c_str());
    std::fflush(stderr);

    std::thread loop([&] {
      if (Status st = (*http)->Serve(); !st.ok()) {
        std::fprintf(stderr, "serve: %s\n", st.ToString().c_str());
      }
    });
    // The engine thread opens the session and runs the scheduler on it: a store's io_uring rings
    // belong to the thread that made them. A failed load raises SIGTERM to end the wait below.
    Status load_status;
    std::unique_ptr<engine::Scheduler> scheduler;
    std::mutex scheduler_mu;
    bool stop_requested = false;  // under scheduler_mu
    std::thread engine_thread([&] {
      auto session = engine::Session::Open(f->path, options);
      if (!session.ok()) {
        load_status = session.status();
        kill(getpid(), SIGTERM);
        return;
      }
      if (f->session.budgeted()) std::fputs((*session)->Describe().c_str(), stderr);
      engine::SchedulerOptions sched_options;
      sched_options.slots = static_cast<uint32_t>(f->parallel);
      sched_options.queue_max = static_cast<uint32_t>(f->queue);
      auto created = engine::Scheduler::Create(**session, sched_options);
      if (!created.ok()) {
        load_status = created.status();
        kill(getpid(), SIGTERM);
        return;
      }
      {
        std::lock_guard<std::mutex> lock(scheduler_mu);
        if (stop_requested) return;  // a signal came during the load
        scheduler = std::move(*created);
      }
      (*http)->Ready(**session, *scheduler);
      std::fprintf(stderr, "serve: ready (%lld slots, context %u)\n",
                   static_cast<long long>(f->parallel), scheduler->context());
      std::fflush(stderr);
      scheduler->Run();  // until Stop, after the drain
      std::lock_guard<std::mutex> lock(scheduler_mu);
      scheduler.reset();  // before the session it runs on
    });
    int sig = 0;
    sigwait(&signals, &sig);
    if (load_status.ok()) std::fprintf(stderr, "serve: signal %d, draining\n", sig);
    (*http)->Drain();  // no new requests; returns once the generations in flight are answered
    loop.join();
    {
      std::lock_guard<std::mutex> lock(scheduler_mu);
      stop_requested = true;
      if (scheduler) scheduler->Stop();
    }
    engine_thread.join();
    if (!load_status.ok()) return ReportError("serve", load_status);
    std::fprintf(stderr, "serve: drained, exiting\n");
    return kExitOk;
  };
}

}  // namespace flashlm::tools
