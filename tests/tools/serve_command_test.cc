// `flashlm serve` end to end: the real binary on a free loopback port, driven by curl (and by
// cpp-httplib's client for the concurrent load), on the shared stories260K model. Greedy output
// over HTTP equals `flashlm generate`'s, streamed or not; bad requests get their 4xx with an
// OpenAI-style error object; 16 concurrent clients mixing good, malformed, oversized and
// disconnecting requests leave the server healthy; SIGTERM drains and exits 0.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "tests/test_util.h"
#include "tests/tools/run_flashlm.h"
#include "tests/tools/serve_process.h"

namespace flashlm::tools {
namespace {

using ::flashlm::testing::ServeProcess;
using nlohmann::json;

struct Model {
  std::string bin, tok;
};

// stories260K in llama2.c form (with its tokenizer), or empty when the shared models are absent.
#define REQUIRE_STORIES(m)                                               \
  FLASHLM_REQUIRE_SHARED_MODEL(bin_path, "stories260K/stories260K.bin"); \
  FLASHLM_REQUIRE_SHARED_MODEL(tok_path, "stories260K/tok512.bin");      \
  Model m { bin_path.string(), tok_path.string() }

std::string Quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

// `flashlm generate` greedy, its continuation without the final newline.
std::string Generate(const Model& m, const std::string& prompt, int n,
                     const std::string& extra = "") {
  auto r = ::flashlm::testing::RunFlashlm("generate " + m.bin + " --tokenizer " + m.tok +
                                          " --temp 0 --ctx 256 --threads 2 -n " +
                                          std::to_string(n) + " -p " + Quote(prompt) + " " + extra);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  if (!r.out.empty() && r.out.back() == '\n') r.out.pop_back();
  return r.out;
}

struct Reply {
  int status = 0;
  std::string body;
  json j;  // body parsed, when it is JSON
};

// curl METHOD URL with `body` (from a file, so that anything goes), -H headers.
Reply Curl(const std::string& url, const std::string& body = "", bool post = false,
           const std::string& headers = "") {
  static std::atomic<int> counter{0};
  const std::string file = std::string(FLASHLM_BINARY_DIR) + "/curl_body_" +
                           std::to_string(getpid()) + "_" + std::to_string(counter++);
  std::string cmd = "curl -s -S --max-time 60 -w '\\n%{http_code}' " + headers + " ";
  if (post) {
    std::ofstream(file, std::ios::binary) << body;
    cmd += "-H 'Content-Type: application/json' --data-binary @" + file + " ";
  }
  cmd += Quote(url);
  Reply r;
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return r;
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  pclose(p);
  std::remove(file.c_str());
  const size_t nl = out.rfind('\n');
  if (nl == std::string::npos) return r;
  r.status = std::atoi(out.c_str() + nl + 1);
  r.body = out.substr(0, nl);
  r.j = json::parse(r.body, nullptr, false);
  return r;
}

// The text of an SSE stream of completion (or chat) chunks; `done` says whether it ended with
// data: [DONE]; `last` is the last JSON chunk.
std::string StreamText(const std::string& sse, bool chat, bool* done, json* last) {
  std::string text;
  *done = false;
  std::istringstream in(sse);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("data: ", 0) != 0) continue;
    const std::string data = line.substr(6);
    if (data == "[DONE]") {
      *done = true;
      continue;
    }
    json j = json::parse(data, nullptr, false);
    if (j.is_discarded() || !j.contains("choices")) {
      *last = j;
      continue;
    }
    const json& c = j["choices"][0];
    if (chat) {
      if (c["delta"].contains("content")) text += c["delta"]["content"].get<std::string>();
    } else {
      text += c["text"].get<std::string>();
    }
    *last = j;
  }
  return text;
}

std::vector<std::string> ServeArgs(const Model& m, const std::vector<std::string>& more = {}) {
  std::vector<std::string> a = {"--tokenizer", m.tok, "--ctx", "256", "--threads", "2"};
  a.insert(a.end(), more.begin(), more.end());
  return a;
}

