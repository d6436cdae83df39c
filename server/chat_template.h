// Chat templates: turning OpenAI `messages` into one prompt string, by template family name.
//
// Stores and checkpoints do not carry a Jinja chat template through flashlm's catalog, so the
// family is chosen by name (`flashlm serve --chat-template NAME`):
//   plain   (the default) — an optional system message as its own paragraph, then one line per
//           message, "User: ..." / "Assistant: ...", and "Assistant:" to prompt the reply;
//           stop string "\nUser:". Any model can continue it; none was trained on it.
//   chatml  — <|im_start|>ROLE\nCONTENT<|im_end|>\n ... <|im_start|>assistant\n; stop <|im_end|>.
//   llama2  — [INST] <<SYS>>\nSYSTEM\n<</SYS>>\n\nUSER [/INST] ASSISTANT </s><s>[INST] ...
//   llama3  — <|start_header_id|>ROLE<|end_header_id|>\n\nCONTENT<|eot_id|> ... then the
//             assistant header; stop <|eot_id|>.
// Control tokens in the templates are parsed as special tokens when the prompt is encoded.
// Stateless; thread-safe.
#ifndef FLASHLM_SERVER_CHAT_TEMPLATE_H_
#define FLASHLM_SERVER_CHAT_TEMPLATE_H_

#include <string>
#include <string_view>
#include <vector>

#include "storage/status.h"

namespace flashlm::server {

struct ChatMessage {
  std::string role;  // "system", "user" or "assistant"
  std::string content;
};

enum class ChatTemplate { kPlain, kChatml, kLlama2, kLlama3 };

// Errors: InvalidArgument naming the families known.
Result<ChatTemplate> ParseChatTemplate(std::string_view name);
std::string_view ChatTemplateName(ChatTemplate t);

struct ChatPrompt {
  std::string text;                // to encode (with the model's BOS, special tokens parsed)
  std::vector<std::string> stops;  // the template's end-of-turn markers
};
// Errors: InvalidArgument (no messages, a role the template does not know).
Result<ChatPrompt> FormatChat(ChatTemplate t, const std::vector<ChatMessage>& messages);

}  // namespace flashlm::server

#endif  // FLASHLM_SERVER_CHAT_TEMPLATE_H_
