// End-to-end checks of `flashlm activations` and `repack --activations --hot-threshold` through
// the built binary: the statistics file, the firing rules, the hot set in the store, greedy
// output of a hot-first stories260K (resident and out of core), exit codes for bad input.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>
#include <sstream>
#include <string>

#include "layout/bundle_layout.h"
#include "tests/test_util.h"
#include "tests/tools/run_flashlm.h"

namespace flashlm::tools {
namespace {

using ::flashlm::testing::CmdRun;
namespace fs = std::filesystem;

CmdRun Flashlm(const std::string& args) { return ::flashlm::testing::RunFlashlm(args); }

std::string ReadFile(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

double Mean(const std::vector<float>& v) {
  double s = 0;
  for (float x : v) s += x;
  return s / static_cast<double>(v.size());
}

// stories260K is a SiLU model: by default the top 20% of |h| fire on every token, i.e. exactly
// round(0.2 * 172) = 34 neurons, so every layer's mean frequency is 34/172.
TEST(ActivationsCommandTest, SiluTopFractionAndHotFirstGreedyMatchesGolden) {
  FLASHLM_REQUIRE_SHARED_MODEL(bin, "stories260K/stories260K.bin");
  FLASHLM_REQUIRE_SHARED_MODEL(tok, "stories260K/tok512.bin");
  FLASHLM_REQUIRE_SHARED_MODEL(golden, "stories260K/golden_greedy_t0_256steps.txt");
  ::flashlm::testing::ScratchDir dir;
  const std::string stats = (dir / "stats.json").string();
  const std::string model = bin.string() + " --tokenizer " + tok.string();
  CmdRun r = Flashlm("activations " + model + " --text " + golden.string() + " --out " + stats +
                     " --ctx 100 --threads 2");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(r.out, m, std::regex("activations: ([0-9]+) tokens"))) << r.out;
  EXPECT_GT(std::stoi(m[1].str()), 200);
  EXPECT_NE(r.out.find("34 of 172 neurons"), std::string::npos) << r.out;
  auto loaded = layout::LoadActivationStats(stats);
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  ASSERT_EQ(loaded->layers.size(), 5u);
  for (const auto& layer : loaded->layers) {
    ASSERT_EQ(layer.size(), 172u);
    EXPECT_NEAR(Mean(layer), 34.0 / 172.0, 1e-5);
  }
  // --top-fraction 0.5: 86 of 172 per token.
  const std::string half = (dir / "half.json").string();
  CmdRun h = Flashlm("activations " + model + " --text " + golden.string() + " --out " + half +
                     " --top-fraction 0.5");
  ASSERT_EQ(h.exit_code, 0) << h.err;
  auto half_stats = layout::LoadActivationStats(half);
  ASSERT_TRUE(half_stats.ok());
  for (const auto& layer : half_stats->layers) EXPECT_NEAR(Mean(layer), 0.5, 1e-5);

  // Hot-first store with the hot set at 0.3; inspect reports the same counts.
  const std::string store = (dir / "store").string();
  CmdRun rp = Flashlm("repack " + model + " " + store + " --activations " + stats +
                      " --hot-threshold 0.3 --no-progress");
  ASSERT_EQ(rp.exit_code, 0) << rp.err;
  EXPECT_NE(rp.out.find("hot set"), std::string::npos) << rp.out;
  CmdRun in = Flashlm("inspect " + store + " --json");
  ASSERT_EQ(in.exit_code, 0) << in.err;
  nlohmann::json j = nlohmann::json::parse(in.out);
  ASSERT_EQ(j["ffn_layers"].size(), 5u);
  uint32_t total_hot = 0;
  for (uint32_t l = 0; l < 5; ++l) {
    uint32_t want = 0;
    for (float f : loaded->layers[l]) want += f >= 0.3;
    EXPECT_EQ(j["ffn_layers"][l]["hot_count"].get<uint32_t>(), want) << "layer " << l;
    EXPECT_TRUE(j["ffn_layers"][l]["hot_first"].get<bool>());
    total_hot += want;
  }
  EXPECT_GT(total_hot, 0u);
  EXPECT_EQ(j["layout"]["hot_threshold"].get<double>(), 0.3);
  CmdRun text = Flashlm("inspect " + store);
  EXPECT_NE(text.out.find("hot set "), std::string::npos) << text.out;

  // A store is accepted as input too (its FFN as neuron bundles, every one resident): same
  // weights, same statistics; and out of core at its smallest budget, the same again.
  const std::string again = (dir / "again.json").string();
  const std::string act = "activations " + store + " --text " + golden.string() +
                          " --ctx 100 --threads 2 --out " + again;
  CmdRun st = Flashlm(act);
  ASSERT_EQ(st.exit_code, 0) << st.err;
  auto again_stats = layout::LoadActivationStats(again);
  ASSERT_TRUE(again_stats.ok());
  EXPECT_EQ(again_stats->layers, loaded->layers);
  CmdRun act_tiny = Flashlm(act + " --mem-budget 1");
  std::smatch budget;
  ASSERT_TRUE(std::regex_search(act_tiny.err, budget, std::regex("minimum of ([0-9]+) bytes")))
      << act_tiny.err;
  CmdRun act_ooc = Flashlm(act + " --mem-budget " + budget[1].str());
  ASSERT_EQ(act_ooc.exit_code, 0) << act_ooc.err;
  EXPECT_NE(act_ooc.err.find("streaming the rest"), std::string::npos) << act_ooc.err;
  auto ooc_stats = layout::LoadActivationStats(again);
  ASSERT_TRUE(ooc_stats.ok());
  EXPECT_EQ(ooc_stats->layers, loaded->layers);

  // Greedy output of the hot-first store equals the golden text, resident and out of core.
  std::string want = ReadFile(golden);
  while (!want.empty() && want.back() == '\n') want.pop_back();
  const std::string g = "generate " + store + " -n 256 --temp 0 --threads 2 ";
  CmdRun dram = Flashlm(g);
  ASSERT_EQ(dram.exit_code, 0) << dram.err;
  EXPECT_EQ(dram.out, want + "\n");
  CmdRun tiny = Flashlm(g + "--mem-budget 1");
  ASSERT_TRUE(std::regex_search(tiny.err, m, std::regex("minimum of ([0-9]+) bytes"))) << tiny.err;
  CmdRun ooc = Flashlm(g + "--mem-budget " + m[1].str());
  ASSERT_EQ(ooc.exit_code, 0) << ooc.err;
  EXPECT_EQ(ooc.out, want + "\n");
}

// A synthetic ReLU model whose neurons fire on 10% of tokens on average (flashlm synth
// --fire-rate): the default rule (h != 0) measures about that rate; --threshold 0 counts the same
// neurons (|h| > 0); a huge threshold counts none.
TEST(ActivationsCommandTest, ReluModelMeasuresTheSynthesizedFireRate) {
  ::flashlm::testing::ScratchDir dir;
  const std::string gguf = (dir / "relu.gguf").string();
  CmdRun s = Flashlm(
      "synth --shape tiny --activation relu --fire-rate 0.1 --hot-skew 1 --seed 3 "
      "--out " +
      gguf);
  ASSERT_EQ(s.exit_code, 0) << s.err;
  const fs::path text = dir / "text.txt";
  {
    std::ofstream t(text);
    for (int i = 0; i < 20; ++i) t << "Once upon a time a small dog ran " << i << " times.\n";
  }
  const std::string base = "activations " + gguf + " --text " + text.string() + " --ctx 128";
  const std::string relu = (dir / "relu.json").string();
  CmdRun r = Flashlm(base + " --out " + relu);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("h != 0 (ReLU)"), std::string::npos) << r.out;
  auto st = layout::LoadActivationStats(relu);
  ASSERT_TRUE(st.ok());
  ASSERT_EQ(st->layers.size(), 2u);
  for (const auto& layer : st->layers) {
    ASSERT_EQ(layer.size(), 256u);
    EXPECT_NEAR(Mean(layer), 0.1, 0.03);
  }
  const std::string zero = (dir / "zero.json").string();
  ASSERT_EQ(Flashlm(base + " --threshold 0 --out " + zero).exit_code, 0);
  auto zt = layout::LoadActivationStats(zero);
  ASSERT_TRUE(zt.ok());
  EXPECT_EQ(zt->layers, st->layers);
  const std::string huge = (dir / "huge.json").string();
  ASSERT_EQ(Flashlm(base + " --threshold 1e30 --out " + huge).exit_code, 0);
  auto ht = layout::LoadActivationStats(huge);
  ASSERT_TRUE(ht.ok());
  for (const auto& layer : ht->layers) EXPECT_EQ(Mean(layer), 0.0);
}

TEST(ActivationsCommandTest, BadInputExitsWithUsageError) {
  FLASHLM_REQUIRE_SHARED_MODEL(gguf, "stories260K-gguf/stories260K.gguf");
  FLASHLM_REQUIRE_SHARED_MODEL(golden, "stories260K/golden_greedy_t0_256steps.txt");
  ::flashlm::testing::ScratchDir dir;
  std::ofstream(dir / "empty.txt").flush();
  const std::string out = " --out " + (dir / "a.json").string();
  const std::string a = "activations " + gguf.string() + " --text " + golden.string();
  struct Case {
    std::string args, message;
  };
  const std::vector<Case> cases = {
      {"activations /nonexistent/model --text " + golden.string() + out, "nonexistent"},
      {"activations " + gguf.string() + " --text /nonexistent/text.txt" + out,
       "text.txt: no such file"},
      {"activations " + gguf.string() + " --text " + (dir / "empty.txt").string() + out,
       "is empty"},
      {a + out + " --top-fraction 0.3 --threshold 1", "not both"},
      {a + out + " --top-fraction 0", "--top-fraction"},
      {a + out + " --top-fraction 1.5", "--top-fraction"},
      {a + out + " --threshold -1", "--threshold"},
      {a + out + " --ctx 0", "--ctx"},
      {a + out + " --lazy-prefill 0.5", "--lazy-prefill cannot be used"},
      {a + out + " --ctx 100000", "exceeds"},
      {a + " --out " + (dir / "no" / "such" / "a.json").string(), "no folder"},
      {a, "--out"},
  };
  for (const Case& c : cases) {
    CmdRun r = Flashlm(c.args);
    EXPECT_EQ(r.exit_code, 2) << c.args << "\n" << r.err;
    EXPECT_NE(r.err.find(c.message), std::string::npos) << c.args << "\n" << r.err;
  }
  EXPECT_FALSE(fs::exists(dir / "a.json"));
  // An output that cannot be written (a folder) is a runtime failure, after the run.
  CmdRun w = Flashlm(a + " --out " + dir.path().string());
  EXPECT_EQ(w.exit_code, 1) << w.err;
  EXPECT_NE(w.err.find("cannot write"), std::string::npos) << w.err;

  // repack: --hot-threshold needs --activations and must be in [0, 1].
  const std::string store = (dir / "store").string();
  CmdRun no_stats = Flashlm("repack " + gguf.string() + " " + store + " --hot-threshold 0.4");
  EXPECT_EQ(no_stats.exit_code, 2);
  EXPECT_NE(no_stats.err.find("needs --activations"), std::string::npos) << no_stats.err;
  CmdRun stats_run = Flashlm(a + out);
  ASSERT_EQ(stats_run.exit_code, 0) << stats_run.err;
  CmdRun bad = Flashlm("repack " + gguf.string() + " " + store + " --activations " +
                       (dir / "a.json").string() + " --hot-threshold 1.5");
  EXPECT_EQ(bad.exit_code, 2);
  EXPECT_NE(bad.err.find("--hot-threshold"), std::string::npos) << bad.err;
  EXPECT_FALSE(fs::exists(store));
}

}  // namespace
}  // namespace flashlm::tools