TEST(ServeCommandTest, GreedyOverHttpEqualsGenerateStreamedOrNot) {
  REQUIRE_STORIES(m);
  ::flashlm::testing::ScratchDir dir;
  ServeProcess server(m.bin, ServeArgs(m, {"--parallel", "4"}), (dir / "serve.log").string());
  ASSERT_GT(server.port(), 0) << server.Log();
  ASSERT_TRUE(server.WaitReady()) << server.Log();

  const std::string prompt = "Once upon a time";
  const std::string want = Generate(m, prompt, 40);
  ASSERT_FALSE(want.empty());
  json req = {{"model", "x"}, {"prompt", prompt}, {"max_tokens", 40}, {"temperature", 0}};
  Reply r = Curl(server.base() + "/v1/completions", req.dump(), true);
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.j["object"], "text_completion");
  EXPECT_EQ(r.j["choices"][0]["text"], want);
  EXPECT_EQ(r.j["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(r.j["usage"]["completion_tokens"], 40);
  EXPECT_EQ(r.j["usage"]["prompt_tokens"].get<int>() + 40, r.j["usage"]["total_tokens"]);
  EXPECT_EQ(r.j["timings"]["predicted_n"], 40);
  EXPECT_GT(r.j["timings"]["passes"].get<int>(), 0);

  req["stream"] = true;
  r = Curl(server.base() + "/v1/completions", req.dump(), true);
  ASSERT_EQ(r.status, 200) << r.body;
  bool done = false;
  json last;
  EXPECT_EQ(StreamText(r.body, false, &done, &last), want);
  EXPECT_TRUE(done) << r.body;
  EXPECT_EQ(last["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(last["usage"]["completion_tokens"], 40);
  EXPECT_TRUE(last.contains("timings"));

  // Chat through the default (plain) template, with its stop string, equals generate on the
  // formatted prompt.
  const std::string chat_want =
      Generate(m, "User: Tell me a story\nAssistant:", 30, "--stop " + Quote("\nUser:"));
  json chat = {{"model", "x"},
               {"messages", {{{"role", "user"}, {"content", "Tell me a story"}}}},
               {"max_tokens", 30},
               {"temperature", 0}};
  r = Curl(server.base() + "/v1/chat/completions", chat.dump(), true);
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.j["object"], "chat.completion");
  EXPECT_EQ(r.j["choices"][0]["message"]["role"], "assistant");
  EXPECT_EQ(r.j["choices"][0]["message"]["content"], chat_want);
  chat["stream"] = true;
  r = Curl(server.base() + "/v1/chat/completions", chat.dump(), true);
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(StreamText(r.body, true, &done, &last), chat_want);
  EXPECT_TRUE(done);
  EXPECT_EQ(last["object"], "chat.completion.chunk");

  // A stop string cuts the text where generate cuts it.
  const std::string stop_want = Generate(m, prompt, 60, "--stop .");
  json stop_req = {{"prompt", prompt}, {"max_tokens", 60}, {"temperature", 0}, {"stop", "."}};
  r = Curl(server.base() + "/v1/completions", stop_req.dump(), true);
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.j["choices"][0]["text"], stop_want);
  EXPECT_EQ(r.j["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(server.Stop(20), 0) << server.Log();
}

TEST(ServeCommandTest, EndpointsAndErrors) {
  REQUIRE_STORIES(m);
  ::flashlm::testing::ScratchDir dir;
  ServeProcess server(m.bin, ServeArgs(m, {"--max-body-kib", "16", "--alias", "stories"}),
                      (dir / "serve.log").string());
  ASSERT_TRUE(server.WaitReady()) << server.Log();
  const std::string b = server.base();
  Reply r = Curl(b + "/health");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.j["status"], "ok");
  r = Curl(b + "/v1/models");
  ASSERT_EQ(r.status, 200);
  EXPECT_EQ(r.j["data"][0]["id"], "stories");
  EXPECT_EQ(r.j["data"][0]["context_length"], 256);
  r = Curl(b + "/tokenize", R"({"content":"Once upon a time","add_special":true})", true);
  ASSERT_EQ(r.status, 200) << r.body;
  ASSERT_TRUE(r.j["tokens"].is_array());
  EXPECT_EQ(r.j["tokens"][0], 1);  // BOS
  json ids = r.j["tokens"];
  r = Curl(b + "/detokenize", json{{"tokens", ids}}.dump(), true);
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.j["content"], "Once upon a time");
  r = Curl(b + "/", "", false);
  EXPECT_EQ(r.status, 200);
  EXPECT_NE(r.body.find("/v1/chat/completions"), std::string::npos);

  // Every bad request: its status and an error object with a message.
  struct Bad {
    std::string path, body;
    int status;
    std::string param;
  };
  const std::string huge_prompt(3000, 'a');  // 3000 byte tokens against a context of 256
  const std::vector<Bad> bad = {
      {"/v1/completions", "{not json", 400, ""},
      {"/v1/completions", "[1,2]", 400, ""},
      {"/v1/completions", R"({"prompt":"x","max_tokens":"ten"})", 400, "max_tokens"},
      {"/v1/completions", R"({"prompt":"x","bogus":1})", 400, "bogus"},
      {"/v1/completions", R"({"prompt":7})", 400, "prompt"},
      {"/v1/completions", R"({"prompt":"x","n":2})", 400, "n"},
      {"/v1/completions", R"({"prompt":"x","temperature":-1})", 400, "temperature"},
      {"/v1/completions", R"({"prompt":"x","max_tokens":0})", 400, "max_tokens"},
      {"/v1/completions", R"({"prompt":"x","ignore_eos":"yes"})", 400, "ignore_eos"},
      {"/v1/completions", R"({"prompt":"x","max_tokens":100000})", 400, "max_tokens"},
      {"/v1/completions", json{{"prompt", huge_prompt}}.dump(), 400, "prompt"},
      {"/v1/completions", std::string(20000, ' '), 413, ""},
      {"/v1/chat/completions", R"({"messages":[]})", 400, "messages"},
      {"/v1/chat/completions", R"({"messages":[{"role":"robot","content":"x"}]})", 400, "messages"},
      {"/v1/chat/completions", R"({"messages":[{"role":"user"}]})", 400, "messages"},
      {"/tokenize", R"({"content":5})", 400, "content"},
      {"/detokenize", R"({"tokens":[1,99999]})", 400, "tokens"},
      {"/v1/nothing", "{}", 404, ""},
  };
  for (const Bad& x : bad) {
    r = Curl(b + x.path, x.body, true);
    EXPECT_EQ(r.status, x.status) << x.path << " " << x.body.substr(0, 80) << " -> " << r.body;
    ASSERT_TRUE(r.j.is_object()) << r.body;
    EXPECT_TRUE(r.j["error"]["message"].is_string()) << r.body;
    if (!x.param.empty()) {
      EXPECT_EQ(r.j["error"]["param"], x.param) << r.body;
    }
  }
  // ignore_eos (benchmarks): exactly max_tokens tokens, EOS or not.
  r = Curl(b + "/v1/completions", R"({"prompt":"The end.","max_tokens":240,"ignore_eos":true})",
           true);
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.j["usage"]["completion_tokens"], 240) << r.body;
  r = Curl(b + "/metrics");
  ASSERT_EQ(r.status, 200);
  for (const char* name :
       {"flashlm_http_requests_total{route=\"/v1/completions\",status=\"400\"}",
        "flashlm_time_to_first_token_seconds_bucket", "flashlm_time_per_token_seconds_bucket",
        "flashlm_queue_length", "flashlm_active_sequences", "flashlm_flash_bytes_read_total",
        "flashlm_flash_reads_total", "flashlm_flash_effective_mib_per_second",
        "flashlm_ffn_hit_rate", "flashlm_io_wait_seconds_total", "flashlm_compute_seconds_total",
        "flashlm_flash_source_bytes_read_total{source=\"ffn\"}",
        "flashlm_io_wait_source_seconds_total{source=\"attention\"}"}) {
    EXPECT_NE(r.body.find(name), std::string::npos) << name;
  }
  EXPECT_EQ(Curl(b + "/health").status, 200);
  EXPECT_EQ(server.Stop(20), 0) << server.Log();
}

