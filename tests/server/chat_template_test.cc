// Chat templates: each family's exact text and end-of-turn stops; bad roles and names refused.
#include "server/chat_template.h"

#include <gtest/gtest.h>

namespace flashlm::server {
namespace {

const std::vector<ChatMessage> kConversation = {
    {"system", "Be brief."}, {"user", "Hi"}, {"assistant", "Hello."}, {"user", "A story?"}};

TEST(ChatTemplateTest, PlainIsTheDocumentedDefault) {
  auto p = FormatChat(ChatTemplate::kPlain, kConversation);
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->text, "Be brief.\n\nUser: Hi\nAssistant: Hello.\nUser: A story?\nAssistant:");
  EXPECT_EQ(p->stops, std::vector<std::string>{"\nUser:"});
}

TEST(ChatTemplateTest, Chatml) {
  auto p = FormatChat(ChatTemplate::kChatml, kConversation);
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->text,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
            "<|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>user\nA story?<|im_end|>\n"
            "<|im_start|>assistant\n");
  EXPECT_EQ(p->stops, std::vector<std::string>{"<|im_end|>"});
}

TEST(ChatTemplateTest, Llama2FoldsTheSystemIntoTheFirstTurn) {
  auto p = FormatChat(ChatTemplate::kLlama2, kConversation);
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->text,
            "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Hello. </s><s>[INST] A story? "
            "[/INST]");
}

TEST(ChatTemplateTest, Llama3) {
  auto p = FormatChat(ChatTemplate::kLlama3, {{"user", "Hi"}});
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->text,
            "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n");
  EXPECT_EQ(p->stops, std::vector<std::string>{"<|eot_id|>"});
}

TEST(ChatTemplateTest, BadInputIsRefused) {
  EXPECT_EQ(FormatChat(ChatTemplate::kPlain, {}).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(FormatChat(ChatTemplate::kChatml, {{"tool", "x"}}).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseChatTemplate("jinja").status().code(), StatusCode::kInvalidArgument);
  for (const char* name : {"plain", "chatml", "llama2", "llama3"}) {
    auto t = ParseChatTemplate(name);
    ASSERT_TRUE(t.ok());
    EXPECT_EQ(ChatTemplateName(*t), name);
  }
}

}  // namespace
}  // namespace flashlm::server
