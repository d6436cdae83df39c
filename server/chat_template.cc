#include "server/chat_template.h"

namespace flashlm::server {

Result<ChatTemplate> ParseChatTemplate(std::string_view name) {
  if (name == "plain") return ChatTemplate::kPlain;
  if (name == "chatml") return ChatTemplate::kChatml;
  if (name == "llama2") return ChatTemplate::kLlama2;
  if (name == "llama3") return ChatTemplate::kLlama3;
  return InvalidArgumentError("unknown chat template '" + std::string(name) +
                              "' (known: plain, chatml, llama2, llama3)");
}

std::string_view ChatTemplateName(ChatTemplate t) {
  switch (t) {
    case ChatTemplate::kPlain:
      return "plain";
    case ChatTemplate::kChatml:
      return "chatml";
    case ChatTemplate::kLlama2:
      return "llama2";
    case ChatTemplate::kLlama3:
      return "llama3";
  }
  return "plain";
}

Result<ChatPrompt> FormatChat(ChatTemplate t, const std::vector<ChatMessage>& messages) {
  if (messages.empty()) return InvalidArgumentError("'messages' must not be empty");
  for (const ChatMessage& m : messages) {
    if (m.role != "system" && m.role != "user" && m.role != "assistant") {
      return InvalidArgumentError("message role must be system, user or assistant, not '" + m.role +
                                  "'");
    }
  }
  ChatPrompt p;
  switch (t) {
    case ChatTemplate::kPlain:
      for (const ChatMessage& m : messages) {
        if (m.role == "system") {
          p.text += m.content + "\n\n";
        } else {
          p.text += (m.role == "user" ? "User: " : "Assistant: ") + m.content + "\n";
        }
      }
      p.text += "Assistant:";
      p.stops = {"\nUser:"};
      break;
    case ChatTemplate::kChatml:
      for (const ChatMessage& m : messages) {
        p.text += "<|im_start|>" + m.role + "\n" + m.content + "<|im_end|>\n";
      }
      p.text += "<|im_start|>assistant\n";
      p.stops = {"<|im_end|>"};
      break;
    case ChatTemplate::kLlama2: {
      // A system message folds into the first user turn; assistant turns close with </s><s>.
      std::string system;
      bool open = false;  // an [INST] block awaits its answer
      for (const ChatMessage& m : messages) {
        if (m.role == "system") {
          system += m.content;
        } else if (m.role == "user") {
          if (open) p.text += " [/INST]";
          p.text += "[INST] ";
          if (!system.empty()) {
            p.text += "<<SYS>>\n" + system + "\n<</SYS>>\n\n";
            system.clear();
          }
          p.text += m.content;
          open = true;
        } else {
          p.text += (open ? " [/INST] " : "") + m.content + " </s><s>";
          open = false;
        }
      }
      if (open) p.text += " [/INST]";
      p.stops = {"</s>"};
      break;
    }
    case ChatTemplate::kLlama3:
      for (const ChatMessage& m : messages) {
        p.text +=
            "<|start_header_id|>" + m.role + "<|end_header_id|>\n\n" + m.content + "<|eot_id|>";
      }
      p.text += "<|start_header_id|>assistant<|end_header_id|>\n\n";
      p.stops = {"<|eot_id|>"};
      break;
  }
  return p;
}

}  // namespace flashlm::server