TEST(ServeCommandTest, ApiKeyGuardsEverythingButHealth) {
  REQUIRE_STORIES(m);
  ::flashlm::testing::ScratchDir dir;
  ServeProcess server(m.bin, ServeArgs(m, {"--api-key", "s3cret"}), (dir / "serve.log").string());
  ASSERT_TRUE(server.WaitReady()) << server.Log();
  EXPECT_EQ(Curl(server.base() + "/health").status, 200);
  EXPECT_EQ(Curl(server.base() + "/").status, 200);  // the static page; its calls need the key
  EXPECT_EQ(Curl(server.base() + "/stats").status, 401);
  Reply r = Curl(server.base() + "/v1/models");
  EXPECT_EQ(r.status, 401);
  EXPECT_EQ(r.j["error"]["type"], "authentication_error");
  EXPECT_EQ(Curl(server.base() + "/metrics", "", false, "-H 'Authorization: Bearer nope'").status,
            401);
  EXPECT_EQ(
      Curl(server.base() + "/v1/models", "", false, "-H 'Authorization: Bearer s3cret'").status,
      200);
  r = Curl(server.base() + "/v1/completions", R"({"prompt":"x","max_tokens":2})", true,
           "-H 'Authorization: Bearer s3cret'");
  EXPECT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(server.Stop(20), 0);
}

// Opens a streaming request on a raw socket, reads the first bytes of the answer and closes the
// connection: the client going away mid-stream.
bool DisconnectMidStream(int port, const std::string& body) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return false;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bool ok = connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
  const std::string req =
      "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: "
      "application/json\r\nContent-Length: " +
      std::to_string(body.size()) + "\r\n\r\n" + body;
  ok = ok && send(fd, req.data(), req.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(req.size());
  char buf[512];
  ok = ok && recv(fd, buf, sizeof buf, 0) > 0;
  close(fd);
  return ok;
}

