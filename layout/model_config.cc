#include "layout/model_config.h"

#include <string>

namespace flashlm::layout {

Status ModelConfig::Validate() const {
  if (architecture != "llama") {
    return NotSupportedError("architecture '" + architecture +
                             "' is not supported (only LLaMA-family models)");
  }
  auto nonzero = [](uint32_t v, const char* name) -> Status {
    if (v == 0) return InvalidArgumentError(std::string("model config: ") + name + " is 0");
    return Status::Ok();
  };
  RETURN_IF_ERROR(nonzero(dim, "dim"));
  RETURN_IF_ERROR(nonzero(hidden_dim, "hidden_dim"));
  RETURN_IF_ERROR(nonzero(n_layers, "n_layers"));
  RETURN_IF_ERROR(nonzero(n_heads, "n_heads"));
  RETURN_IF_ERROR(nonzero(n_kv_heads, "n_kv_heads"));
  RETURN_IF_ERROR(nonzero(head_dim, "head_dim"));
  RETURN_IF_ERROR(nonzero(vocab_size, "vocab_size"));
  RETURN_IF_ERROR(nonzero(max_seq_len, "max_seq_len (the context length)"));
  if (n_kv_heads > n_heads || n_heads % n_kv_heads != 0) {
    return InvalidArgumentError("model config: n_heads " + std::to_string(n_heads) +
                                " is not a multiple of n_kv_heads " + std::to_string(n_kv_heads));
  }
  if (head_dim % 2 != 0) {
    return InvalidArgumentError("model config: head_dim " + std::to_string(head_dim) +
                                " is odd (RoPE rotates pairs)");
  }
  if (static_cast<uint64_t>(n_heads) * head_dim > (1u << 20) || dim > (1u << 20) ||
      hidden_dim > (1u << 22) || n_layers > 4096 || vocab_size > (1u << 24)) {
    return InvalidArgumentError("model config: implausibly large dimensions");
  }
  if (!(norm_eps > 0.0f) || !(norm_eps < 1.0f)) {
    return InvalidArgumentError("model config: norm_eps out of range");
  }
  if (!(rope_theta > 0.0f)) return InvalidArgumentError("model config: rope_theta must be > 0");
  if (activation != Activation::kSilu && activation != Activation::kRelu) {
    return InvalidArgumentError("model config: unknown activation");
  }
  return Status::Ok();
}

}  // namespace flashlm::layout
