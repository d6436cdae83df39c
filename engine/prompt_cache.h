// Prompt cache (`--prompt-cache FILE`, as llama.cpp's): the K/V rows a prompt left in a KvCache,
// saved to a file, and restored into the cache when a later prompt starts with the same tokens,
// so that only the new suffix is run through the model.
//
// File (docs/format.md "Prompt cache"), little-endian: a 64-byte header (magic "FLMPRMPT",
// version, KV dtype, the store's identity — layout::StoreReader::identity() — and the model's
// shape: layers, heads, KV heads, head_dim, dim, vocab; the token count n and the compressed
// payload's size), the n token ids (int32), the payload as one zstd frame — per layer, the K rows
// then the V rows of positions [0, n), each exactly as the cache stores it (KvCache::dtype()) —
// and last the XXH3-64 of every byte before it. Saved with storage::WriteFileAtomically (a
// temporary file renamed over the path: never half written).
//
// A cache is used only when it is whole and made for this store, shape and KV dtype: Load checks
// the size, magic and version, then the checksum (a damaged or truncated file is Corruption),
// then the identity, shape and dtype (FailedPrecondition naming what differs), then the declared
// sizes against the file's own size and the context (n <= max_positions; the payload must
// decompress to exactly n x layers x 2 rows). The file is read with a bound computed from the
// running model and context, never from the file, so a hostile header cannot make Load allocate
// beyond the KV cache's own size. Restored rows are the saved bytes, so a restored prefix gives
// exactly the rows recomputing it would (f32, f16 and q8_0 alike): the output is bit-identical.
// Not for the per-token path: Load and Save allocate (the payload, its compressed copy).
#ifndef FLASHLM_ENGINE_PROMPT_CACHE_H_
#define FLASHLM_ENGINE_PROMPT_CACHE_H_

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "engine/kv_cache.h"
#include "layout/dtype.h"
#include "layout/model_config.h"
#include "storage/status.h"

namespace flashlm::engine {

// What a prompt cache is tied to.
struct PromptCacheKey {
  uint64_t store_identity = 0;
  uint32_t n_layers = 0, n_heads = 0, n_kv_heads = 0, head_dim = 0, dim = 0, vocab_size = 0;
  layout::DType kv_dtype = layout::DType::kF32;
  static PromptCacheKey For(uint64_t store_identity, const layout::ModelConfig& config,
                            layout::DType kv_dtype);
  uint64_t row_bytes() const;  // one K or V row in kv_dtype
};

// A prompt cache read from a file and checked.
class PromptCache {
 public:
  // Reads `path`. Errors: NotFound (no file), Corruption (too short, bad magic, checksum
  // mismatch, sizes that do not add up, a payload that does not decompress to its size, token ids
  // out of the vocabulary), NotSupported (another version), FailedPrecondition (another store,
  // shape or KV dtype; more tokens than `max_positions`), InvalidArgument (larger than any cache
  // for this model and context could be; not a regular file), IoError. Every message names the
  // path.
  static Result<PromptCache> Load(const std::string& path, const PromptCacheKey& key,
                                  uint32_t max_positions);

  std::span<const int32_t> tokens() const { return tokens_; }
  // How many tokens of `prompt` can be restored: the common prefix of tokens() and `prompt`, at
  // most prompt.size() - 1 (the last prompt token is always run, for its logits).
  uint32_t ReusableTokens(std::span<const int32_t> prompt) const;
  // Writes the rows of positions [0, n) into sequence `seq` of `kv` (its dtype and shape must be
  // the key's) and sets the sequence's length to n. Errors: InvalidArgument (n > tokens(), seq or
  // a row out of range, another dtype), KvCache::WriteEncoded's.
  Status Restore(KvCache& kv, uint32_t seq, uint32_t n) const;

 private:
  PromptCacheKey key_;
  std::vector<int32_t> tokens_;
  std::vector<std::byte> rows_;  // [layer][K, V][position] rows of key_.row_bytes()
};

// Saves positions [0, tokens.size()) of sequence `seq` of `kv` (they must hold the K/V of
// `tokens`; tokens.size() <= kv.length(seq)) to `path`, tied to `key`, atomically; fetches V
// rows a paged cache has spilled. Errors: InvalidArgument (no tokens, more than the sequence
// holds, a dtype other than the key's), FetchValues's, IoError naming the path (nothing is left
// at `path` but what was there before).
Status SavePromptCache(const std::string& path, const PromptCacheKey& key, KvCache& kv,
                       uint32_t seq, std::span<const int32_t> tokens);

}  // namespace flashlm::engine

#endif  // FLASHLM_ENGINE_PROMPT_CACHE_H_