TEST(ServeCommandTest, ConcurrentMixedLoadLeavesTheServerHealthy) {
  REQUIRE_STORIES(m);
  ::flashlm::testing::ScratchDir dir;
  const std::vector<std::string> prompts = {"Once upon a time", "Lily and Tom", "The cat"};
  std::vector<std::string> want;
  for (const std::string& p : prompts) want.push_back(Generate(m, p, 12));
  ServeProcess server(m.bin,
                      ServeArgs(m, {"--parallel", "4", "--queue", "64", "--max-body-kib", "16"}),
                      (dir / "serve.log").string());
  ASSERT_TRUE(server.WaitReady()) << server.Log();
  constexpr int kClients = 16, kPerClient = 20;  // 320 requests
  std::atomic<int> good_ok{0}, bad_ok{0}, disconnects{0};
  std::vector<std::string> failures[kClients];
  std::vector<std::thread> clients;
  for (int c = 0; c < kClients; ++c) {
    clients.emplace_back([&, c] {
      httplib::Client cli("127.0.0.1", server.port());
      cli.set_read_timeout(120);
      for (int i = 0; i < kPerClient; ++i) {
        const int kind = (c + i) % 5;
        const size_t p = static_cast<size_t>(c * 7 + i) % prompts.size();
        if (kind <= 1) {  // good, streamed or not
          json req = {{"prompt", prompts[p]}, {"max_tokens", 12}, {"temperature", 0}};
          if (kind == 1) req["stream"] = true;
          auto res = cli.Post("/v1/completions", req.dump(), "application/json");
          if (!res || res->status != 200) {
            failures[c].push_back("good request: " +
                                  (res ? std::to_string(res->status) + " " + res->body
                                       : "no answer (" + httplib::to_string(res.error()) + ")"));
            continue;
          }
          std::string text;
          if (kind == 1) {
            bool done = false;
            json last;
            text = StreamText(res->body, false, &done, &last);
            if (!done) failures[c].push_back("stream without [DONE]");
          } else {
            json j = json::parse(res->body, nullptr, false);
            text = j.is_object() ? j["choices"][0]["text"].get<std::string>() : "";
          }
          if (text == want[p]) {
            ++good_ok;
          } else {
            failures[c].push_back("text '" + text + "' != '" + want[p] + "'");
          }
        } else if (kind == 2) {  // malformed
          auto res = cli.Post("/v1/completions", i % 2 ? "{\"prompt\":" : "{\"prompt\":1}",
                              "application/json");
          if (res && res->status == 400) {
            ++bad_ok;
          } else {
            failures[c].push_back("malformed: " +
                                  (res ? std::to_string(res->status)
                                       : "none (" + httplib::to_string(res.error()) + ")"));
          }
        } else if (kind == 3) {  // oversized: a prompt beyond the context, or a body beyond 16 KiB
          const std::string body =
              i % 2 ? json{{"prompt", std::string(2000, 'z')}}.dump() : std::string(40000, ' ');
          auto res = cli.Post("/v1/completions", body, "application/json");
          const int want_status = i % 2 ? 400 : 413;
          if (res && res->status == want_status) {
            ++bad_ok;
          } else {
            failures[c].push_back("oversized: " +
                                  (res ? std::to_string(res->status)
                                       : "none (" + httplib::to_string(res.error()) + ")"));
          }
        } else {  // disconnect mid-stream
          const json req = {{"prompt", prompts[p]}, {"max_tokens", 200}, {"stream", true}};
          if (DisconnectMidStream(server.port(), req.dump())) ++disconnects;
        }
      }
    });
  }
  for (std::thread& t : clients) t.join();
  for (int c = 0; c < kClients; ++c) {
    for (const std::string& f : failures[c]) ADD_FAILURE() << "client " << c << ": " << f;
  }
  EXPECT_EQ(good_ok.load(), kClients * kPerClient * 2 / 5);
  EXPECT_EQ(bad_ok.load(), kClients * kPerClient * 2 / 5);
  EXPECT_EQ(disconnects.load(), kClients * kPerClient / 5);
  ASSERT_TRUE(server.alive()) << server.Log();
  EXPECT_EQ(Curl(server.base() + "/health").status, 200);
  // Every disconnected stream ended (cancelled, or finished first); nothing is left running.
  const Reply metrics = Curl(server.base() + "/metrics");
  EXPECT_NE(metrics.body.find("flashlm_active_sequences 0\n"), std::string::npos) << metrics.body;
  EXPECT_NE(metrics.body.find("flashlm_queue_length 0\n"), std::string::npos);
  EXPECT_EQ(metrics.body.find("flashlm_generations_cancelled_total 0\n"), std::string::npos)
      << "no disconnected stream was cancelled";
  EXPECT_EQ(server.Stop(30), 0) << server.Log();
}

