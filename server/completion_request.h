// CompletionRequest: the body of POST /v1/completions or /v1/chat/completions, parsed and
// checked against the OpenAI shapes (and flashlm's few extensions) before anything reaches the
// engine. Every field has a type and a range; unknown fields, wrong types, values out of range and
// unsupported options are refused with a message and the name of the field at fault (the HTTP
// layer answers 400 with it). Sizes are bounded: at most kStopStringsMax stop strings of
// kStopStringBytesMax bytes, kMessagesMax messages; the body itself is bounded by the server.
// Pure functions; thread-safe; never throws (also fuzzed: fuzz/fuzz_completion_request.cc).
#ifndef FLASHLM_SERVER_COMPLETION_REQUEST_H_
#define FLASHLM_SERVER_COMPLETION_REQUEST_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "engine/sampler.h"
#include "server/chat_template.h"

namespace flashlm::server {

inline constexpr size_t kStopStringsMax = 16;
inline constexpr size_t kStopStringBytesMax = 256;
inline constexpr size_t kMessagesMax = 1024;

struct CompletionRequest {
  std::string text;                 // the prompt to encode (chat: formatted by the template)
  bool parse_special = false;       // encode the template's control tokens as such
  int64_t max_tokens = -1;          // -1: not given
  std::vector<std::string> stops;   // the request's, then the template's
  engine::SamplerOptions sampling;  // temperature 1, top_p 1, top_k 0 unless given
  bool seed_given = false;          // else the caller picks a seed
  bool stream = false, include_usage = false, ignore_eos = false;
};

// Why a body was refused: a message, and the field at fault ("" when it is the body itself).
struct RequestError {
  std::string message, param;
};

// Parses `body` for the completions (chat = false) or chat route. Returns false and fills
// `error` when it is refused.
bool ParseCompletionRequest(std::string_view body, bool chat, ChatTemplate chat_template,
                            CompletionRequest* out, RequestError* error);

}  // namespace flashlm::server

#endif  // FLASHLM_SERVER_COMPLETION_REQUEST_H_
