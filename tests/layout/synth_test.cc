#include "layout/synth.h"

#include <gtest/gtest.h>

#include <cmath>
#include <numeric>
#include <set>

#include "layout/checkpoint.h"
#include "layout/gguf_reader.h"
#include "tests/layout/layout_test_util.h"
#include "tests/test_util.h"

namespace flashlm::layout {
namespace {

using ::flashlm::layout::testing::ReadFileBytes;

SynthOptions Tiny(const std::filesystem::path& out, DType dtype = DType::kF32, uint64_t seed = 1) {
  SynthOptions o;
  o.config = *SynthShape("tiny");
  o.dtype = dtype;
  o.seed = seed;
  o.out_path = out.string();
  return o;
}

TEST(SynthTest, ShapesMatchTheIssue) {
  auto s = SynthShape("1b");
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->dim, 2048u);
  EXPECT_EQ(s->hidden_dim, 5632u);
  EXPECT_EQ(s->n_layers, 22u);
  EXPECT_EQ(s->n_heads, 32u);
  EXPECT_EQ(s->n_kv_heads, 4u);
  s = SynthShape("15m");
  EXPECT_EQ(s->dim, 288u);
  EXPECT_EQ(s->hidden_dim, 768u);
  EXPECT_EQ(s->n_layers, 6u);
  s = SynthShape("7b");
  EXPECT_EQ(s->hidden_dim, 11008u);
  EXPECT_EQ(s->n_kv_heads, 32u);
  EXPECT_EQ(SynthShape("3b").status().code(), StatusCode::kInvalidArgument);
}

TEST(SynthTest, TinyModelOpensWithFiniteScaledWeightsAndAVocab) {
  flashlm::testing::ScratchDir dir;
  for (DType dt : {DType::kF32, DType::kF16, DType::kQ8_0, DType::kQ4_0}) {
    const auto path = dir / (std::string(DTypeName(dt)) + ".gguf");
    ASSERT_TRUE(SynthesizeGguf(Tiny(path, dt)).ok());
    auto ckpt = OpenCheckpoint(path.string());
    ASSERT_TRUE(ckpt.ok()) << ckpt.status().ToString();
    const ModelConfig& c = (*ckpt)->config();
    EXPECT_EQ(c.dim, 64u);
    EXPECT_EQ(c.hidden_dim, 256u);
    EXPECT_EQ(c.n_kv_heads, 2u);
    EXPECT_FALSE(c.tied_embeddings);
    const Vocab& v = (*ckpt)->vocab();
    ASSERT_EQ(v.tokens.size(), 512u);
    EXPECT_EQ(v.tokens[1], "<s>");
    EXPECT_EQ(v.tokens[3 + 10], "<0x0A>");
    EXPECT_EQ(v.types[3 + 10], Vocab::kByte);
    std::set<std::string> unique(v.tokens.begin(), v.tokens.end());
    EXPECT_EQ(unique.size(), v.tokens.size()) << "duplicate tokens";
    for (const TensorInfo& t : (*ckpt)->tensors()) {
      std::vector<float> x(t.num_values());
      ASSERT_TRUE((*ckpt)->ReadTensorF32(t, x).ok());
      double sum2 = 0;
      for (float f : x) {
        ASSERT_TRUE(std::isfinite(f)) << t.name;
        sum2 += double(f) * f;
      }
      const double rms = std::sqrt(sum2 / x.size());
      double want = t.shape.size() == 1 ? 1.0 : 1.0 / std::sqrt(double(t.cols()));
      if (t.name == "token_embd.weight") want = 1.0;
      if (t.name.ends_with("attn_output.weight") || t.name.ends_with("ffn_down.weight")) {
        want /= std::sqrt(2.0 * c.n_layers);
      }
      EXPECT_NEAR(rms, want, 0.1 * want) << DTypeName(dt) << " " << t.name;
      EXPECT_EQ(t.dtype, t.shape.size() == 1 ? DType::kF32 : dt) << t.name;
    }
  }
}

TEST(SynthTest, DeterministicForASeed) {
  flashlm::testing::ScratchDir dir;
  ASSERT_TRUE(SynthesizeGguf(Tiny(dir / "a.gguf", DType::kQ8_0, 5)).ok());
  ASSERT_TRUE(SynthesizeGguf(Tiny(dir / "b.gguf", DType::kQ8_0, 5)).ok());
  ASSERT_TRUE(SynthesizeGguf(Tiny(dir / "c.gguf", DType::kQ8_0, 6)).ok());
  EXPECT_EQ(ReadFileBytes(dir / "a.gguf"), ReadFileBytes(dir / "b.gguf"));
  EXPECT_NE(ReadFileBytes(dir / "a.gguf"), ReadFileBytes(dir / "c.gguf"));
}

TEST(SynthTest, FireProbabilitiesHaveTheRequestedMeanAndSkew) {
  const auto p = SynthFireProbabilities(4096, 0.1f, 1.0f, 3);
  const double mean = std::accumulate(p.begin(), p.end(), 0.0) / p.size();
  EXPECT_NEAR(mean, 0.1, 0.002);
  std::vector<float> sorted = p;
  std::sort(sorted.rbegin(), sorted.rend());
  const double top = std::accumulate(sorted.begin(), sorted.begin() + 410, 0.0);
  EXPECT_GT(top / (mean * p.size()), 0.5) << "top 10% of neurons should carry most firing";
  const auto flat = SynthFireProbabilities(1000, 0.2f, 0.0f, 3);
  for (float x : flat) EXPECT_NEAR(x, 0.2f, 1e-4);
}

TEST(SynthTest, ReluShapingGivesTheFireRateAtTheFirstFfn) {
  flashlm::testing::ScratchDir dir;
  SynthOptions o = Tiny(dir / "relu.gguf");
  o.config.activation = Activation::kRelu;
  o.fire_rate = 0.1f;
  o.hot_skew = 1.0f;
  ASSERT_TRUE(SynthesizeGguf(o).ok());
  auto ckpt = OpenCheckpoint(o.out_path);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status().ToString();
  const ModelConfig& c = (*ckpt)->config();
  EXPECT_EQ(c.activation, Activation::kRelu);
  std::vector<float> emb(uint64_t{c.vocab_size} * c.dim), gate(uint64_t{c.hidden_dim} * c.dim);
  ASSERT_TRUE((*ckpt)->ReadTensorF32(*(*ckpt)->FindTensor("token_embd.weight"), emb).ok());
  ASSERT_TRUE((*ckpt)->ReadTensorF32(*(*ckpt)->FindTensor("blk.0.ffn_gate.weight"), gate).ok());
  // FFN input of layer 0 approximated by RMSNorm(embedding) (the attention update is small and
  // leaves channel 0 alone); count gate pre-activations > 0.
  uint64_t fired = 0, total = 0;
  for (uint32_t tok = 0; tok < c.vocab_size; ++tok) {
    const float* x = &emb[uint64_t{tok} * c.dim];
    double ss = 0;
    for (uint32_t j = 0; j < c.dim; ++j) ss += double(x[j]) * x[j];
    const double inv = 1.0 / std::sqrt(ss / c.dim + c.norm_eps);
    for (uint32_t i = 0; i < c.hidden_dim; ++i) {
      double a = 0;
      for (uint32_t j = 0; j < c.dim; ++j) a += gate[uint64_t{i} * c.dim + j] * x[j] * inv;
      fired += a > 0;
      ++total;
    }
  }
  const double rate = double(fired) / total;
  EXPECT_NEAR(rate, 0.1, 0.03) << "fired " << fired << " of " << total;
}

TEST(SynthTest, VocabFromCopiesTheTokenizer) {
  FLASHLM_REQUIRE_SHARED_MODEL(vocab, "llama-spm-vocab-gguf/ggml-vocab-llama-spm.gguf");
  flashlm::testing::ScratchDir dir;
  SynthOptions o = Tiny(dir / "v.gguf");
  o.vocab_from = vocab.string();
  ASSERT_TRUE(SynthesizeGguf(o).ok());
  auto ckpt = OpenCheckpoint(o.out_path);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status().ToString();
  EXPECT_EQ((*ckpt)->config().vocab_size, 32000u);
  auto src = OpenFileSource(vocab.string());
  ASSERT_TRUE(src.ok());
  auto f = GgufFile::Parse(**src);
  ASSERT_TRUE(f.ok());
  auto want = GgufVocab(*f);
  ASSERT_TRUE(want.ok());
  EXPECT_EQ((*ckpt)->vocab().tokens, want->tokens);
  EXPECT_EQ((*ckpt)->vocab().scores, want->scores);
  EXPECT_EQ((*ckpt)->vocab().types, want->types);
}

// The Q4_K_M-style mix: output and ffn_down q6_K, every other matrix q4_K, norms f32; the file
// reads back with finite weights of the synth's scale.
TEST(SynthTest, Q4KMMixHasLlamaCppsDtypes) {
  flashlm::testing::ScratchDir dir;
  SynthOptions o = Tiny(dir / "q4km.gguf");
  o.config.dim = 256;
  o.config.hidden_dim = 512;
  o.config.head_dim = 64;
  o.q4_k_m = true;
  ASSERT_TRUE(SynthesizeGguf(o).ok());
  auto ckpt = OpenCheckpoint((dir / "q4km.gguf").string());
  ASSERT_TRUE(ckpt.ok()) << ckpt.status().ToString();
  int q4 = 0, q6 = 0;
  for (const TensorInfo& t : (*ckpt)->tensors()) {
    if (t.shape.size() == 1) {
      EXPECT_EQ(t.dtype, DType::kF32) << t.name;
      continue;
    }
    const bool six = t.name == "output.weight" || t.name.ends_with("ffn_down.weight");
    EXPECT_EQ(t.dtype, six ? DType::kQ6_K : DType::kQ4_K) << t.name;
    (six ? q6 : q4) += 1;
    std::vector<float> v(t.num_values());
    ASSERT_TRUE((*ckpt)->ReadTensorF32(t, v).ok()) << t.name;
    double ss = 0;
    for (float x : v) {
      ASSERT_TRUE(std::isfinite(x)) << t.name;
      ss += double(x) * x;
    }
    EXPECT_GT(ss, 0.0) << t.name;
  }
  EXPECT_EQ(q6, 1 + 2);      // output + 2 layers' ffn_down
  EXPECT_EQ(q4, 1 + 2 * 6);  // token_embd + q, k, v, o, gate, up per layer
}

TEST(SynthTest, BadOptionsAreRefusedWithoutOutput) {
  flashlm::testing::ScratchDir dir;
  SynthOptions o = Tiny(dir / "bad.gguf");
  o.fire_rate = 0.2f;  // silu
  EXPECT_EQ(SynthesizeGguf(o).code(), StatusCode::kInvalidArgument);
  o = Tiny(dir / "bad.gguf", DType::kQ4_K);  // dim 64: rows are not whole 256-value blocks
  EXPECT_EQ(SynthesizeGguf(o).code(), StatusCode::kInvalidArgument);
  o = Tiny(dir / "bad.gguf");
  o.q4_k_m = true;
  EXPECT_EQ(SynthesizeGguf(o).code(), StatusCode::kInvalidArgument);
  o = Tiny(dir / "bad.gguf");
  o.config.vocab_size = 100;
  EXPECT_EQ(SynthesizeGguf(o).code(), StatusCode::kInvalidArgument);
  o = Tiny(dir / "bad.gguf", DType::kQ8_0);
  o.config.hidden_dim = 100;  // ffn_down rows of 100 values are not whole q8_0 blocks
  EXPECT_EQ(SynthesizeGguf(o).code(), StatusCode::kInvalidArgument);
  o = Tiny(dir / "bad.gguf");
  o.vocab_from = (dir / "missing.gguf").string();
  EXPECT_EQ(SynthesizeGguf(o).code(), StatusCode::kNotFound);
  EXPECT_FALSE(std::filesystem::exists(dir / "bad.gguf"));
  EXPECT_FALSE(std::filesystem::exists(dir / "bad.gguf.tmp"));
}

}  // namespace
}  // namespace flashlm::layout