TEST(ServeCommandTest, FullQueueAnswers429AndSigtermDrains) {
  REQUIRE_STORIES(m);
  ::flashlm::testing::ScratchDir dir;
  ServeProcess server(m.bin, ServeArgs(m, {"--parallel", "1", "--queue", "1"}),
                      (dir / "serve.log").string());
  ASSERT_TRUE(server.WaitReady()) << server.Log();
  // Long generations, streamed, so the first holds the slot and the second waits in the queue.
  const json longreq = {
      {"prompt", "Once upon a time"}, {"max_tokens", 250}, {"stream", true}, {"temperature", 0}};
  std::atomic<int> first_status{0};
  std::string first_body;
  std::atomic<bool> first_started{false};
  std::thread first([&] {
    httplib::Client cli("127.0.0.1", server.port());
    cli.set_read_timeout(120);
    std::string body;
    httplib::Request req;
    req.method = "POST";
    req.path = "/v1/completions";
    req.body = longreq.dump();
    req.set_header("Content-Type", "application/json");
    req.content_receiver = [&](const char* data, size_t n, uint64_t, uint64_t) {
      body.append(data, n);
      first_started = true;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));  // a slow reader
      return true;
    };
    auto res = cli.send(req);
    first_status = res ? res->status : -1;
    first_body = body;
  });
  while (!first_started) std::this_thread::sleep_for(std::chrono::milliseconds(2));
  std::thread second([&] {
    httplib::Client cli("127.0.0.1", server.port());
    cli.set_read_timeout(120);
    cli.Post("/v1/completions", json{{"prompt", "A"}, {"max_tokens", 250}}.dump(),
             "application/json");
  });
  // With one slot and a queue of one, requests arriving while the slot is busy and the queue
  // holds one are refused with 429. A stories260K generation takes milliseconds, so instead of
  // timing one request against another (racy on a quiet machine) bursts of twelve concurrent
  // requests are sent: every answer is 200 or 429, a 429 says queue_full, and some burst (at
  // most 20) has a request refused.
  int refused = 0;
  for (int burst = 0; burst < 20 && refused == 0; ++burst) {
    constexpr int kClients = 12;
    std::vector<std::thread> clients;
    std::vector<int> status(kClients, 0);
    std::vector<std::string> bodies(kClients);
    for (int c = 0; c < kClients; ++c) {
      clients.emplace_back([&, c] {
        httplib::Client cli("127.0.0.1", server.port());
        cli.set_read_timeout(120);
        auto res = cli.Post("/v1/completions",
                            json{{"prompt", "B"}, {"max_tokens", 100}, {"ignore_eos", true}}.dump(),
                            "application/json");
        status[c] = res ? res->status : -1;
        if (res) bodies[c] = res->body;
      });
    }
    for (std::thread& c : clients) c.join();
    for (int c = 0; c < kClients; ++c) {
      EXPECT_TRUE(status[c] == 200 || status[c] == 429) << status[c] << " " << bodies[c];
      if (status[c] != 429) continue;
      ++refused;
      EXPECT_EQ(json::parse(bodies[c], nullptr, false)["error"]["code"], "queue_full")
          << bodies[c];
    }
  }
  EXPECT_GT(refused, 0) << "no request was refused with 429";
  // SIGTERM while the first still streams: it finishes whole, then the process exits 0.
  kill(server.pid(), SIGTERM);
  first.join();
  second.join();
  EXPECT_EQ(server.Wait(60), 0) << server.Log();
  EXPECT_EQ(first_status.load(), 200);
  bool done = false;
  json last;
  StreamText(first_body, false, &done, &last);
  EXPECT_TRUE(done) << first_body.substr(0, 200);
  EXPECT_TRUE(last.contains("choices")) << last.dump();
  EXPECT_NE(server.Log().find("drained"), std::string::npos) << server.Log();
}

// stories260K repacked (q8_0) into dir/store, and the smallest budget serve accepts for it with
// `args` (it names the minimum when refusing a budget of 1 byte). Empty on failure (reported).
struct SmallStore {
  std::string path, budget;
};
SmallStore RepackAtMinimum(const std::filesystem::path& gguf,
                           const ::flashlm::testing::ScratchDir& dir, const std::string& args) {
  const std::string store = (dir / "store").string();
  auto rp = ::flashlm::testing::RunFlashlm("repack " + gguf.string() + " " + store +
                                           " --dtype q8_0 --no-progress");
  EXPECT_EQ(rp.exit_code, 0) << rp.err;
  auto refused =
      ::flashlm::testing::RunFlashlm("serve " + store + " --port 0 --mem-budget 1 " + args);
  EXPECT_NE(refused.exit_code, 0);
  std::smatch m;
  if (rp.exit_code != 0 ||
      !std::regex_search(refused.err, m, std::regex("minimum of ([0-9]+) bytes"))) {
    ADD_FAILURE() << refused.err;
    return {};
  }
  return {store, m[1].str()};
}

