// ModelConfig: the hyper-parameters of a LLaMA-family model, and Vocab: its tokenizer data,
// in one canonical form whatever the source checkpoint was. Plain values; thread-compatible.
#ifndef FLASHLM_LAYOUT_MODEL_CONFIG_H_
#define FLASHLM_LAYOUT_MODEL_CONFIG_H_

#include <cstdint>
#include <string>
#include <vector>

#include "storage/status.h"

namespace flashlm::layout {

enum class Activation : uint8_t { kSilu = 0, kRelu = 1 };  // FFN: act(gate(x)) * up(x)

enum class RopeScalingType : uint8_t { kNone = 0, kLinear = 1, kLlama3 = 2 };

struct RopeScaling {
  RopeScalingType type = RopeScalingType::kNone;
  float factor = 1.0f;
  float low_freq_factor = 1.0f;                 // llama3
  float high_freq_factor = 4.0f;                // llama3
  uint32_t original_max_position = 8192;        // llama3
};

struct ModelConfig {
  std::string architecture = "llama";
  uint32_t dim = 0;          // embedding width
  uint32_t hidden_dim = 0;   // FFN neurons per layer
  uint32_t n_layers = 0;
  uint32_t n_heads = 0;
  uint32_t n_kv_heads = 0;   // == n_heads without GQA
  uint32_t head_dim = 0;     // usually dim / n_heads
  uint32_t vocab_size = 0;
  uint32_t max_seq_len = 0;  // context length the model declares
  float rope_theta = 10000.0f;
  float norm_eps = 1e-5f;
  RopeScaling rope_scaling;
  Activation activation = Activation::kSilu;
  bool tied_embeddings = false;  // classifier reuses token_embd.weight

  // Checks the shape is one the engine runs: non-zero sizes (the context length too), heads
  // dividing evenly,
  // n_heads % n_kv_heads == 0, architecture "llama". Errors: InvalidArgument / NotSupported
  // naming the field.
  Status Validate() const;
};

// Tokenizer data. Token strings are in SentencePiece form whatever the source: a space is
// U+2581 ("▁"), byte tokens are "<0x0A>", BOS/EOS are "<s>"/"</s>" (llama2.c's "\n<s>\n" is
// normalised on import). For byte-level BPE (kind kGpt2Bpe) tokens are in GPT-2 byte-to-unicode
// form and `merges` holds "a b" pairs by rank.
struct Vocab {
  enum class Kind : uint8_t { kNone = 0, kSentencePiece = 1, kGpt2Bpe = 2 };
  // GGUF token types.
  enum TokenType : int32_t {
    kNormal = 1, kUnknown = 2, kControl = 3, kUserDefined = 4, kUnused = 5, kByte = 6
  };

  Kind kind = Kind::kNone;
  std::vector<std::string> tokens;
  std::vector<float> scores;       // same length as tokens (0 where the source has none)
  std::vector<int32_t> types;      // same length as tokens
  std::vector<std::string> merges; // kGpt2Bpe only
  int32_t bos_id = 1;
  int32_t eos_id = 2;
  int32_t unk_id = 0;
  int32_t pad_id = -1;
  bool add_bos = true;
  bool add_space_prefix = true;    // SentencePiece's leading-space rule

  bool empty() const { return tokens.empty(); }
};

}  // namespace flashlm::layout

#endif  // FLASHLM_LAYOUT_MODEL_CONFIG_H_
