// Shared set-up for the engine subcommands (generate, tokenize, perplexity): open a checkpoint or
// store, load its weights into DRAM, build its tokenizer, start the thread pool.
#ifndef FLASHLM_TOOLS_ENGINE_SESSION_H_
#define FLASHLM_TOOLS_ENGINE_SESSION_H_

#include <memory>
#include <string>

#include "engine/thread_pool.h"
#include "engine/tokenizer.h"
#include "engine/transformer.h"
#include "engine/streaming_weights.h"
#include "engine/weights.h"
#include "layout/checkpoint.h"
#include "storage/status.h"

namespace flashlm::tools {

struct EngineSession {
  std::unique_ptr<layout::Checkpoint> checkpoint;
  std::unique_ptr<engine::DramWeightStore> weights;
  std::unique_ptr<engine::Tokenizer> tokenizer;
  std::unique_ptr<engine::ThreadPool> pool;
  // Set instead of `weights` by OpenStreamingSession (tools/streaming_session.h).
  std::unique_ptr<engine::StreamingWeightStore> streaming;
  std::unique_ptr<engine::Transformer> model;
};

// Opens `path` (store folder, GGUF, HF folder, llama2.c .bin; `tokenizer_path` for a separate
// llama2.c tokenizer.bin), loads the weights and creates the model with `options`.
// Errors: the checkpoint's (NotFound, Corruption, NotSupported), InvalidArgument when the model
// carries no tokenizer or the context is out of range.
Result<EngineSession> OpenEngineSession(const std::string& path, const std::string& tokenizer_path,
                                        uint32_t threads,
                                        const engine::TransformerOptions& options);

// Tokenizer alone from a store, a checkpoint (vocab-only GGUFs included) or a llama2.c
// tokenizer.bin. Errors: NotFound, Corruption, InvalidArgument (no tokenizer inside).
Result<std::unique_ptr<engine::Tokenizer>> OpenTokenizer(const std::string& path);

}  // namespace flashlm::tools

#endif  // FLASHLM_TOOLS_ENGINE_SESSION_H_