TEST(ServeCommandTest, EngineErrorFailsTheRequestWith500AndTheServerKeepsServing) {
  FLASHLM_REQUIRE_SHARED_MODEL(gguf, "stories260K-gguf/stories260K.gguf");
  ::flashlm::testing::ScratchDir dir;
  // The smallest budget streams every FFN bundle on every pass.
  const SmallStore small = RepackAtMinimum(gguf, dir, "--ctx 64 --parallel 2");
  ASSERT_FALSE(small.path.empty());
  const std::string store = small.path;
  // Damage one FFN bundle (each is one extent at a 4 KiB stride; norms sit between layers):
  // flip the first byte of a block in the middle of the data file, and keep it if verify names
  // a bundle, else flip it back and try the next block.
  const std::filesystem::path data = std::filesystem::path(store) / "data-00000.bin";
  const uint64_t size = std::filesystem::file_size(data);
  bool damaged = false;
  for (uint64_t off = size / 2 / 4096 * 4096; off < size && !damaged; off += 4096) {
    ::flashlm::testing::FlipByte(data, off);
    auto v = ::flashlm::testing::RunFlashlm("verify " + store);
    damaged = v.all().find("bundle") != std::string::npos;
    if (!damaged) ::flashlm::testing::FlipByte(data, off);
  }
  ASSERT_TRUE(damaged);
  ServeProcess server(
      store, {"--ctx", "64", "--parallel", "2", "--threads", "2", "--mem-budget", small.budget},
      (dir / "serve.log").string());
  ASSERT_TRUE(server.WaitReady()) << server.Log();
  for (int i = 0; i < 2; ++i) {
    Reply r = Curl(server.base() + "/v1/completions", R"({"prompt":"Once","max_tokens":5})", true);
    EXPECT_EQ(r.status, 500) << r.body;
    EXPECT_EQ(r.j["error"]["code"], "engine_error") << r.body;
    EXPECT_NE(r.body.find("Corruption"), std::string::npos) << r.body;
    EXPECT_EQ(Curl(server.base() + "/health").status, 200);
  }
  const Reply metrics = Curl(server.base() + "/metrics");
  EXPECT_NE(metrics.body.find("flashlm_generations_failed_total 2\n"), std::string::npos)
      << metrics.body;
  EXPECT_EQ(server.Stop(20), 0) << server.Log();
}

// LazyLLM pruning under several sequences (--lazy-prefill 0.3, --parallel 3): each sequence is
// ranked by its own last token and prunes and revives only its own positions, so every answer
// equals `flashlm generate --lazy-prefill 0.3` of its prompt alone (each prompt fits one pass in
// both), for three different prompts asked twice each by concurrent clients (slots reused); the
// pruning shows in /stats, with the aux cache sized for the three sequences.
TEST(ServeCommandTest, LazyPrefillPrunesEachSequenceLikeGenerate) {
  REQUIRE_STORIES(m);
  ::flashlm::testing::ScratchDir dir;
  const std::string lazy = "--lazy-prefill 0.3 --max-batch 512 --ctx 512";
  const std::string story =
      "Once upon a time, there was a little girl named Lily. She loved to play outside in the "
      "park with her dog Max. One day, Lily saw a big red ball under a tree. ";
  const std::vector<std::string> prompts = {
      story + story + "She ran to get it, but",
      "Tom had a small boat. He took it to the lake every day with his dad. " + story,
      story + "The bird dropped the ball and Lily laughed. Then"};
  std::vector<std::string> want;
  for (const std::string& p : prompts) {
    auto r =
        ::flashlm::testing::RunFlashlm("generate " + m.bin + " --tokenizer " + m.tok +
                                       " --temp 0 --threads 2 -n 48 " + lazy + " -p " + Quote(p));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    ASSERT_NE(r.err.find("lazy:"), std::string::npos) << r.err;
    if (!r.out.empty() && r.out.back() == '\n') r.out.pop_back();
    want.push_back(r.out);
  }
  ServeProcess server(m.bin,
                      {"--tokenizer", m.tok, "--threads", "2", "--parallel", "3", "--lazy-prefill",
                       "0.3", "--max-batch", "512", "--ctx", "512"},
                      (dir / "serve.log").string());
  ASSERT_TRUE(server.WaitReady()) << server.Log();
  constexpr int kClients = 6;
  std::atomic<int> right{0};
  std::vector<std::thread> clients;
  for (int c = 0; c < kClients; ++c) {
    clients.emplace_back([&, c] {
      httplib::Client cli("127.0.0.1", server.port());
      cli.set_read_timeout(300);
      const std::string& p = prompts[c % prompts.size()];
      json req = {{"prompt", p}, {"max_tokens", 48}, {"temperature", 0}};
      auto res = cli.Post("/v1/completions", req.dump(), "application/json");
      if (!res || res->status != 200) return;
      json j = json::parse(res->body, nullptr, false);
      if (!j.is_object()) return;
      const std::string text = j["choices"][0]["text"].get<std::string>();
      if (text == want[c % prompts.size()]) ++right;
    });
  }
  for (std::thread& t : clients) t.join();
  EXPECT_EQ(right.load(), kClients) << server.Log();
  const Reply stats = Curl(server.base() + "/stats");
  ASSERT_EQ(stats.status, 200) << stats.body;
  ASSERT_TRUE(stats.j.contains("lazy_pruned")) << stats.body;
  EXPECT_GT(stats.j["lazy_pruned"].get<uint64_t>(), 0u) << stats.body;
  EXPECT_GT(stats.j["lazy_revived"].get<uint64_t>(), 0u) << stats.body;
  EXPECT_EQ(stats.j["lazy_aux_capacity_bytes"].get<uint64_t>(),
            3u * (512u * (64u * 4u + 4u) + 4u))  // 3 x (512 x (dim f32 + count) + end)
      << stats.body;
  EXPECT_EQ(server.Stop(30), 0) << server.Log();
}

