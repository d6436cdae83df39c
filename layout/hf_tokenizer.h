// Tokenizer files that come with Hugging Face checkpoints, read into a Vocab (see
// layout/model_config.h for the canonical form):
//  - tokenizer.model: a SentencePiece ModelProto, read with a minimal protobuf wire-format
//    parser (pieces {piece, score, type}, trainer_spec {unk,bos,eos,pad ids},
//    normalizer_spec {add_dummy_prefix}); other fields are skipped.
//  - tokenizer.json: a `tokenizers` BPE model. Byte-level BPE (a ByteLevel pre-tokenizer) gives
//    kind kGpt2Bpe with merges; otherwise SentencePiece-style BPE (byte_fallback, "▁" spaces)
//    gives kind kSentencePiece with score = -id for ordinary tokens (tokenizer.json has no
//    scores; the id order is the merge order). Added tokens become control (special) or
//    user-defined tokens.
// Stateless, thread-safe.
#ifndef FLASHLM_LAYOUT_HF_TOKENIZER_H_
#define FLASHLM_LAYOUT_HF_TOKENIZER_H_

#include "layout/byte_source.h"
#include "layout/model_config.h"

namespace flashlm::layout {

// Errors: Corruption naming what is malformed (truncated varint, length past the end, ...).
Result<Vocab> ParseSentencePieceModel(ByteSource& src);

// Errors: Corruption (bad JSON, ids out of range or repeated), NotSupported (a model type other
// than BPE, named).
Result<Vocab> ParseTokenizerJson(ByteSource& src);

}  // namespace flashlm::layout

#endif  // FLASHLM_LAYOUT_HF_TOKENIZER_H_
