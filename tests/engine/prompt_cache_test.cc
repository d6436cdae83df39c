#include "engine/prompt_cache.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <vector>

#include "engine/generator.h"
#include "engine/sampler.h"
#include "engine/session.h"
#include "layout/checkpoint.h"
#include "layout/repack.h"
#include "layout/synth.h"
#include "storage/checksum.h"
#include "storage/file.h"
#include "storage/zstd_codec.h"
#include "tests/test_util.h"

namespace flashlm::engine {
namespace {

namespace fs = std::filesystem;
using layout::DType;

constexpr uint32_t kContext = 96;

std::unique_ptr<Session> OpenSession(const std::string& store, const KvOptions& kv,
                                     const std::string& tokenizer = "") {
  SessionOptions o;
  o.threads = 2;
  o.tokenizer_path = tokenizer;
  o.transformer.max_context = kContext;
  o.transformer.max_batch = 16;
  o.kv = kv;
  auto s = Session::Open(store, o);
  EXPECT_TRUE(s.ok()) << s.status().ToString();
  return s.ok() ? std::move(s).value() : nullptr;
}

PromptCacheKey KeyOf(Session& s) {
  return PromptCacheKey::For(s.store_identity(), s.config(), s.model().kv_cache().dtype());
}

struct Trace {
  std::vector<int32_t> ids;
  std::vector<float> logits;  // every step's, the prompt's last first
};

// Runs `prompt` from position `from` (positions below it must be in the cache already), then
// `steps` greedy tokens, recording every step's logits.
Trace RunFrom(Session& s, std::vector<int32_t> prompt, uint32_t from, uint32_t steps) {
  Trace t;
  auto logits = Prefill(s.model(), std::span<const int32_t>(prompt).subspan(from), from);
  EXPECT_TRUE(logits.ok()) << logits.status().ToString();
  if (!logits.ok()) return t;
  std::span<const float> l = *logits;
  for (uint32_t i = 0; i < steps; ++i) {
    t.logits.insert(t.logits.end(), l.begin(), l.end());
    prompt.push_back(static_cast<int32_t>(std::max_element(l.begin(), l.end()) - l.begin()));
    auto next = s.model().Forward(std::span<const int32_t>(&prompt.back(), 1),
                                  static_cast<uint32_t>(prompt.size() - 1));
    EXPECT_TRUE(next.ok()) << next.status().ToString();
    if (!next.ok()) return t;
    l = *next;
  }
  t.ids = prompt;
  return t;
}

std::vector<int32_t> Tokens(std::initializer_list<int32_t> ids, uint32_t vocab) {
  std::vector<int32_t> v(ids);
  for (int32_t& id : v) id %= static_cast<int32_t>(vocab);
  return v;
}

// The smallest pool Session::Open takes for `kv`, from the message of a 1-byte one.
uint64_t MinimumPool(const std::string& store, KvOptions kv) {
  SessionOptions probe;
  kv.pool_bytes = 1;
  probe.kv = kv;
  probe.transformer.max_context = kContext;
  auto refused = Session::Open(store, probe);
  EXPECT_EQ(refused.status().code(), StatusCode::kInvalidArgument);
  const std::string msg(refused.status().message());
  const size_t open = msg.find('(');
  return open == std::string::npos ? 0 : std::stoull(msg.substr(open + 1));
}

// Saves the KV of prompt A, then for prompt A itself (all but its last token restored) and for
// prompt B sharing a prefix with A: a session that restores the cache and runs only the rest
// gives every step's logits and the greedy ids bit-identical to a session that runs the whole
// prompt; for flat f32, paged f32 with V spilled at the smallest pool, and paged f16 / q8_0
// (whose restored rows are the saved bytes).
void ExpectRestoredIdentical(const std::string& store, const std::string& tokenizer,
                             const std::string& name, const fs::path& dir) {
  const uint32_t steps = 30;
  std::vector<KvOptions> kinds(4);
  kinds[1].paged = kinds[2].paged = kinds[3].paged = true;
  kinds[1].page_tokens = 5;
  kinds[1].pool_bytes = MinimumPool(store, kinds[1]);
  ASSERT_GT(kinds[1].pool_bytes, 0u);
  kinds[2].dtype = DType::kF16;
  kinds[3].dtype = DType::kQ8_0;
  for (size_t k = 0; k < kinds.size(); ++k) {
    const std::string what = name + " kv " + std::to_string(k);
    const std::string path = (dir / ("cache" + std::to_string(k))).string();
    std::unique_ptr<Session> first = OpenSession(store, kinds[k], tokenizer);
    ASSERT_NE(first, nullptr);
    const uint32_t vocab = first->config().vocab_size;
    const std::vector<int32_t> a =
        Tokens({1, 7, 42, 99, 5, 17, 3, 250, 11, 60, 8, 2, 33, 71, 19, 4, 88, 23, 9, 140}, vocab);
    std::vector<int32_t> b(a.begin(), a.begin() + 13);
    for (int32_t id : {6, 77, 12, 130, 45}) b.push_back(id % static_cast<int32_t>(vocab));
    const Trace full_a = RunFrom(*first, a, 0, steps);
    if (k == 1) {
      ASSERT_TRUE(first->paged_kv()->spills()) << what;
    }
    ASSERT_TRUE(SavePromptCache(path, KeyOf(*first), first->model().kv_cache(), 0, a).ok());
    std::unique_ptr<Session> fresh_b = OpenSession(store, kinds[k], tokenizer);
    const Trace full_b = RunFrom(*fresh_b, b, 0, steps);

    auto pc = PromptCache::Load(path, KeyOf(*first), kContext);
    ASSERT_TRUE(pc.ok()) << pc.status().ToString();
    EXPECT_TRUE(std::equal(pc->tokens().begin(), pc->tokens().end(), a.begin(), a.end()));
    // The whole prompt: all but its last token restored.
    EXPECT_EQ(pc->ReusableTokens(a), a.size() - 1);
    std::unique_ptr<Session> second = OpenSession(store, kinds[k], tokenizer);
    ASSERT_TRUE(pc->Restore(second->model().kv_cache(), 0, pc->ReusableTokens(a)).ok());
    const Trace restored_a = RunFrom(*second, a, pc->ReusableTokens(a), steps);
    EXPECT_EQ(restored_a.ids, full_a.ids) << what;
    EXPECT_TRUE(restored_a.logits == full_a.logits) << what;
    // A prompt sharing 13 tokens: those restored (into a sequence that held something else).
    EXPECT_EQ(pc->ReusableTokens(b), 13u);
    ASSERT_TRUE(pc->Restore(second->model().kv_cache(), 0, 13).ok());
    const Trace restored_b = RunFrom(*second, b, 13, steps);
    EXPECT_EQ(restored_b.ids, full_b.ids) << what;
    EXPECT_TRUE(restored_b.logits == full_b.logits) << what;
    // The runs differ (the check can fail): A and B continue differently.
    EXPECT_FALSE(restored_a.logits == restored_b.logits);
  }
}

TEST(PromptCacheTest, Stories260KRestoredIdenticalToFullRun) {
  FLASHLM_REQUIRE_SHARED_MODEL(bin, "stories260K/stories260K.bin");
  FLASHLM_REQUIRE_SHARED_MODEL(tokp, "stories260K/tok512.bin");
  layout::OpenOptions open;
  open.tokenizer_path = tokp.string();
  auto ck = layout::OpenCheckpoint(bin.string(), open);
  ASSERT_TRUE(ck.ok()) << ck.status().ToString();
  ::flashlm::testing::ScratchDir dir;
  const std::string store = (dir / "store").string();
  ASSERT_TRUE(layout::Repack(**ck, store, {}).ok());
  ExpectRestoredIdentical(store, tokp.string(), "stories260K", dir.path());
}

// A synth model repacked into a store (seeded), in `dir`.
std::string SynthStore(const fs::path& dir, const char* shape, uint64_t seed) {
  fs::create_directories(dir);
  layout::SynthOptions so;
  so.config = *layout::SynthShape(shape);
  so.seed = seed;
  so.out_path = (dir / "model.gguf").string();
  EXPECT_TRUE(layout::SynthesizeGguf(so).ok());
  auto src = layout::OpenCheckpoint(so.out_path);
  EXPECT_TRUE(src.ok());
  const std::string store = (dir / "store").string();
  EXPECT_TRUE(layout::Repack(**src, store, {}).ok());
  return store;
}

TEST(PromptCacheTest, SynthModelRestoredIdenticalToFullRun) {
  ::flashlm::testing::ScratchDir dir;
  ExpectRestoredIdentical(SynthStore(dir.path(), "tiny", 5), "", "synth-tiny", dir.path());
}

// The generator with a cached prefix, through Generate (as the CLI drives it), gives the ids of
// a full run.
TEST(PromptCacheTest, GeneratorSkipsTheCachedPrefix) {
  ::flashlm::testing::ScratchDir dir;
  const std::string store = SynthStore(dir.path(), "tiny", 6);
  const std::string path = (dir / "cache").string();
  auto ids_of = [&](Session& s, const std::vector<int32_t>& prompt, uint32_t cached) {
    Generator gen(s.model(), s.tokenizer());
    gen.set_ignore_eos(true);
    gen.set_cached_prefix(cached);
    SamplerOptions so;
    so.temperature = 0;
    auto sampler = Sampler::Create(s.config().vocab_size, so);
    EXPECT_TRUE(sampler.ok());
    auto st = gen.Generate(prompt, 20, **sampler, {}, nullptr);
    EXPECT_TRUE(st.ok()) << st.status().ToString();
    return gen.ids();
  };
  std::unique_ptr<Session> a = OpenSession(store, {});
  const std::vector<int32_t> prompt =
      Tokens({1, 9, 30, 4, 51, 2, 17, 8, 60}, a->config().vocab_size);
  const std::vector<int32_t> want = ids_of(*a, prompt, 0);
  ASSERT_TRUE(SavePromptCache(path, KeyOf(*a), a->model().kv_cache(), 0, prompt).ok());
  std::unique_ptr<Session> b = OpenSession(store, {});
  auto pc = PromptCache::Load(path, KeyOf(*b), kContext);
  ASSERT_TRUE(pc.ok()) << pc.status().ToString();
  const uint32_t n = pc->ReusableTokens(prompt);
  ASSERT_EQ(n, prompt.size() - 1);
  ASSERT_TRUE(pc->Restore(b->model().kv_cache(), 0, n).ok());
  EXPECT_EQ(ids_of(*b, prompt, n), want);
  // A cached prefix must leave a token to run.
  Generator gen(b->model(), b->tokenizer());
  gen.set_cached_prefix(static_cast<uint32_t>(prompt.size()));
  auto sampler = Sampler::Create(b->config().vocab_size, SamplerOptions());
  auto refused = gen.Generate(prompt, 4, **sampler, {}, nullptr);
  EXPECT_EQ(refused.status().code(), StatusCode::kInvalidArgument);
}

std::vector<char> ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<char>(std::istreambuf_iterator<char>(in), {});
}
void WriteAll(const std::string& path, const std::vector<char>& bytes) {
  std::ofstream(path, std::ios::binary | std::ios::trunc).write(bytes.data(), bytes.size());
}
// Recomputes the trailing checksum (a hostile file that passes it).
void Reseal(std::vector<char>& f) {
  const uint64_t sum = storage::Checksum64(
      ConstByteSpan(reinterpret_cast<const std::byte*>(f.data()), f.size() - 8));
  std::memcpy(f.data() + f.size() - 8, &sum, 8);
}
template <typename T>
void PutAt(std::vector<char>& f, size_t off, T v) {
  std::memcpy(f.data() + off, &v, sizeof(T));
}

// Every refusal: another store, shape or dtype, a damaged or truncated file, a bad magic or
// version, hostile declared sizes (with a valid checksum), a file beyond the bound; each with
// its code and a message naming the file. Nothing of a refused cache is used.
TEST(PromptCacheTest, RefusesCachesNotMadeForThisRunAndDamagedFiles) {
  ::flashlm::testing::ScratchDir dir;
  const std::string store = SynthStore(dir.path(), "tiny", 7);
  std::unique_ptr<Session> s = OpenSession(store, {});
  const PromptCacheKey key = KeyOf(*s);
  ASSERT_NE(key.store_identity, 0u);
  const std::vector<int32_t> prompt = Tokens({1, 5, 9, 13, 17, 21, 25, 29}, key.vocab_size);
  RunFrom(*s, prompt, 0, 1);
  const std::string path = (dir / "good").string();
  ASSERT_TRUE(SavePromptCache(path, key, s->model().kv_cache(), 0, prompt).ok());
  ASSERT_TRUE(PromptCache::Load(path, key, kContext).ok());
  const std::vector<char> good = ReadAll(path);
  // Writing left no temporary beside the file (model.gguf, store, good).
  EXPECT_EQ(std::distance(fs::directory_iterator(dir.path()), fs::directory_iterator()), 3);

  auto expect = [&](const std::vector<char>& bytes, const PromptCacheKey& k, StatusCode code,
                    const char* words, uint32_t ctx = kContext) {
    const std::string bad = (dir / "bad").string();
    WriteAll(bad, bytes);
    auto r = PromptCache::Load(bad, k, ctx);
    ASSERT_FALSE(r.ok()) << words;
    EXPECT_EQ(r.status().code(), code) << r.status().ToString();
    const std::string msg(r.status().message());
    EXPECT_NE(msg.find(bad), std::string::npos) << msg;
    EXPECT_NE(msg.find(words), std::string::npos) << msg;
  };
  // Made for another store: the same model repacked elsewhere with another seed's weights.
  {
    std::unique_ptr<Session> other = OpenSession(SynthStore(dir / "other", "tiny", 8), {});
    ASSERT_NE(KeyOf(*other).store_identity, key.store_identity);
    expect(good, KeyOf(*other), StatusCode::kFailedPrecondition, "another store");
  }
  PromptCacheKey shape = key;
  shape.n_layers += 1;
  expect(good, shape, StatusCode::kFailedPrecondition, "another model shape");
  shape = key;
  shape.vocab_size += 1;
  expect(good, shape, StatusCode::kFailedPrecondition, "another model shape");
  PromptCacheKey dtype = key;
  dtype.kv_dtype = DType::kQ8_0;
  expect(good, dtype, StatusCode::kFailedPrecondition, "KV dtype");
  // Damaged: one byte anywhere (header, tokens, payload, checksum).
  for (size_t off : {size_t{20}, size_t{64}, good.size() / 2, good.size() - 1}) {
    std::vector<char> f = good;
    f[off] ^= 0x10;
    expect(f, key, StatusCode::kCorruption, "damaged");
  }
  // Truncated anywhere.
  for (size_t len : {size_t{0}, size_t{40}, size_t{80}, good.size() - 1}) {
    std::vector<char> f(good.begin(), good.begin() + len);
    expect(f, key, StatusCode::kCorruption, len < 72 ? "truncated" : "damaged");
  }
  {
    std::vector<char> f = good;
    f[0] = 'X';
    expect(f, key, StatusCode::kCorruption, "bad magic");
    f = good;
    PutAt<uint32_t>(f, 8, 2);
    Reseal(f);
    expect(f, key, StatusCode::kNotSupported, "version 2");
  }
  // Hostile declared sizes, checksum valid: a huge token count, a token count beyond the
  // context, a compressed size that does not match the file, a zstd frame declaring more than
  // the rows, a token id out of the vocabulary.
  {
    std::vector<char> f = good;
    PutAt<uint32_t>(f, 48, 0xFFFFFFFFu);
    Reseal(f);
    expect(f, key, StatusCode::kFailedPrecondition, "more than the context");
    f = good;
    PutAt<uint32_t>(f, 48, 0);
    Reseal(f);
    expect(f, key, StatusCode::kCorruption, "no tokens");
    f = good;
    PutAt<uint64_t>(f, 56, uint64_t{1} << 62);
    Reseal(f);
    expect(f, key, StatusCode::kCorruption, "sizes do not add up");
    f = good;
    PutAt<uint32_t>(f, 48, 7);  // one token fewer: the payload is larger than 7 tokens' rows
    Reseal(f);
    expect(f, key, StatusCode::kCorruption, "sizes do not add up");
    f = good;
    PutAt<int32_t>(f, 64, -5);
    Reseal(f);
    expect(f, key, StatusCode::kCorruption, "out of the vocabulary");
  }
  {
    // A zstd frame of more rows than the header's count declares (a payload for 9 tokens
    // written into a file that says 8): decompression refuses it, nothing overruns.
    std::vector<std::byte> rows(9 * key.n_layers * 2 * key.row_bytes(), std::byte{1});
    std::vector<std::byte> z(storage::ZstdCompressBound(rows.size()));
    auto zn = storage::ZstdCompress(rows, z, 1);
    ASSERT_TRUE(zn.ok());
    std::vector<char> f(good.begin(), good.begin() + 64 + 8 * 4);
    f.insert(f.end(), reinterpret_cast<const char*>(z.data()),
             reinterpret_cast<const char*>(z.data()) + *zn);
    f.resize(f.size() + 8);
    PutAt<uint64_t>(f, 56, *zn);
    Reseal(f);
    expect(f, key, StatusCode::kCorruption, "prompt cache");
  }
  {
    // Larger than any cache of this model and context can be: refused before it is read whole.
    std::vector<char> f = good;
    f.resize(16 * 1024 * 1024, 0);
    expect(f, key, StatusCode::kInvalidArgument, "prompt cache");
  }
  EXPECT_EQ(PromptCache::Load((dir / "missing").string(), key, kContext).status().code(),
            StatusCode::kNotFound);
  // Saving where it cannot be written leaves nothing behind and says why.
  Status st =
      SavePromptCache((dir / "no-such-dir" / "c").string(), key, s->model().kv_cache(), 0, prompt);
  EXPECT_EQ(st.code(), StatusCode::kIoError) << st.ToString();
  EXPECT_FALSE(fs::exists(dir / "no-such-dir"));
  // More tokens than the sequence holds.
  std::vector<int32_t> longer = prompt;
  longer.resize(40, 1);
  EXPECT_EQ(SavePromptCache(path, key, s->model().kv_cache(), 0, longer).code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(ReadAll(path), good) << "a refused save leaves the old file";
}

}  // namespace
}  // namespace flashlm::engine