// The paged KV cache (--kv-* flags, as generate takes them) under several sequences: with V
// pages spilled to --kv-dir and read back, f32 rows, every answer equals generate's with the flat
// cache (exact), slots reused by later requests included; the spill shows in /stats and the
// folder is empty once the server is gone.
TEST(ServeCommandTest, PagedKvCacheSpilledAcrossSequencesMatchesGenerate) {
  FLASHLM_REQUIRE_SHARED_MODEL(gguf, "stories260K-gguf/stories260K.gguf");
  ::flashlm::testing::ScratchDir dir;
  const std::string spill = (dir / "spill").string();
  std::filesystem::create_directories(spill);
  auto gen = ::flashlm::testing::RunFlashlm("generate " + gguf.string() +
                                            " --ctx 256 --threads 2 --temp 0 -n 200"
                                            " -p 'Once upon a time'");
  ASSERT_EQ(gen.exit_code, 0) << gen.err;
  std::string want = gen.out;
  if (!want.empty() && want.back() == '\n') want.pop_back();
  // 4 sequences of 256 positions, 5 layers, 32-token pages of 4 KiB: K alone is 160 pages
  // (640 KiB); 900 KiB leaves V most of what it needs only by spilling.
  ServeProcess server(gguf.string(),
                      {"--ctx", "256", "--threads", "2", "--parallel", "4", "--kv-page-tokens",
                       "32", "--kv-budget", "900K", "--kv-dir", spill},
                      (dir / "serve.log").string());
  ASSERT_TRUE(server.WaitReady()) << server.Log();
  constexpr int kClients = 8;
  std::atomic<int> right{0};
  std::vector<std::thread> clients;
  for (int c = 0; c < kClients; ++c) {
    clients.emplace_back([&, c] {
      httplib::Client cli("127.0.0.1", server.port());
      cli.set_read_timeout(300);
      json req = {{"prompt", "Once upon a time"}, {"max_tokens", 200}, {"temperature", 0}};
      if (c % 2) req["stream"] = true;
      auto res = cli.Post("/v1/completions", req.dump(), "application/json");
      if (!res || res->status != 200) return;
      std::string text;
      if (c % 2) {
        bool done = false;
        json last;
        text = StreamText(res->body, false, &done, &last);
      } else {
        json j = json::parse(res->body, nullptr, false);
        if (j.is_object()) text = j["choices"][0]["text"].get<std::string>();
      }
      if (text == want) ++right;
    });
  }
  for (std::thread& t : clients) t.join();
  EXPECT_EQ(right.load(), kClients) << server.Log();
  const Reply stats = Curl(server.base() + "/stats");
  ASSERT_EQ(stats.status, 200) << stats.body;
  EXPECT_GT(stats.j["kv_bytes_written"].get<uint64_t>(), 0u) << stats.body;
  EXPECT_GT(stats.j["kv_bytes_read"].get<uint64_t>(), 0u) << stats.body;
  EXPECT_GT(stats.j["pass_sequences"].get<double>(), 1.5 * stats.j["passes"].get<double>())
      << stats.body;
  EXPECT_EQ(server.Stop(30), 0) << server.Log();
  EXPECT_TRUE(std::filesystem::is_empty(spill));
}

