#include "engine/generator.h"

#include <gtest/gtest.h>

#include <fstream>

#include "engine/session.h"
#include "layout/checkpoint.h"
#include "layout/llama2c_reader.h"
#include "layout/repack.h"
#include "tests/engine/test_models.h"
#include "tests/test_util.h"

namespace flashlm::engine {
namespace {

using engine::testing::ReadLlama2c;
using engine::testing::ReferenceModel;
using engine::testing::RefWeights;
using engine::testing::ToCheckpoint;

std::vector<int32_t> ReadIds(const std::filesystem::path& p) {
  std::ifstream in(p);
  std::vector<int32_t> ids;
  for (int32_t id; in >> id;) ids.push_back(id);
  return ids;
}

struct Stories {
  RefWeights w;
  std::unique_ptr<Tokenizer> tok;
  std::unique_ptr<DramWeightStore> store;
};

// stories260K through the test-only llama2.c reader (the layout readers have their own tests;
// tools_test covers the three real formats end to end).
bool LoadStories(const std::filesystem::path& bin, const std::filesystem::path& tok, Stories& s) {
  if (!ReadLlama2c(bin.string(), s.w)) return false;
  auto vocab = layout::ReadLlama2cTokenizer(tok.string(), s.w.c.vocab_size);
  if (!vocab.ok()) return false;
  s.tok = std::move(Tokenizer::Create(*vocab)).value();
  auto ck = ToCheckpoint(s.w, layout::DType::kF32);
  auto store = DramWeightStore::Load(*ck);
  if (!store.ok()) return false;
  s.store = std::move(store).value();
  return true;
}

TEST(GeneratorTest, Stories260KGreedyMatchesGolden) {
  FLASHLM_REQUIRE_SHARED_MODEL(bin, "stories260K/stories260K.bin");
  FLASHLM_REQUIRE_SHARED_MODEL(tokp, "stories260K/tok512.bin");
  FLASHLM_REQUIRE_SHARED_MODEL(golden, "stories260K/golden_greedy_t0_256steps.ids");
  Stories s;
  ASSERT_TRUE(LoadStories(bin, tokp, s));
  for (uint32_t threads : {1u, 2u}) {
    ThreadPool pool(threads);
    auto model = std::move(Transformer::Create(*s.store, pool, {})).value();
    SamplerOptions so;
    so.temperature = 0;
    auto sampler = std::move(Sampler::Create(s.w.c.vocab_size, so)).value();
    Generator gen(*model, *s.tok);
    std::string text;
    std::vector<int32_t> prompt = s.tok->Encode("", true);
    auto stats = gen.Generate(prompt, 256, *sampler, {}, [&](std::string_view t) { text += t; });
    ASSERT_TRUE(stats.ok()) << stats.status().ToString();
    const std::vector<int32_t> want = ReadIds(golden);
    ASSERT_EQ(want.size(), 257u);
    EXPECT_EQ(gen.ids(), want) << "threads " << threads;
    EXPECT_EQ(stats->generated_tokens, 256u);
    EXPECT_EQ(stats->prompt_tokens, 1u);
    EXPECT_EQ(text.rfind("Once upon a time, there was a little girl named Lily.", 0), 0u) << text;
  }
}

// Greedy continuations of several prompts agree with the independent scalar reference.
TEST(GeneratorTest, Stories260KAgreesWithScalarReferenceOnPrompts) {
  FLASHLM_REQUIRE_SHARED_MODEL(bin, "stories260K/stories260K.bin");
  FLASHLM_REQUIRE_SHARED_MODEL(tokp, "stories260K/tok512.bin");
  Stories s;
  ASSERT_TRUE(LoadStories(bin, tokp, s));
  ThreadPool pool(2);
  TransformerOptions opt;
  opt.max_batch = 5;  // several prefill batches
  auto model = std::move(Transformer::Create(*s.store, pool, opt)).value();
  for (const char* text : {"Once upon a time", "The cat sat on the mat. It was happy",
                           "Tom and Sue went to the park to play with a red ball and a dog."}) {
    std::vector<int32_t> prompt = s.tok->Encode(text, true);
    SamplerOptions so;
    so.temperature = 0;
    auto sampler = std::move(Sampler::Create(s.w.c.vocab_size, so)).value();
    Generator gen(*model, *s.tok);
    ASSERT_TRUE(gen.Generate(prompt, 40, *sampler, {}, nullptr).ok());
    ReferenceModel ref(s.w);
    std::vector<int32_t> ids = prompt;
    std::vector<float> logits;
    for (size_t pos = 0; ids.size() < prompt.size() + 40; ++pos) {
      logits = ref.Forward(ids[pos], static_cast<int>(pos));
      if (pos + 1 < ids.size()) continue;
      const int32_t next =
          static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
      if (next == s.tok->eos_id()) break;
      ids.push_back(next);
    }
    EXPECT_EQ(gen.ids(), ids) << text;
  }
}

TEST(GeneratorTest, StopStringsAndBadPrompts) {
  FLASHLM_REQUIRE_SHARED_MODEL(bin, "stories260K/stories260K.bin");
  FLASHLM_REQUIRE_SHARED_MODEL(tokp, "stories260K/tok512.bin");
  Stories s;
  ASSERT_TRUE(LoadStories(bin, tokp, s));
  ThreadPool pool(1);
  TransformerOptions opt;
  opt.max_context = 64;
  auto model = std::move(Transformer::Create(*s.store, pool, opt)).value();
  SamplerOptions so;
  so.temperature = 0;
  auto sampler = std::move(Sampler::Create(s.w.c.vocab_size, so)).value();
  Generator gen(*model, *s.tok);
  std::string text;
  std::vector<int32_t> prompt = {s.tok->bos_id()};
  auto stats =
      gen.Generate(prompt, 100, *sampler, {"little girl"}, [&](std::string_view t) { text += t; });
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->stop_reason, "stop_string");
  EXPECT_EQ(text, "Once upon a time, there was a ");
  // The context ends generation.
  stats = gen.Generate(prompt, 100, *sampler, {}, nullptr);
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->stop_reason, "context");
  EXPECT_EQ(gen.ids().size(), 65u);  // 64 positions run, the last sampled token kept
  std::vector<int32_t> long_prompt(64, 5);
  EXPECT_EQ(gen.Generate(long_prompt, 1, *sampler, {}, nullptr).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_FALSE(gen.Generate({}, 1, *sampler, {}, nullptr).ok());
}

// The golden run from each real source format through layout::OpenCheckpoint.
// The step-by-step API: Start then Next yields the same tokens and text as Generate, one token
// per step, with the text of each step; Cancel ends it; Next before Start is refused.
TEST(GeneratorTest, StepByStepAndCancel) {
  FLASHLM_REQUIRE_SHARED_MODEL(bin, "stories260K/stories260K.bin");
  FLASHLM_REQUIRE_SHARED_MODEL(tokp, "stories260K/tok512.bin");
  Stories s;
  ASSERT_TRUE(LoadStories(bin, tokp, s));
  ThreadPool pool(2);
  auto model = std::move(Transformer::Create(*s.store, pool, {})).value();
  SamplerOptions so;
  so.temperature = 0;
  auto sampler = std::move(Sampler::Create(s.w.c.vocab_size, so)).value();
  Generator gen(*model, *s.tok);
  EXPECT_EQ(gen.Next().status().code(), StatusCode::kFailedPrecondition);
  const std::vector<int32_t> prompt = s.tok->Encode("Once upon a time", true);
  std::string whole;
  auto stats = gen.Generate(prompt, 30, *sampler, {}, [&](std::string_view t) { whole += t; });
  ASSERT_TRUE(stats.ok());
  const std::vector<int32_t> want = gen.ids();
  GenerateOptions o;
  o.max_new_tokens = 30;
  ASSERT_TRUE(gen.Start(prompt, o, *sampler).ok());
  std::string stepped;
  std::vector<int32_t> tokens;
  for (int i = 0; i < 100; ++i) {
    auto step = gen.Next();
    ASSERT_TRUE(step.ok()) << step.status().ToString();
    stepped += step->text;
    if (step->token >= 0) tokens.push_back(step->token);
    if (step->done) break;
  }
  EXPECT_EQ(stepped, whole);
  EXPECT_EQ(tokens, std::vector<int32_t>(want.begin() + prompt.size(), want.end()));
  EXPECT_EQ(gen.stats().generated_tokens, 30u);
  EXPECT_EQ(gen.stats().stop_reason, "length");
  auto after = gen.Next();  // done stays done
  ASSERT_TRUE(after.ok());
  EXPECT_TRUE(after->done);
  // A cancel check ends generation between steps.
  int steps = 0;
  stats = gen.Generate(prompt, 30, *sampler, {}, nullptr, [&] { return ++steps > 5; });
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->stop_reason, "cancelled");
  EXPECT_EQ(stats->generated_tokens, 5u);
  EXPECT_EQ(gen.ids(), std::vector<int32_t>(want.begin(), want.begin() + prompt.size() + 5));
}

