// Fuzzes the parser of the server's completion and chat bodies (server/completion_request.h):
// any bytes, both routes, every chat template; it must refuse or accept without crashing,
// throwing or growing without bound, and what it accepts must be within its stated bounds.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "server/completion_request.h"
#include "storage/check.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view body(reinterpret_cast<const char*>(data), size);
  for (bool chat : {false, true}) {
    for (auto t : {flashlm::server::ChatTemplate::kPlain, flashlm::server::ChatTemplate::kChatml,
                   flashlm::server::ChatTemplate::kLlama2, flashlm::server::ChatTemplate::kLlama3}) {
      flashlm::server::CompletionRequest r;
      flashlm::server::RequestError e;
      if (flashlm::server::ParseCompletionRequest(body, chat, t, &r, &e)) {
        CHECK(r.stops.size() <= flashlm::server::kStopStringsMax + 1);
        CHECK(r.sampling.temperature >= 0 && r.sampling.top_p > 0 && r.sampling.top_p <= 1);
        CHECK(r.max_tokens == -1 || r.max_tokens >= 1);
      } else {
        CHECK(!e.message.empty());
      }
      if (!chat) break;  // the template only matters for chat
    }
  }
  return 0;
}
