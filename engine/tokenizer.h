// Tokenizer: text <-> token ids for a layout::Vocab.
//
// Kinds:
//  - SentencePiece-style BPE from scores (llama2.c tokenizer.bin, GGUF "llama" vocab): the text
//    gets a leading space (add_space_prefix), spaces become U+2581, then the adjacent pair whose
//    concatenation is a token with the highest score is merged (ties: leftmost) until no pair
//    merges; a piece that is no token falls back to its bytes (<0xXX> tokens).
//  - Byte-level BPE with merges (GGUF "gpt2" vocab): bytes map to GPT-2's printable code points,
//    the text is pre-split GPT-2 style (contractions, letters, digits, other, whitespace; code
//    points above ASCII count as letters), and merges apply by rank.
// Control and user-defined tokens written literally in the text are recognised when
// `parse_special` is set. Immutable after Create; thread-safe for concurrent const use.
#ifndef FLASHLM_ENGINE_TOKENIZER_H_
#define FLASHLM_ENGINE_TOKENIZER_H_

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "layout/model_config.h"
#include "storage/status.h"

namespace flashlm::engine {

class Tokenizer {
 public:
  // Errors: InvalidArgument for an empty vocab, mismatched scores/types lengths, or a kind the
  // tokenizer does not handle.
  static Result<std::unique_ptr<Tokenizer>> Create(const layout::Vocab& vocab);

  // Token ids of `text`, with BOS first when add_bos. Allocates (not on the per-token path).
  std::vector<int32_t> Encode(std::string_view text, bool add_bos,
                              bool parse_special = false) const;

  // Appends the bytes token `id` stands for to `out` (control tokens add nothing; a leading space
  // is dropped right after BOS, as SentencePiece does). `out` should have capacity reserved.
  void AppendPiece(int32_t id, int32_t previous_id, std::string& out) const;
  // Bytes of a whole sequence (convenience for tests and tools).
  std::string Decode(const std::vector<int32_t>& ids) const;

  int32_t bos_id() const { return vocab_.bos_id; }
  int32_t eos_id() const { return vocab_.eos_id; }
  bool add_bos() const { return vocab_.add_bos; }
  uint32_t size() const { return static_cast<uint32_t>(vocab_.tokens.size()); }
  bool IsControl(int32_t id) const;
  // DRAM the tokenizer holds, estimated from its tables (strings, hash nodes and buckets), for
  // budgets.
  uint64_t resident_bytes() const;

 private:
  explicit Tokenizer(const layout::Vocab& vocab) : vocab_(vocab) {}
  void EncodeSentencePiece(std::string_view text, bool first_fragment,
                           std::vector<int32_t>& out) const;
  void EncodeGpt2(std::string_view text, std::vector<int32_t>& out) const;
  void BytesFallback(std::string_view piece, std::vector<int32_t>& out) const;
  int32_t Find(std::string_view s) const;

  layout::Vocab vocab_;
  std::unordered_map<std::string, int32_t> ids_;
  std::array<int32_t, 256> byte_ids_{};  // SentencePiece <0xXX> token per byte, or -1
  std::vector<int32_t> specials_;        // control / user-defined ids, longest first
  std::unordered_map<std::string, int32_t> merge_ranks_;   // "a b" -> rank (gpt2)
  std::array<std::string, 256> byte_to_unicode_;           // gpt2 byte -> UTF-8 of its code point
  std::unordered_map<uint32_t, uint8_t> unicode_to_byte_;  // gpt2 code point -> byte
};

// Streams decoded bytes as text, holding back a trailing partial UTF-8 sequence until it
// completes (or proves invalid, then it passes through as-is).
class Utf8Stream {
 public:
  Utf8Stream() {
    pending_.reserve(64);
    ready_.reserve(256);
  }
  // Appends `bytes` and returns the part now safe to print; the view lives until the next call.
  std::string_view Push(std::string_view bytes);
  // Returns whatever is held back (at the end of generation).
  std::string_view Flush();

 private:
  std::string pending_;
  std::string ready_;
};

}  // namespace flashlm::engine

#endif  // FLASHLM_ENGINE_TOKENIZER_H_