TEST(GeneratorTest, GoldenFromEachSourceFormat) {
  FLASHLM_REQUIRE_SHARED_MODEL(golden, "stories260K/golden_greedy_t0_256steps.ids");
  FLASHLM_REQUIRE_SHARED_MODEL(tokp, "stories260K/tok512.bin");
  const std::vector<int32_t> want = ReadIds(golden);
  struct Source {
    const char* path;
    bool needs_tokenizer;
  };
  int ran = 0;
  std::string skipped;
  for (Source src :
       {Source{"stories260K/stories260K.bin", true}, Source{"stories260K/stories260K.v1.bin", true},
        Source{"stories260K-gguf/stories260K.gguf", false},
        Source{"stories260K-hf-derived", false}}) {
    const std::filesystem::path p = ::flashlm::testing::SharedModel(src.path);
    if (p.empty()) {
      skipped += std::string(src.path) + " (absent) ";
      continue;
    }
    layout::OpenOptions open;
    if (src.needs_tokenizer) open.tokenizer_path = tokp.string();
    auto ck = layout::OpenCheckpoint(p.string(), open);
    if (!ck.ok() && ck.status().code() == StatusCode::kNotSupported) {
      skipped += std::string(src.path) + " (" + ck.status().ToString() + ") ";
      continue;
    }
    ASSERT_TRUE(ck.ok()) << src.path << ": " << ck.status().ToString();
    layout::Vocab vocab = (*ck)->vocab();
    if (vocab.empty()) {  // the HF folder has no tokenizer file: use tok512.bin
      auto v = layout::ReadLlama2cTokenizer(tokp.string(), (*ck)->config().vocab_size);
      ASSERT_TRUE(v.ok()) << v.status().ToString();
      vocab = *v;
    }
    auto tok = Tokenizer::Create(vocab);
    ASSERT_TRUE(tok.ok()) << src.path << ": " << tok.status().ToString();
    // The checkpoint itself, then a flashlm store repacked from it (weights read back from the
    // store's data file through layout::OpenCheckpoint).
    ::flashlm::testing::ScratchDir dir;
    const std::string store_path = (dir / "store").string();
    auto repacked = layout::Repack(**ck, store_path, {});
    ASSERT_TRUE(repacked.ok()) << src.path << ": " << repacked.status().ToString();
    auto store_ck = layout::OpenCheckpoint(store_path);
    ASSERT_TRUE(store_ck.ok()) << store_ck.status().ToString();
    EXPECT_EQ((*store_ck)->format(), "store");
    for (layout::Checkpoint* source : {ck->get(), store_ck->get()}) {
      auto weights = DramWeightStore::Load(*source);
      ASSERT_TRUE(weights.ok()) << src.path << ": " << weights.status().ToString();
      ThreadPool pool(2);
      auto model = std::move(Transformer::Create(**weights, pool, {})).value();
      SamplerOptions so;
      so.temperature = 0;
      auto sampler = std::move(Sampler::Create(source->config().vocab_size, so)).value();
      Generator gen(*model, **tok);
      ASSERT_TRUE(gen.Generate((*tok)->Encode("", true), 256, *sampler, {}, nullptr).ok());
      EXPECT_EQ(gen.ids(), want) << src.path << " via " << source->format();
      ++ran;
    }
    // What `flashlm generate STORE` runs: the store through the session, every weight resident
    // as neuron bundles (no budget), read once with no second copy.
    SessionOptions session_options;
    session_options.threads = 2;
    session_options.tokenizer_path = tokp.string();  // used only when the store has none
    auto session = Session::Open(store_path, session_options);
    ASSERT_TRUE(session.ok()) << session.status().ToString();
    ASSERT_NE((*session)->store(), nullptr);
    EXPECT_FALSE((*session)->plan()->streams());
    SamplerOptions so;
    so.temperature = 0;
    auto sampler = std::move(Sampler::Create((*session)->config().vocab_size, so)).value();
    Generator gen((*session)->model(), (*session)->tokenizer());
    ASSERT_TRUE(gen.Generate((*tok)->Encode("", true), 256, *sampler, {}, nullptr).ok());
    EXPECT_EQ(gen.ids(), want) << src.path << " via the session";
    ++ran;
  }
  EXPECT_GE(ran, 9);
  if (!skipped.empty()) std::printf("note: not run: %s\n", skipped.c_str());
}

}  // namespace
}  // namespace flashlm::engine
