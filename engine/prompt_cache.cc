#include "engine/prompt_cache.h"

#include <algorithm>
#include <cstring>

#include "storage/checksum.h"
#include "storage/file.h"
#include "storage/zstd_codec.h"

namespace flashlm::engine {
namespace {

constexpr char kMagic[8] = {'F', 'L', 'M', 'P', 'R', 'M', 'P', 'T'};
constexpr uint32_t kVersion = 1;
constexpr uint64_t kHeaderBytes = 64;
constexpr uint64_t kChecksumBytes = 8;
constexpr int kZstdLevel = 3;

// Header field offsets.
enum : uint64_t {
  kOffVersion = 8,
  kOffDType = 12,
  kOffIdentity = 16,
  kOffLayers = 24,
  kOffHeads = 28,
  kOffKvHeads = 32,
  kOffHeadDim = 36,
  kOffDim = 40,
  kOffVocab = 44,
  kOffTokens = 48,
  kOffReserved = 52,
  kOffCompressed = 56,
};

template <typename T>
T Get(const std::byte* p, uint64_t off) {
  T v;
  std::memcpy(&v, p + off, sizeof(T));
  return v;
}
template <typename T>
void Put(std::byte* p, uint64_t off, T v) {
  std::memcpy(p + off, &v, sizeof(T));
}

std::string Hex(uint64_t v) {
  char buf[24];
  std::snprintf(buf, sizeof(buf), "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

// Bytes of the rows of n positions: per layer, n K rows and n V rows.
uint64_t PayloadBytes(const PromptCacheKey& key, uint64_t n) {
  return n * key.n_layers * 2 * key.row_bytes();
}

}  // namespace

PromptCacheKey PromptCacheKey::For(uint64_t store_identity, const layout::ModelConfig& c,
                                   layout::DType kv_dtype) {
  PromptCacheKey k;
  k.store_identity = store_identity;
  k.n_layers = c.n_layers;
  k.n_heads = c.n_heads;
  k.n_kv_heads = c.n_kv_heads;
  k.head_dim = c.head_dim;
  k.dim = c.dim;
  k.vocab_size = c.vocab_size;
  k.kv_dtype = kv_dtype;
  return k;
}

uint64_t PromptCacheKey::row_bytes() const {
  return layout::RowBytes(kv_dtype, uint64_t{n_kv_heads} * head_dim);
}

Result<PromptCache> PromptCache::Load(const std::string& path, const PromptCacheKey& key,
                                      uint32_t max_positions) {
  const std::string where = "prompt cache " + path;
  // The largest file a cache of this model and context can be: the bound comes from what runs,
  // not from the file.
  const uint64_t max_payload = PayloadBytes(key, max_positions);
  const uint64_t max_file = kHeaderBytes + uint64_t{max_positions} * sizeof(int32_t) +
                            storage::ZstdCompressBound(max_payload) + kChecksumBytes;
  Result<std::string> read = storage::ReadFileBounded(path, max_file);
  if (!read.ok()) return read.status().WithContext(where);
  const std::string& file = *read;
  const auto* p = reinterpret_cast<const std::byte*>(file.data());
  const uint64_t size = file.size();
  if (size < kHeaderBytes + kChecksumBytes) {
    return CorruptionError(where + ": truncated (" + std::to_string(size) + " bytes)");
  }
  if (std::memcmp(p, kMagic, sizeof(kMagic)) != 0) {
    return CorruptionError(where + ": not a flashlm prompt cache (bad magic)");
  }
  if (const uint32_t v = Get<uint32_t>(p, kOffVersion); v != kVersion) {
    return NotSupportedError(where + ": version " + std::to_string(v) + ", this build reads " +
                             std::to_string(kVersion));
  }
  const uint64_t stored = Get<uint64_t>(p, size - kChecksumBytes);
  const uint64_t actual = storage::Checksum64(ConstByteSpan(p, size - kChecksumBytes));
  if (stored != actual) {
    return CorruptionError(where + ": damaged or truncated (XXH3 " + Hex(actual) + ", recorded " +
                           Hex(stored) + ")");
  }
  if (const uint64_t id = Get<uint64_t>(p, kOffIdentity); id != key.store_identity) {
    return FailedPreconditionError(where + ": made for another store (identity " + Hex(id) +
                                   ", this store " + Hex(key.store_identity) + ")");
  }
  const uint32_t shape[6] = {Get<uint32_t>(p, kOffLayers),  Get<uint32_t>(p, kOffHeads),
                             Get<uint32_t>(p, kOffKvHeads), Get<uint32_t>(p, kOffHeadDim),
                             Get<uint32_t>(p, kOffDim),     Get<uint32_t>(p, kOffVocab)};
  const uint32_t want[6] = {key.n_layers, key.n_heads, key.n_kv_heads,
                            key.head_dim, key.dim,     key.vocab_size};
  if (!std::equal(shape, shape + 6, want)) {
    auto fmt = [](const uint32_t* s) {
      return "layers " + std::to_string(s[0]) + ", heads " + std::to_string(s[1]) + "/" +
             std::to_string(s[2]) + " of " + std::to_string(s[3]) + ", dim " +
             std::to_string(s[4]) + ", vocab " + std::to_string(s[5]);
    };
    return FailedPreconditionError(where + ": made for another model shape (" + fmt(shape) +
                                   "; this model " + fmt(want) + ")");
  }
  if (const uint32_t dt = Get<uint32_t>(p, kOffDType); dt != static_cast<uint32_t>(key.kv_dtype)) {
    const std::string name =
        dt <= 255 ? std::string(layout::DTypeName(static_cast<layout::DType>(dt))) : "?";
    return FailedPreconditionError(where + ": made with KV dtype " + name + ", this cache is " +
                                   std::string(layout::DTypeName(key.kv_dtype)));
  }
  const uint32_t n = Get<uint32_t>(p, kOffTokens);
  if (n == 0) return CorruptionError(where + ": holds no tokens");
  if (n > max_positions) {
    return FailedPreconditionError(where + ": holds " + std::to_string(n) +
                                   " tokens, more than the context of " +
                                   std::to_string(max_positions));
  }
  const uint64_t compressed = Get<uint64_t>(p, kOffCompressed);
  const uint64_t fixed = kHeaderBytes + uint64_t{n} * sizeof(int32_t) + kChecksumBytes;
  if (Get<uint32_t>(p, kOffReserved) != 0 || fixed > size || compressed != size - fixed) {
    return CorruptionError(where + ": sizes do not add up (" + std::to_string(n) + " tokens, " +
                           std::to_string(compressed) + " compressed bytes, file of " +
                           std::to_string(size) + ")");
  }
  PromptCache pc;
  pc.key_ = key;
  pc.tokens_.resize(n);
  std::memcpy(pc.tokens_.data(), p + kHeaderBytes, uint64_t{n} * sizeof(int32_t));
  for (int32_t t : pc.tokens_) {
    if (t < 0 || static_cast<uint32_t>(t) >= key.vocab_size) {
      return CorruptionError(where + ": token id " + std::to_string(t) + " out of the vocabulary");
    }
  }
  pc.rows_.resize(PayloadBytes(key, n));
  if (Status st = storage::ZstdDecompress(
          ConstByteSpan(p + kHeaderBytes + uint64_t{n} * sizeof(int32_t), compressed),
          ByteSpan(pc.rows_));
      !st.ok()) {
    return st.WithContext(where);
  }
  return pc;
}

uint32_t PromptCache::ReusableTokens(std::span<const int32_t> prompt) const {
  const size_t limit = std::min(tokens_.size(), prompt.empty() ? 0 : prompt.size() - 1);
  size_t n = 0;
  while (n < limit && tokens_[n] == prompt[n]) ++n;
  return static_cast<uint32_t>(n);
}

Status PromptCache::Restore(KvCache& kv, uint32_t seq, uint32_t n) const {
  if (n > tokens_.size() || seq >= kv.max_sequences() || n > kv.max_positions()) {
    return InvalidArgumentError("prompt cache: restoring " + std::to_string(n) +
                                " positions out of range");
  }
  if (kv.dtype() != key_.kv_dtype || kv.kv_dim() != uint64_t{key_.n_kv_heads} * key_.head_dim) {
    return InvalidArgumentError("prompt cache: the KV cache is not the one it was loaded for");
  }
  kv.SetLength(seq, 0);
  const uint64_t rb = key_.row_bytes(), total = tokens_.size();
  for (uint32_t layer = 0; layer < key_.n_layers; ++layer) {
    const std::byte* k = rows_.data() + uint64_t{layer} * 2 * total * rb;
    const std::byte* v = k + total * rb;
    for (uint32_t pos = 0; pos < n; ++pos) {
      RETURN_IF_ERROR(kv.WriteEncoded(layer, seq, pos, ConstByteSpan(k + pos * rb, rb),
                                      ConstByteSpan(v + pos * rb, rb)));
    }
  }
  kv.SetLength(seq, n);
  return Status::Ok();
}

Status SavePromptCache(const std::string& path, const PromptCacheKey& key, KvCache& kv,
                       uint32_t seq, std::span<const int32_t> tokens) {
  const uint64_t n = tokens.size();
  if (n == 0 || seq >= kv.max_sequences() || n > kv.length(seq)) {
    return InvalidArgumentError("prompt cache: " + std::to_string(n) +
                                " tokens to save, the sequence holds " +
                                std::to_string(seq < kv.max_sequences() ? kv.length(seq) : 0));
  }
  if (kv.dtype() != key.kv_dtype || kv.kv_dim() != uint64_t{key.n_kv_heads} * key.head_dim) {
    return InvalidArgumentError("prompt cache: the KV cache does not match the key");
  }
  const uint64_t rb = key.row_bytes();
  std::vector<std::byte> rows(PayloadBytes(key, n));
  for (uint32_t layer = 0; layer < key.n_layers; ++layer) {
    std::byte* out = rows.data() + uint64_t{layer} * 2 * n * rb;
    RETURN_IF_ERROR(kv.FetchValues(layer, seq, static_cast<uint32_t>(n)));
    for (int kind = 0; kind < 2; ++kind) {
      for (uint32_t pos = 0; pos < n;) {
        const uint32_t want = static_cast<uint32_t>(n - pos);
        const KvRows r =
            kind == 0 ? kv.Keys(layer, seq, pos, want) : kv.Values(layer, seq, pos, want);
        for (uint32_t i = 0; i < r.count; ++i) {
          std::memcpy(out + (kind * n + pos + i) * rb, r.data + i * r.stride_bytes, rb);
        }
        pos += r.count;
      }
    }
    kv.ReleaseValues();
  }
  const uint64_t token_bytes = n * sizeof(int32_t);
  std::vector<std::byte> file(kHeaderBytes + token_bytes + storage::ZstdCompressBound(rows.size()) +
                              kChecksumBytes);
  std::byte* p = file.data();
  std::memcpy(p, kMagic, sizeof(kMagic));
  Put<uint32_t>(p, kOffVersion, kVersion);
  Put<uint32_t>(p, kOffDType, static_cast<uint32_t>(key.kv_dtype));
  Put<uint64_t>(p, kOffIdentity, key.store_identity);
  Put<uint32_t>(p, kOffLayers, key.n_layers);
  Put<uint32_t>(p, kOffHeads, key.n_heads);
  Put<uint32_t>(p, kOffKvHeads, key.n_kv_heads);
  Put<uint32_t>(p, kOffHeadDim, key.head_dim);
  Put<uint32_t>(p, kOffDim, key.dim);
  Put<uint32_t>(p, kOffVocab, key.vocab_size);
  Put<uint32_t>(p, kOffTokens, static_cast<uint32_t>(n));
  Put<uint32_t>(p, kOffReserved, 0);
  std::memcpy(p + kHeaderBytes, tokens.data(), token_bytes);
  ASSIGN_OR_RETURN(const size_t compressed,
                   storage::ZstdCompress(ConstByteSpan(rows),
                                         ByteSpan(p + kHeaderBytes + token_bytes,
                                                  storage::ZstdCompressBound(rows.size())),
                                         kZstdLevel));
  Put<uint64_t>(p, kOffCompressed, compressed);
  const uint64_t body = kHeaderBytes + token_bytes + compressed;
  Put<uint64_t>(p, body, storage::Checksum64(ConstByteSpan(p, body)));
  file.resize(body + kChecksumBytes);
  return storage::WriteFileAtomically(path, ConstByteSpan(file));
}

}  // namespace flashlm::engine
