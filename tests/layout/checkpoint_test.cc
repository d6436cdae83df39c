#include "layout/checkpoint.h"

#include <gtest/gtest.h>

#include <filesystem>

#include "tests/layout/layout_test_util.h"
#include "tests/test_util.h"

namespace flashlm::layout {
namespace {

TEST(TensorInfoTest, ShapeAccessors) {
  TensorInfo w{"blk.0.ffn_down.weight", DType::kF32, {64, 172}};
  EXPECT_EQ(w.rows(), 64u);
  EXPECT_EQ(w.cols(), 172u);
  EXPECT_EQ(w.num_values(), 64u * 172u);
  TensorInfo norm{"output_norm.weight", DType::kF32, {64}};
  EXPECT_EQ(norm.rows(), 1u);
  EXPECT_EQ(norm.cols(), 64u);
  EXPECT_EQ(norm.num_values(), 64u);
}

std::vector<std::byte> ReadAll(Checkpoint& c, const TensorInfo& t) {
  std::vector<std::byte> b(t.size_bytes());
  Status s = c.ReadTensor(t, b);
  EXPECT_TRUE(s.ok()) << s.ToString();
  return b;
}

std::unique_ptr<Checkpoint> MustOpen(const std::filesystem::path& p, OpenOptions o = {}) {
  auto r = OpenCheckpoint(p.string(), o);
  EXPECT_TRUE(r.ok()) << p << ": " << r.status().ToString();
  return r.ok() ? std::move(*r) : nullptr;
}

// Everything but max_seq_len (the GGUF declares 2048, the model was trained to 512) and
// tied_embeddings (the GGUF stores a copy of the embedding as output.weight).
void ExpectSameShape(const ModelConfig& a, const ModelConfig& b) {
  EXPECT_EQ(a.architecture, b.architecture);
  EXPECT_EQ(a.dim, b.dim);
  EXPECT_EQ(a.hidden_dim, b.hidden_dim);
  EXPECT_EQ(a.n_layers, b.n_layers);
  EXPECT_EQ(a.n_heads, b.n_heads);
  EXPECT_EQ(a.n_kv_heads, b.n_kv_heads);
  EXPECT_EQ(a.head_dim, b.head_dim);
  EXPECT_EQ(a.vocab_size, b.vocab_size);
  EXPECT_EQ(a.rope_theta, b.rope_theta);
  EXPECT_EQ(a.norm_eps, b.norm_eps);
  EXPECT_EQ(a.activation, b.activation);
  EXPECT_EQ(a.rope_scaling.type, b.rope_scaling.type);
}

// Every tensor of `ref` (a tied model) has a bit-identical twin in `other`.
void ExpectSameTensors(Checkpoint& ref, Checkpoint& other) {
  ASSERT_TRUE(ref.config().tied_embeddings);
  for (const TensorInfo& t : ref.tensors()) {
    const TensorInfo* u = other.FindTensor(t.name);
    ASSERT_NE(u, nullptr) << other.format() << " lacks " << t.name;
    EXPECT_EQ(u->shape, t.shape) << t.name;
    ASSERT_EQ(u->dtype, DType::kF32) << t.name;
    EXPECT_EQ(ReadAll(ref, t), ReadAll(other, *u)) << other.format() << " " << t.name;
  }
  if (!other.config().tied_embeddings) {
    // A separate classifier is allowed only when it equals the embedding.
    const TensorInfo* out = other.FindTensor("output.weight");
    ASSERT_NE(out, nullptr);
    EXPECT_EQ(ReadAll(other, *out), ReadAll(ref, *ref.FindTensor("token_embd.weight")));
  }
  size_t extra = other.config().tied_embeddings ? 0 : 1;
  EXPECT_EQ(other.tensors().size(), ref.tensors().size() + extra);
}

TEST(CheckpointTest, Stories260KSourcesAgree) {
  FLASHLM_REQUIRE_SHARED_MODEL(legacy, "stories260K/stories260K.bin");
  FLASHLM_REQUIRE_SHARED_MODEL(v1, "stories260K/stories260K.v1.bin");
  FLASHLM_REQUIRE_SHARED_MODEL(tok, "stories260K/tok512.bin");
  FLASHLM_REQUIRE_SHARED_MODEL(gguf, "stories260K-gguf/stories260K.gguf");
  FLASHLM_REQUIRE_SHARED_MODEL(hf, "stories260K-hf-derived/config.json");
  OpenOptions with_tok;
  with_tok.tokenizer_path = tok.string();
  auto a = MustOpen(legacy, with_tok);
  auto b = MustOpen(v1, with_tok);
  auto g = MustOpen(gguf);
  auto h = MustOpen(hf.parent_path());
  ASSERT_TRUE(a && b && g && h);
  EXPECT_EQ(h->format(), "safetensors");
  ExpectSameShape(a->config(), h->config());
  EXPECT_EQ(h->config().max_seq_len, 512u);
  EXPECT_TRUE(h->config().tied_embeddings);
  ExpectSameTensors(*a, *h);  // q/k rows un-permuted back to the interleaved convention
  EXPECT_EQ(a->format(), "llama2c");
  EXPECT_EQ(g->format(), "gguf");
  ExpectSameShape(a->config(), b->config());
  ExpectSameShape(a->config(), g->config());
  EXPECT_EQ(a->config().max_seq_len, 512u);
  ExpectSameTensors(*a, *b);
  ExpectSameTensors(*a, *g);
  EXPECT_FALSE(g->config().tied_embeddings);

  // Vocabularies: strings and scores agree token by token, and so do the special ids.
  const Vocab& va = a->vocab();
  const Vocab& vg = g->vocab();
  ASSERT_EQ(va.tokens.size(), vg.tokens.size());
  for (size_t i = 0; i < va.tokens.size(); ++i) {
    EXPECT_EQ(va.tokens[i], vg.tokens[i]) << "token " << i;
    EXPECT_EQ(va.scores[i], vg.scores[i]) << "token " << i;
    EXPECT_EQ(va.types[i], vg.types[i]) << "token " << i;
  }
  EXPECT_EQ(va.bos_id, vg.bos_id);
  EXPECT_EQ(va.eos_id, vg.eos_id);
}

TEST(CheckpointTest, DetectionErrors) {
  flashlm::testing::ScratchDir dir;
  auto r = OpenCheckpoint((dir / "nope.gguf").string());
  EXPECT_EQ(r.status().code(), StatusCode::kNotFound);
  r = OpenCheckpoint(dir.path().string());
  EXPECT_EQ(r.status().code(), StatusCode::kNotSupported);
  testing::WriteFileBytes(dir / "junk.bin", std::vector<std::byte>(100, std::byte{7}));
  r = OpenCheckpoint((dir / "junk.bin").string());
  EXPECT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kCorruption) << r.status().ToString();
}

}  // namespace
}  // namespace flashlm::layout
