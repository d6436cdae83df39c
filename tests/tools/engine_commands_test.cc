// End-to-end checks of `flashlm generate | tokenize | perplexity` through the built binary, on
// the shared stories260K model and vocabularies: outputs, stdout/stderr separation, exit codes.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

#include "tests/test_util.h"
#include "tests/tools/run_flashlm.h"

namespace flashlm::tools {
namespace {

using ::flashlm::testing::CmdRun;

CmdRun Flashlm(const std::string& args) { return ::flashlm::testing::RunFlashlm(args); }

std::string ReadFile(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

TEST(EngineCommandsTest, GenerateGreedyMatchesGoldenTextAndIds) {
  FLASHLM_REQUIRE_SHARED_MODEL(gguf, "stories260K-gguf/stories260K.gguf");
  FLASHLM_REQUIRE_SHARED_MODEL(txt, "stories260K/golden_greedy_t0_256steps.txt");
  FLASHLM_REQUIRE_SHARED_MODEL(ids, "stories260K/golden_greedy_t0_256steps.ids");
  ::flashlm::testing::ScratchDir dir;
  const std::string json = (dir / "stats.json").string();
  CmdRun r =
      Flashlm("generate " + gguf.string() + " -n 256 --temp 0 --threads 2 --stats-json " + json);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::string golden = ReadFile(txt);
  while (!golden.empty() && golden.back() == '\n') golden.pop_back();
  EXPECT_EQ(r.out, golden + "\n");
  EXPECT_NE(r.err.find("prompt tokens: 1"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("decode:"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("time to first token"), std::string::npos) << r.err;
  const nlohmann::json stats = nlohmann::json::parse(ReadFile(json));
  std::vector<int32_t> want_ids;
  std::stringstream ws(ReadFile(ids));
  for (int32_t id; ws >> id;) want_ids.push_back(id);
  EXPECT_EQ(stats["ids"].get<std::vector<int32_t>>(), want_ids) << stats.dump();
  EXPECT_EQ(stats["generated_tokens"], 256) << stats.dump();
  EXPECT_EQ(stats["stop_reason"], "length");
  EXPECT_GT(stats["decode_tokens_per_s"].get<double>(), 0.0);
  // The decode's rate over the weights it reads: bytes a token times tokens a second.
  const double bytes = stats["weight_bytes_per_token"].get<double>();
  EXPECT_GT(bytes, 0.0) << stats.dump();
  EXPECT_NEAR(stats["decode_weight_gb_per_s"].get<double>(),
              bytes * stats["decode_tokens_per_s"].get<double>() / 1e9, 1e-9 * bytes);
  EXPECT_NE(r.err.find("GB of weights a token"), std::string::npos) << r.err;
}

TEST(EngineCommandsTest, GenerateEchoAndStop) {
  FLASHLM_REQUIRE_SHARED_MODEL(bin, "stories260K/stories260K.bin");
  FLASHLM_REQUIRE_SHARED_MODEL(tok, "stories260K/tok512.bin");
  CmdRun r = Flashlm("generate " + bin.string() + " --tokenizer " + tok.string() +
                     " -p 'Once upon a time' -n 40 --temp 0 --echo --stop Lily");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out.rfind("Once upon a time", 0), 0u) << r.out;
  EXPECT_EQ(r.out.find("Lily"), std::string::npos) << r.out;
  EXPECT_NE(r.err.find("stop: stop_string"), std::string::npos) << r.err;
  CmdRun plain = Flashlm("generate " + bin.string() + " --tokenizer " + tok.string() +
                         " -p 'Once upon a time' -n 5 --temp 0");
  ASSERT_EQ(plain.exit_code, 0) << plain.err;
  EXPECT_NE(plain.out.rfind("Once upon a time", 0), 0u) << plain.out;  // continuation only
  // Sampling with a seed is reproducible.
  const std::string sampled = "generate " + bin.string() + " --tokenizer " + tok.string() +
                              " -n 30 --temp 1 --top-p 0.9 --seed 7";
  CmdRun a = Flashlm(sampled), b = Flashlm(sampled);
  ASSERT_EQ(a.exit_code, 0);
  EXPECT_EQ(a.out, b.out);
}

TEST(EngineCommandsTest, BadInputExitsWithUsageError) {
  FLASHLM_REQUIRE_SHARED_MODEL(gguf, "stories260K-gguf/stories260K.gguf");
  const std::string g = "generate " + gguf.string();
  for (const std::string& args :
       {std::string("generate /nonexistent/model -n 3"), g + " -n 3000", g + " -n 3 --temp -1",
        g + " -n 3 --top-p 0", g + " -n 3 --min-p 1.5", g + " -n 3 --ctx 100000",
        g + " -n 3 --ctx 8 -p 'Once upon a time there was a cat'",
        std::string("tokenize /nonexistent x"), std::string("perplexity /nonexistent --text x")}) {
    CmdRun r = Flashlm(args);
    EXPECT_EQ(r.exit_code, 2) << args << "\n" << r.err;
    EXPECT_NE(r.err.find("flashlm"), std::string::npos) << args;
    EXPECT_TRUE(r.out.empty()) << args;
  }
}

// The paged KV cache from the command line: V pages spilled to --kv-dir give the golden text
// (f32 is exact), the kv: line reports what was read, nothing is left in the folder; bad
// --kv-* values are usage errors.
TEST(EngineCommandsTest, GeneratePagedKvSpilledMatchesGolden) {
  FLASHLM_REQUIRE_SHARED_MODEL(gguf, "stories260K-gguf/stories260K.gguf");
  FLASHLM_REQUIRE_SHARED_MODEL(txt, "stories260K/golden_greedy_t0_256steps.txt");
  ::flashlm::testing::ScratchDir dir;
  const std::string json = (dir / "stats.json").string();
  const std::string spill = (dir / "spill").string();
  std::filesystem::create_directories(spill);
  // 512 positions, 5 layers, 32-token pages: K 80 pages, minimum 80 + 16 + 5 pages of 4 KiB.
  const std::string g = "generate " + gguf.string() + " -n 256 --temp 0 --threads 2 --ctx 512";
  CmdRun r = Flashlm(g + " --kv-page-tokens 32 --kv-budget 420K --kv-dir " + spill +
                     " --stats-json " + json);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::string golden = ReadFile(txt);
  while (!golden.empty() && golden.back() == '\n') golden.pop_back();
  EXPECT_EQ(r.out, golden + "\n");
  EXPECT_NE(r.err.find("V spill on"), std::string::npos) << r.err;
  const nlohmann::json stats = nlohmann::json::parse(ReadFile(json));
  EXPECT_TRUE(stats["kv"]["spills"].get<bool>()) << stats.dump();
  EXPECT_GT(stats["kv"]["bytes_read"].get<uint64_t>(), 0u) << stats.dump();
  EXPECT_TRUE(std::filesystem::is_empty(spill));
  // Page selection of every page with K and V on flash (pool 200 KiB, below the 320 KiB of K
  // alone) is exact: the golden text again.
  CmdRun sel = Flashlm(g +
                       " --kv-page-tokens 32 --kv-budget 200K --kv-select pages --kv-spill kv"
                       " --kv-dir " +
                       spill + " --stats-json " + json);
  ASSERT_EQ(sel.exit_code, 0) << sel.err;
  EXPECT_EQ(sel.out, golden + "\n");
  EXPECT_NE(sel.err.find("select pages (K spill on)"), std::string::npos) << sel.err;
  const nlohmann::json sel_stats = nlohmann::json::parse(ReadFile(json));
  EXPECT_EQ(sel_stats["kv"]["spill"], "kv") << sel_stats.dump();
  EXPECT_GT(sel_stats["kv"]["bytes_read"].get<uint64_t>(), 0u) << sel_stats.dump();
  EXPECT_TRUE(std::filesystem::is_empty(spill));
  for (const std::string& bad :
       {g + " --kv-dtype q4_0", g + " --kv-page-tokens 0", g + " --kv-budget 1K",
        g + " --kv-budget x", g + " --kv-topn 0", g + " --kv-topn 200%", g + " --kv-select quest",
        g + " --kv-spill k", g + " --kv-spill kv", g + " --kv-select pages --kv-fetch rows",
        g + " --kv-budget 420K --kv-dir " + (dir / "missing").string()}) {
    CmdRun b = Flashlm(bad);
    EXPECT_NE(b.exit_code, 0) << bad;
    EXPECT_TRUE(b.out.empty()) << bad;
  }
}

// --prompt-cache: the first run saves the prompt's KV, a second run of the same prompt restores
// all but its last token and prints the same text, a longer prompt reuses the shared prefix and
// prints what a run without the cache prints; a damaged cache file or a checkpoint (no store
// identity) is an error with a non-zero exit, and the refused file is left as it was.
TEST(EngineCommandsTest, GeneratePromptCacheReusesAndRefuses) {
  FLASHLM_REQUIRE_SHARED_MODEL(bin, "stories260K/stories260K.bin");
  FLASHLM_REQUIRE_SHARED_MODEL(tok, "stories260K/tok512.bin");
  ::flashlm::testing::ScratchDir dir;
  const std::string store = (dir / "store").string();
  ASSERT_EQ(
      Flashlm("repack " + bin.string() + " " + store + " --tokenizer " + tok.string()).exit_code,
      0);
  const std::string cache = (dir / "prompt.cache").string();
  const std::string json = (dir / "stats.json").string();
  const std::string prompt = " -p 'Once upon a time there was a little girl named Lily' ";
  const std::string base = "generate " + store + " -n 30 --temp 0 --threads 2 --stats-json " +
                           json + " --prompt-cache " + cache;
  CmdRun first = Flashlm(base + prompt);
  ASSERT_EQ(first.exit_code, 0) << first.err;
  EXPECT_NE(first.err.find("prompt cache: 0 of"), std::string::npos) << first.err;
  EXPECT_NE(first.err.find("prompt saved"), std::string::npos) << first.err;
  CmdRun second = Flashlm(base + prompt);
  ASSERT_EQ(second.exit_code, 0) << second.err;
  EXPECT_EQ(second.out, first.out);
  const nlohmann::json stats = nlohmann::json::parse(ReadFile(json));
  EXPECT_EQ(stats["prompt_cache"]["restored_tokens"].get<uint32_t>() + 1,
            stats["prompt_tokens"].get<uint32_t>())
      << stats.dump();
  EXPECT_FALSE(stats["prompt_cache"]["saved"].get<bool>());
  const std::string longer = " -p 'Once upon a time there was a little girl named Lily. She' ";
  CmdRun reused = Flashlm(base + longer);
  CmdRun plain = Flashlm("generate " + store + " -n 30 --temp 0 --threads 2" + longer);
  ASSERT_EQ(reused.exit_code, 0) << reused.err;
  ASSERT_EQ(plain.exit_code, 0) << plain.err;
  EXPECT_EQ(reused.out, plain.out);
  EXPECT_EQ(reused.err.find("prompt cache: 0 of"), std::string::npos) << reused.err;
  // Damaged: refused, not used, not overwritten.
  ::flashlm::testing::FlipByte(cache, 100);
  const std::string damaged = ReadFile(cache);
  CmdRun refused = Flashlm(base + prompt);
  EXPECT_NE(refused.exit_code, 0);
  EXPECT_NE(refused.err.find("damaged"), std::string::npos) << refused.err;
  EXPECT_TRUE(refused.out.empty()) << refused.out;
  EXPECT_EQ(ReadFile(cache), damaged);
  CmdRun checkpoint = Flashlm("generate " + bin.string() + " --tokenizer " + tok.string() +
                              " -n 3 --prompt-cache " + cache);
  EXPECT_NE(checkpoint.exit_code, 0);
  EXPECT_NE(checkpoint.err.find("needs a flashlm store"), std::string::npos) << checkpoint.err;
  // A pruned prompt's KV is incomplete: the cache refuses to run with lazy prefill, file untouched.
  CmdRun lazy = Flashlm(base + prompt + " --lazy-prefill 0.5");
  EXPECT_EQ(lazy.exit_code, 2) << lazy.err;
  EXPECT_NE(lazy.err.find("--lazy-prefill"), std::string::npos) << lazy.err;
  EXPECT_EQ(ReadFile(cache), damaged);
}

TEST(EngineCommandsTest, TokenizeEveryKindOfSource) {
  FLASHLM_REQUIRE_SHARED_MODEL(vocab, "llama-spm-vocab-gguf/ggml-vocab-llama-spm.gguf");
  FLASHLM_REQUIRE_SHARED_MODEL(bin, "llama2c-tokenizer/tokenizer.bin");
  FLASHLM_REQUIRE_SHARED_MODEL(gguf, "stories260K-gguf/stories260K.gguf");
  for (const auto& p : {vocab, bin}) {
    CmdRun r = Flashlm("tokenize " + p.string() + " 'Hello world'");
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(r.out, "[1, 15043, 3186]\n");
    r = Flashlm("tokenize " + p.string() + " 'Hello world' --no-bos");
    EXPECT_EQ(r.out, "[15043, 3186]\n");
  }
  CmdRun r = Flashlm("tokenize " + gguf.string() + " ''");
  EXPECT_EQ(r.out, "[1]\n");
}

TEST(EngineCommandsTest, PerplexityIsFiniteAndLowOnModelText) {
  FLASHLM_REQUIRE_SHARED_MODEL(gguf, "stories260K-gguf/stories260K.gguf");
  FLASHLM_REQUIRE_SHARED_MODEL(txt, "stories260K/golden_greedy_t0_256steps.txt");
  CmdRun r = Flashlm("perplexity " + gguf.string() + " --text " + txt.string() + " --ctx 128");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  double ppl = 0;
  ASSERT_EQ(std::sscanf(r.out.c_str(), "perplexity: %lf", &ppl), 1) << r.out;
  // The model's own greedy text is very likely under it; random text over 512 tokens would be
  // in the hundreds.
  EXPECT_GT(ppl, 1.0);
  EXPECT_LT(ppl, 5.0);
}

// Lazy prefill from the command line: --lazy-prefill 1 prints the golden greedy text (exact),
// a pruning run prints its `lazy:` line and JSON (also over the paged KV cache, whose text equals
// the flat cache's, and with --kv-topn), bad values fail with nothing on stdout.
TEST(EngineCommandsTest, LazyPrefillFlags) {
  FLASHLM_REQUIRE_SHARED_MODEL(gguf, "stories260K-gguf/stories260K.gguf");
  FLASHLM_REQUIRE_SHARED_MODEL(txt, "stories260K/golden_greedy_t0_256steps.txt");
  ::flashlm::testing::ScratchDir dir;
  const std::string json = (dir / "s.json").string();
  const std::string g = "generate " + gguf.string() + " -n 256 --temp 0 --threads 2";
  CmdRun exact = Flashlm(g + " --lazy-prefill 1.0");
  ASSERT_EQ(exact.exit_code, 0) << exact.err;
  std::string golden = ReadFile(txt);
  while (!golden.empty() && golden.back() == '\n') golden.pop_back();
  EXPECT_EQ(exact.out, golden + "\n");
  EXPECT_EQ(exact.err.find("lazy:"), std::string::npos);
  CmdRun lazy = Flashlm(g + " --lazy-prefill 0.5 --lazy-layers 1,3 --max-batch 64 --stats-json " +
                        json + " -p 'Once upon a time, there was a little dog'");
  ASSERT_EQ(lazy.exit_code, 0) << lazy.err;
  EXPECT_NE(lazy.err.find("lazy: tokens per layer"), std::string::npos) << lazy.err;
  const nlohmann::json stats = nlohmann::json::parse(ReadFile(json));
  EXPECT_GT(stats["lazy"]["pruned"].get<uint64_t>(), 0u) << stats.dump();
  // With the paged KV cache (f32 pages: exact, so the same text as the flat cache) and with
  // top-N attention, pruning runs and says so.
  const std::string lz = g + " --lazy-prefill 0.5 -p 'Once upon a time, there was a little dog'";
  CmdRun flat = Flashlm(lz);
  CmdRun paged = Flashlm(lz + " --kv-page-tokens 16");
  CmdRun topn = Flashlm(lz + " --kv-topn 8");
  ASSERT_EQ(flat.exit_code, 0) << flat.err;
  ASSERT_EQ(paged.exit_code, 0) << paged.err;
  ASSERT_EQ(topn.exit_code, 0) << topn.err;
  EXPECT_EQ(paged.out, flat.out);
  EXPECT_NE(paged.err.find("lazy: tokens per layer"), std::string::npos) << paged.err;
  // With page selection of every page (exact over the positions each layer holds), K and V on
  // flash at a pool below K alone (ctx 512, 32-token pages: K is 320 KiB): the flat cache's text.
  const std::string spill = (dir / "spill").string();
  std::filesystem::create_directories(spill);
  CmdRun select = Flashlm(lz + " --ctx 512 --kv-page-tokens 32 --kv-budget 200K --kv-select pages" +
                          " --kv-spill kv --kv-dir " + spill + " --stats-json " + json);
  ASSERT_EQ(select.exit_code, 0) << select.err;
  CmdRun flat512 = Flashlm(lz + " --ctx 512");
  ASSERT_EQ(flat512.exit_code, 0) << flat512.err;
  EXPECT_EQ(select.out, flat512.out);
  EXPECT_NE(select.err.find("select pages (K spill on)"), std::string::npos) << select.err;
  const nlohmann::json select_stats = nlohmann::json::parse(ReadFile(json));
  EXPECT_GT(select_stats["lazy"]["pruned"].get<uint64_t>(), 0u) << select_stats.dump();
  EXPECT_GT(select_stats["kv"]["bytes_read"].get<uint64_t>(), 0u) << select_stats.dump();
  EXPECT_TRUE(std::filesystem::is_empty(spill));
  EXPECT_NE(topn.err.find("lazy: tokens per layer"), std::string::npos) << topn.err;
  for (const std::string& bad :
       {g + " --lazy-prefill 0", g + " --lazy-prefill 1.5", g + " --lazy-prefill x",
        g + " --lazy-prefill 0.5 --lazy-layers 4", g + " --lazy-prefill 0.5 --lazy-layers 2,1",
        g + " --lazy-prefill 0.5 --lazy-layers a", g + " --lazy-prefill 0.5 --lazy-layers 1,,2",
        g + " --lazy-layers 1", g + " --max-batch -1"}) {
    CmdRun b = Flashlm(bad);
    EXPECT_NE(b.exit_code, 0) << bad;
    EXPECT_TRUE(b.out.empty()) << bad;
  }
}

}  // namespace
}  // namespace flashlm::tools
