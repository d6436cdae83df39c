#include "server/completion_request.h"

#include <cstdio>
#include <nlohmann/json.hpp>

#include "server/json_fields.h"

namespace flashlm::server {
namespace {
using nlohmann::json;
}  // namespace

bool ParseCompletionRequest(std::string_view text_body, bool chat, ChatTemplate chat_template,
                            CompletionRequest* out, RequestError* error) {
  const json body = json::parse(text_body, nullptr, /*allow_exceptions=*/false);
  if (body.is_discarded() || !body.is_object()) {
    *error = {body.is_discarded() ? "the body is not valid JSON" : "the body must be a JSON object",
              ""};
    return false;
  }
  Fields f(body);
  if (chat) {
    f.Known({"model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p",
             "seed", "stop", "stream", "stream_options", "n", "user", "top_k", "min_p",
             "repeat_penalty", "presence_penalty", "frequency_penalty", "logprobs", "ignore_eos"});
  } else {
    f.Known({"model",
             "prompt",
             "max_tokens",
             "temperature",
             "top_p",
             "seed",
             "stop",
             "stream",
             "stream_options",
             "n",
             "user",
             "echo",
             "top_k",
             "min_p",
             "repeat_penalty",
             "presence_penalty",
             "frequency_penalty",
             "logprobs",
             "best_of",
             "suffix",
             "ignore_eos"});
  }
  std::string model_name;
  f.String("model", &model_name);
  double temperature = 1.0, top_p = 1.0, min_p = 0.0, repeat_penalty = 1.0;
  double presence = 0.0, frequency = 0.0;
  int64_t max_tokens = -1, seed = -1, n = 1, top_k = 0, best_of = 1;
  bool stream = false, echo = false, include_usage = false, ignore_eos = false;
  std::vector<std::string> stops;
  f.Number("temperature", 0.0, 2.0, &temperature);
  f.Number("top_p", 0.0, 1.0, &top_p);
  f.Number("min_p", 0.0, 0.999999, &min_p);
  f.Number("repeat_penalty", 0.01, 100.0, &repeat_penalty);
  // Accepted at their neutral value only (flashlm's sampler has no presence/frequency penalty).
  f.Number("presence_penalty", 0.0, 0.0, &presence);
  f.Number("frequency_penalty", 0.0, 0.0, &frequency);
  f.Integer("max_tokens", 1, INT32_MAX, &max_tokens);
  if (chat) f.Integer("max_completion_tokens", 1, INT32_MAX, &max_tokens);
  f.Integer("seed", INT64_MIN, INT64_MAX, &seed);
  f.Integer("n", 1, 1, &n);
  f.Integer("best_of", 1, 1, &best_of);
  f.Integer("top_k", 0, INT32_MAX, &top_k);
  f.Bool("stream", &stream);
  f.Bool("echo", &echo);
  f.Bool("ignore_eos", &ignore_eos);
  if (echo) f.Fail("echo", "'echo' is not supported");
  if (f.ok() && f.Has("logprobs") &&
      !(body["logprobs"].is_boolean() && !body["logprobs"].get<bool>())) {
    f.Fail("logprobs", "'logprobs' is not supported");
  }
  if (f.ok() && f.Has("suffix")) f.Fail("suffix", "'suffix' is not supported");
  if (f.ok() && f.Has("stream_options")) {
    const json& so = body["stream_options"];
    if (!so.is_object()) {
      f.Fail("stream_options", "'stream_options' must be an object");
    } else {
      Fields g(so);
      g.Known({"include_usage"});
      g.Bool("include_usage", &include_usage);
      if (!g.ok()) f.Fail("stream_options", g.error());
    }
  }
  f.Stops("stop", kStopStringsMax, kStopStringBytesMax, &stops);
  if (f.ok() && top_p <= 0.0) f.Fail("top_p", "'top_p' must be in (0, 1]");
  // The prompt.
  std::string text;
  bool parse_special = false;
  if (f.ok() && chat) {
    std::vector<ChatMessage> messages;
    if (!f.Has("messages") || !body["messages"].is_array() || body["messages"].empty() ||
        body["messages"].size() > kMessagesMax) {
      f.Fail("messages", "'messages' must be a non-empty array of at most " +
                             std::to_string(kMessagesMax) + " messages");
    } else {
      for (const json& m : body["messages"]) {
        if (!m.is_object()) {
          f.Fail("messages", "each message must be an object");
          break;
        }
        Fields mf(m);
        mf.Known({"role", "content", "name"});
        ChatMessage cm;
        if (!mf.Has("role") || !mf.Has("content"))
          mf.Fail("messages", "a message needs role and content");
        mf.String("role", &cm.role);
        mf.String("content", &cm.content);
        if (!mf.ok()) {
          f.Fail("messages", mf.error());
          break;
        }
        messages.push_back(std::move(cm));
      }
    }
    if (f.ok()) {
      auto formatted = FormatChat(chat_template, messages);
      if (!formatted.ok()) {
        f.Fail("messages", std::string(formatted.status().message()));
      } else {
        text = std::move(formatted->text);
        parse_special = chat_template != ChatTemplate::kPlain;
        for (std::string& s : formatted->stops) stops.push_back(std::move(s));
      }
    }
  } else if (f.ok()) {
    const json* p = f.Has("prompt") ? &body["prompt"] : nullptr;
    if (p && p->is_array() && p->size() == 1 && (*p)[0].is_string()) p = &(*p)[0];
    if (p == nullptr || !p->is_string()) {
      f.Fail("prompt", "'prompt' must be a string (or an array of one string)");
    } else {
      text = p->get<std::string>();
    }
  }
  if (!f.ok()) {
    *error = {f.error(), f.error_param()};
    return false;
  }
  *out = CompletionRequest();
  out->text = std::move(text);
  out->parse_special = parse_special;
  out->max_tokens = max_tokens;
  out->stops = std::move(stops);
  out->sampling.temperature = static_cast<float>(temperature);
  out->sampling.top_p = static_cast<float>(top_p);
  out->sampling.top_k = static_cast<uint32_t>(top_k);
  out->sampling.min_p = static_cast<float>(min_p);
  out->sampling.repeat_penalty = static_cast<float>(repeat_penalty);
  out->seed_given = seed >= 0;
  out->sampling.seed = seed >= 0 ? static_cast<uint64_t>(seed) : 0;
  out->stream = stream;
  out->include_usage = include_usage;
  out->ignore_eos = ignore_eos;
  return true;
}

}  // namespace flashlm::server