// Out of core: a store at its smallest budget (every FFN bundle and attention layer streamed on
// every pass). 16 concurrent clients; greedy text equals generate's on the same store and
// budget; decode steps carry several sequences; /stats splits the reads by source; peak RSS
// stays within the plan plus the serve process's overhead (binary, libraries, HTTP threads;
// measured at about 11 MiB, stated as 24).
TEST(ServeCommandTest, OutOfCoreUnderLoadMatchesGenerateWithinTheBudget) {
  FLASHLM_REQUIRE_SHARED_MODEL(gguf, "stories260K-gguf/stories260K.gguf");
  ::flashlm::testing::ScratchDir dir;
  const std::string common = " --ctx 128 --threads 2 ";
  const SmallStore small = RepackAtMinimum(gguf, dir, common + "--parallel 4");
  ASSERT_FALSE(small.path.empty());
  const std::string store = small.path, budget = small.budget;
  auto gen = ::flashlm::testing::RunFlashlm("generate " + store + common + "--mem-budget " +
                                            budget + " --temp 0 -n 40 -p 'Once upon a time'");
  ASSERT_EQ(gen.exit_code, 0) << gen.err;
  std::string want = gen.out;
  if (!want.empty() && want.back() == '\n') want.pop_back();
  ServeProcess server(store,
                      {"--ctx", "128", "--threads", "2", "--parallel", "4", "--mem-budget", budget},
                      (dir / "serve.log").string());
  ASSERT_TRUE(server.WaitReady()) << server.Log();
  constexpr int kClients = 16, kPerClient = 4;
  std::atomic<int> right{0};
  std::vector<std::thread> clients;
  for (int c = 0; c < kClients; ++c) {
    clients.emplace_back([&, c] {
      httplib::Client cli("127.0.0.1", server.port());
      cli.set_read_timeout(300);
      for (int i = 0; i < kPerClient; ++i) {
        json req = {{"prompt", "Once upon a time"}, {"max_tokens", 40}, {"temperature", 0}};
        if ((c + i) % 2) req["stream"] = true;
        auto res = cli.Post("/v1/completions", req.dump(), "application/json");
        if (!res || res->status != 200) continue;
        std::string text;
        if ((c + i) % 2) {
          bool done = false;
          json last;
          text = StreamText(res->body, false, &done, &last);
        } else {
          json j = json::parse(res->body, nullptr, false);
          if (j.is_object()) text = j["choices"][0]["text"].get<std::string>();
        }
        if (text == want) ++right;
      }
    });
  }
  for (std::thread& t : clients) t.join();
  EXPECT_EQ(right.load(), kClients * kPerClient);
  const Reply metrics = Curl(server.base() + "/metrics");
  auto value = [&](const std::string& name) {
    std::smatch v;
    std::regex re("\n" + name + " ([0-9.e+]+)\n");
    return std::regex_search(metrics.body, v, re) ? std::stod(v[1].str()) : -1.0;
  };
  const double passes = value("flashlm_forward_passes_total");
  const double sequences = value("flashlm_pass_sequences_total");
  EXPECT_GT(passes, 0);
  EXPECT_GT(sequences, 1.5 * passes) << "decode steps did not batch sequences";
  EXPECT_GT(value("flashlm_flash_bytes_read_total"), 0);
  const double planned = value("flashlm_planned_bytes");
  EXPECT_LE(planned, std::stod(budget));
  // /stats splits the reads by what they were for, as generate's --stats-json does: every
  // source named, their bytes and reads adding up to the totals, the streamed FFN and attention
  // layers among them.
  const Reply stats = Curl(server.base() + "/stats");
  ASSERT_EQ(stats.status, 200) << stats.body;
  ASSERT_TRUE(stats.j["by_source"].is_object()) << stats.body;
  uint64_t source_bytes = 0, source_reads = 0;
  for (const char* source : {"other", "attention", "ffn", "classifier", "embedding"}) {
    const json& c = stats.j["by_source"][source];
    ASSERT_TRUE(c.is_object()) << source << ": " << stats.body;
    source_bytes += c["bytes_read"].get<uint64_t>();
    source_reads += c["reads"].get<uint64_t>();
    EXPECT_GE(c["wait_ms"].get<double>(), 0.0) << source;
  }
  EXPECT_EQ(source_bytes, stats.j["bytes_read"].get<uint64_t>()) << stats.body;
  EXPECT_EQ(source_reads, stats.j["reads"].get<uint64_t>()) << stats.body;
  EXPECT_GT(stats.j["by_source"]["ffn"]["bytes_read"].get<uint64_t>(), 0u) << stats.body;
  EXPECT_GT(stats.j["by_source"]["attention"]["bytes_read"].get<uint64_t>(), 0u) << stats.body;
#if defined(__SANITIZE_ADDRESS__)
  // Under AddressSanitizer the resident set is the sanitizer's (shadow memory): not checked.
  std::printf("peak RSS not checked under AddressSanitizer\n");
#else
  std::ifstream status("/proc/" + std::to_string(server.pid()) + "/status");
  std::string line;
  uint64_t hwm_kib = 0;
  while (std::getline(status, line)) {
    if (line.rfind("VmHWM:", 0) == 0) hwm_kib = std::stoull(line.substr(6));
  }
  ASSERT_GT(hwm_kib, 0u);
  EXPECT_LE(static_cast<double>(hwm_kib) * 1024, planned + 24.0 * 1024 * 1024)
      << "peak RSS " << hwm_kib << " KiB, planned " << planned << " bytes";
#endif
  EXPECT_EQ(server.Stop(30), 0) << server.Log();
}

}  // namespace
}  // namespace flashlm::tools
