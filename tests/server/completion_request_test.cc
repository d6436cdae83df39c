// CompletionRequest: defaults, every field mapped, chat formatting, and refusals naming the field.
#include "server/completion_request.h"

#include <gtest/gtest.h>

namespace flashlm::server {
namespace {

TEST(CompletionRequestTest, DefaultsAndFields) {
  CompletionRequest r;
  RequestError e;
  ASSERT_TRUE(ParseCompletionRequest(R"({"prompt":"Hi"})", false, ChatTemplate::kPlain, &r, &e))
      << e.message;
  EXPECT_EQ(r.text, "Hi");
  EXPECT_EQ(r.max_tokens, -1);
  EXPECT_FLOAT_EQ(r.sampling.temperature, 1.0f);
  EXPECT_EQ(r.sampling.top_k, 0u);
  EXPECT_FALSE(r.seed_given);
  EXPECT_FALSE(r.stream);
  ASSERT_TRUE(ParseCompletionRequest(
      R"({"model":"m","prompt":["Hi"],"max_tokens":7,"temperature":0,"top_p":0.5,"seed":3,
          "stop":["a","b"],"stream":true,"stream_options":{"include_usage":true},"n":1,
          "top_k":5,"min_p":0.1,"repeat_penalty":1.1,"ignore_eos":true,"logprobs":false})",
      false, ChatTemplate::kPlain, &r, &e))
      << e.message;
  EXPECT_EQ(r.max_tokens, 7);
  EXPECT_FLOAT_EQ(r.sampling.temperature, 0.0f);
  EXPECT_FLOAT_EQ(r.sampling.top_p, 0.5f);
  EXPECT_EQ(r.sampling.seed, 3u);
  EXPECT_TRUE(r.seed_given);
  EXPECT_EQ(r.stops, (std::vector<std::string>{"a", "b"}));
  EXPECT_TRUE(r.stream && r.include_usage && r.ignore_eos);
  EXPECT_EQ(r.sampling.top_k, 5u);
}

TEST(CompletionRequestTest, ChatUsesTheTemplateAndItsStops) {
  CompletionRequest r;
  RequestError e;
  ASSERT_TRUE(ParseCompletionRequest(
      R"({"messages":[{"role":"user","content":"Hi"}],"stop":"x","max_completion_tokens":3})",
      true, ChatTemplate::kChatml, &r, &e))
      << e.message;
  EXPECT_EQ(r.text, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
  EXPECT_TRUE(r.parse_special);
  EXPECT_EQ(r.stops, (std::vector<std::string>{"x", "<|im_end|>"}));
  EXPECT_EQ(r.max_tokens, 3);
}

TEST(CompletionRequestTest, RefusalsNameTheField) {
  const std::vector<std::pair<std::string, std::string>> completions = {
      {"{", ""},
      {"[]", ""},
      {R"({"prompt":"x","max_tokens":-1})", "max_tokens"},
      {R"({"prompt":"x","max_tokens":18446744073709551615})", "max_tokens"},
      {R"({"prompt":"x","seed":18446744073709551615})", "seed"},
      {R"({"prompt":"x","top_p":0})", "top_p"},
      {R"({"prompt":"x","stop":[1]})", "stop"},
      {R"({"prompt":"x","stop":["1","2","3","4","5","6","7","8","9","0","1","2","3","4","5","6","7"]})",
       "stop"},
      {R"({"prompt":"x","stream_options":{"x":1}})", "stream_options"},
      {R"({"prompt":"x","echo":true})", "echo"},
      {R"({"prompt":"x","logprobs":3})", "logprobs"},
      {R"({"prompt":"x","presence_penalty":0.5})", "presence_penalty"},
      {R"({"prompt":["a","b"]})", "prompt"},
      {R"({"messages":[]})", "messages"},
  };
  for (const auto& [body, param] : completions) {
    CompletionRequest r;
    RequestError e;
    EXPECT_FALSE(ParseCompletionRequest(body, false, ChatTemplate::kPlain, &r, &e)) << body;
    EXPECT_EQ(e.param, param) << body;
    EXPECT_FALSE(e.message.empty()) << body;
  }
  CompletionRequest r;
  RequestError e;
  EXPECT_FALSE(ParseCompletionRequest(R"({"messages":[{"role":"user","content":["x"]}]})", true,
                                      ChatTemplate::kPlain, &r, &e));
  EXPECT_EQ(e.param, "messages");
  EXPECT_FALSE(ParseCompletionRequest(R"({"messages":[{"role":"user","content":"x"}],"echo":1})",
                                      true, ChatTemplate::kPlain, &r, &e));
  EXPECT_EQ(e.param, "echo");
}

}  // namespace
}  // namespace flashlm::server
