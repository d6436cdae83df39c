#include "tools/engine_session.h"

#include <filesystem>

#include "layout/byte_source.h"
#include "layout/gguf_reader.h"

namespace flashlm::tools {

Result<EngineSession> OpenEngineSession(const std::string& path, const std::string& tokenizer_path,
                                        uint32_t threads,
                                        const engine::TransformerOptions& options) {
  EngineSession s;
  layout::OpenOptions open;
  open.tokenizer_path = tokenizer_path;
  Result<std::unique_ptr<layout::Checkpoint>> ck = layout::OpenCheckpoint(path, open);
  bool separate_tokenizer = false;
  if (!ck.ok() && !tokenizer_path.empty()) {
    // Readers other than llama2.c's take only tokenizer.model / tokenizer.json; a llama2.c
    // tokenizer.bin for such a checkpoint is read here instead.
    Result<std::unique_ptr<layout::Checkpoint>> plain = layout::OpenCheckpoint(path);
    if (!plain.ok()) return ck.status();
    ck = std::move(plain);
    separate_tokenizer = true;
  }
  if (!ck.ok()) return ck.status();
  s.checkpoint = std::move(ck).value();
  if (separate_tokenizer || (s.checkpoint->vocab().empty() && !tokenizer_path.empty())) {
    ASSIGN_OR_RETURN(layout::Vocab vocab, engine::Tokenizer::ReadLlama2cVocab(
                                              tokenizer_path, s.checkpoint->config().vocab_size));
    ASSIGN_OR_RETURN(s.tokenizer, engine::Tokenizer::Create(vocab));
  } else if (s.checkpoint->vocab().empty()) {
    return InvalidArgumentError(path + " carries no tokenizer (pass --tokenizer tokenizer.bin)");
  } else {
    ASSIGN_OR_RETURN(s.tokenizer, engine::Tokenizer::Create(s.checkpoint->vocab()));
  }
  ASSIGN_OR_RETURN(s.weights, engine::DramWeightStore::Load(*s.checkpoint));
  s.pool = std::make_unique<engine::ThreadPool>(threads);
  ASSIGN_OR_RETURN(s.model, engine::Transformer::Create(*s.weights, *s.pool, options));
  return s;
}

Result<std::unique_ptr<engine::Tokenizer>> OpenTokenizer(const std::string& path) {
  if (!std::filesystem::exists(path)) return NotFoundError(path + ": no such file or folder");
  Result<std::unique_ptr<layout::Checkpoint>> ck = layout::OpenCheckpoint(path);
  if (ck.ok()) {
    if ((*ck)->vocab().empty()) return InvalidArgumentError(path + " carries no tokenizer");
    return engine::Tokenizer::Create((*ck)->vocab());
  }
  // Not a runnable checkpoint: a vocab-only GGUF (header and metadata, no tensors)?
  if (Result<std::unique_ptr<layout::ByteSource>> src = layout::OpenFileSource(path); src.ok()) {
    Result<layout::GgufFile> gguf = layout::GgufFile::Parse(**src);
    if (gguf.ok()) {
      ASSIGN_OR_RETURN(layout::Vocab vocab, layout::GgufVocab(*gguf));
      return engine::Tokenizer::Create(vocab);
    }
  }
  // Or a bare llama2.c tokenizer.bin.
  Result<layout::Vocab> vocab = engine::Tokenizer::ReadLlama2cVocab(path);
  if (!vocab.ok()) {
    return ck.status().WithContext("not a checkpoint, and not a llama2.c tokenizer (" +
                                   vocab.status().ToString() + ")");
  }
  return engine::Tokenizer::Create(*vocab);
}

}  // namespace flashlm::tools
