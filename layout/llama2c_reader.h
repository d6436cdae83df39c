// llama2.c checkpoints (karpathy/llama2.c run.c / export.py), float32 only:
//  - legacy: 7 x int32 header {dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size,
//    seq_len}; a negative vocab_size means a separate classifier follows. Weights in run.c order:
//    token_embd, rms_att[L], wq[L], wk[L], wv[L], wo[L], rms_ffn[L], w1[L], w2[L], w3[L],
//    rms_final, freq_cis_real/imag (skipped), [wcls].
//  - version 1: u32 magic 0x616b3432 ("ak42"), i32 version 1, the 7 int32s, u8 shared_classifier,
//    zero padding to 256 bytes. Weights: rms_att[L], rms_ffn[L], rms_final, token_embd, wq[L],
//    wk[L], wv[L], wo[L], w1[L], w2[L], w3[L], [wcls].
// The file size must match the header exactly. Defaults: norm_eps 1e-5, rope_theta 10000,
// head_dim = dim / n_heads. The Checkpoint owns its sources and is not thread-safe.
#ifndef FLASHLM_LAYOUT_LLAMA2C_READER_H_
#define FLASHLM_LAYOUT_LLAMA2C_READER_H_

#include <memory>
#include <string>

#include "layout/byte_source.h"
#include "layout/checkpoint.h"

namespace flashlm::layout {

inline constexpr uint32_t kLlama2cMagic = 0x616b3432;

// True when the first bytes look like a llama2.c version-1 header.
bool LooksLikeLlama2cV1(ConstByteSpan head);

// Opens a llama2.c checkpoint; `tokenizer` (may be null) is a llama2.c tokenizer.bin.
// Errors: Corruption (bad header values, size mismatch, bad tokenizer), NotSupported (version 2
// int8 files).
Result<std::unique_ptr<Checkpoint>> OpenLlama2c(std::unique_ptr<ByteSource> model,
                                                std::unique_ptr<ByteSource> tokenizer);

// Parses a llama2.c tokenizer.bin holding `vocab_size` tokens (0: every token to the end of the
// file) ({i32 max_len} then per token {f32 score, i32 len, bytes}) and normalises the strings to
// SentencePiece form: "\n<s>\n" -> "<s>", ' ' -> U+2581; BOS 1, EOS 2, unk 0.
// Errors: Corruption naming the bad token (or fewer than 3 tokens).
Result<Vocab> ParseLlama2cTokenizer(ByteSource& src, uint32_t vocab_size);
// The same, from the file at `path`. Errors: NotFound, IoError, Corruption.
Result<Vocab> ReadLlama2cTokenizer(const std::string& path, uint32_t vocab_size = 0);

}  // namespace flashlm::layout

#endif  // FLASHLM_LAYOUT_LLAMA2C_READER_H_
