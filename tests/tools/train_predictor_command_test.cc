// `flashlm train-predictor` and `--sparsity predictor` through the built binary: a trained store
// generates and scores a text, printing the predictor's share of FLOPs and bytes and its
// precision; bad flags exit 2; predictor files that are damaged, missing or of another store
// exit 2 with a message naming the problem.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>
#include <sstream>
#include <string>

#include "tests/test_util.h"
#include "tests/tools/run_flashlm.h"

namespace flashlm::tools {
namespace {

using ::flashlm::testing::CmdRun;
namespace fs = std::filesystem;

CmdRun Flashlm(const std::string& args) {
  return ::flashlm::testing::RunFlashlm(args, "timeout -s KILL 120 ");
}

class TrainPredictorCommandTest : public ::testing::Test {
 protected:
  void SetUp() override {
    gguf_ = (dir_ / "m.gguf").string();
    ASSERT_EQ(Flashlm("synth --shape tiny --seed 4 --dtype q8_0 --out " + gguf_).exit_code, 0);
    store_ = (dir_ / "store").string();
    CmdRun r = Flashlm("repack " + gguf_ + " " + store_ + " --bundle gate-up-down --no-progress");
    ASSERT_EQ(r.exit_code, 0) << r.all();
    text_ = (dir_ / "text.txt").string();
    std::ofstream t(text_);
    for (int i = 0; i < 6; ++i) {
      t << "Once upon a time there was a little dog. The dog liked to run in the park with the "
           "ball, and the sun was warm on the grass. "
        << i << "\n";
    }
  }
  ::flashlm::testing::ScratchDir dir_;
  std::string gguf_, store_, text_;
};

TEST_F(TrainPredictorCommandTest, TrainsAndGenerates) {
  CmdRun r = Flashlm("train-predictor " + store_ + " --text " + text_ +
                     " --rank 8 --epochs 3 --fire-fraction 0.2");
  ASSERT_EQ(r.exit_code, 0) << r.all();
  EXPECT_TRUE(fs::exists(fs::path(store_) / "ffn_predictor.bin"));
  EXPECT_NE(r.out.find("held-out recall"), std::string::npos) << r.out;
  CmdRun g = Flashlm("generate " + store_ +
                     " --sparsity predictor --predictor-cut 0.3 -n 8 --temp 0 -p hello "
                     "--mem-budget 0");
  ASSERT_EQ(g.exit_code, 0) << g.all();
  EXPECT_NE(g.err.find("predictor sparsity"), std::string::npos) << g.err;
  EXPECT_NE(g.err.find("% of FFN FLOPs"), std::string::npos) << g.err;
  EXPECT_NE(g.err.find("precision"), std::string::npos) << g.err;
  CmdRun p = Flashlm("perplexity " + store_ + " --sparsity predictor --text " + text_);
  ASSERT_EQ(p.exit_code, 0) << p.all();
  EXPECT_NE(p.out.find("perplexity:"), std::string::npos) << p.out;
  // bench sweeps the predictor's cuts as sparsity modes: cut 0 computes every neuron, a high cut
  // fewer than dense.
  const std::string json = (dir_ / "bench.json").string();
  CmdRun b = Flashlm("bench " + store_ + " --sparsity dense,predictor:0,predictor:0.9 " +
                     "--budgets all --tokens 4 --prompt-tokens 4 --repeat 1 --no-drop-caches " +
                     "--json " + json);
  ASSERT_EQ(b.exit_code, 0) << b.all();
  std::ifstream in(json);
  const nlohmann::json j = nlohmann::json::parse(in, nullptr, false);
  ASSERT_FALSE(j.is_discarded());
  ASSERT_EQ(j["points"].size(), 3u);
  EXPECT_EQ(j["points"][0]["sparsity"], "dense");
  EXPECT_EQ(j["points"][0]["ffn_computed_fraction"].get<double>(), 1.0);
  EXPECT_EQ(j["points"][1]["sparsity"], "predictor:0");
  EXPECT_EQ(j["points"][1]["ffn_computed_fraction"].get<double>(), 1.0);
  EXPECT_EQ(j["points"][2]["sparsity"], "predictor:0.9");
  EXPECT_LT(j["points"][2]["ffn_computed_fraction"].get<double>(), 1.0);
}

TEST_F(TrainPredictorCommandTest, BadFlagsAreRefused) {
  for (const std::string bad : {"--rank 0", "--rank 65", "--rank 8 --fire-fraction 1",
                                "--rank 8 --heldout 0", "--rank 8 --epochs 0", "--rank 8 --lr -1",
                                "--rank 8 --sample-mib 0", "--rank 8 --sparsity relu"}) {
    CmdRun r = Flashlm("train-predictor " + store_ + " --text " + text_ + " " + bad);
    EXPECT_EQ(r.exit_code, 2) << bad << ": " << r.all();
  }
  CmdRun ckpt = Flashlm("train-predictor " + gguf_ + " --text " + text_ + " --rank 4");
  EXPECT_EQ(ckpt.exit_code, 2) << ckpt.all();
  EXPECT_FALSE(fs::exists(fs::path(store_) / "ffn_predictor.bin"));
  for (const std::string bad :
       {"--predictor-cut 1.5", "--predictor-cut -0.5", "--predictor-cut nan"}) {
    CmdRun g = Flashlm("generate " + store_ + " --sparsity predictor -n 2 --temp 0 " + bad);
    EXPECT_EQ(g.exit_code, 2) << bad << ": " << g.all();
  }
  for (const std::string bad : {"predictor:1.5", "predictor:", "predictor:x", "sparse"}) {
    CmdRun b = Flashlm("bench " + store_ + " --sparsity " + bad + " --no-drop-caches");
    EXPECT_EQ(b.exit_code, 2) << bad << "\n" << b.all();
    EXPECT_NE(b.err.find("--sparsity"), std::string::npos) << b.err;
  }
  CmdRun only = Flashlm("generate " + store_ + " --predictor-cut 0.5 -n 2 --temp 0");
  EXPECT_EQ(only.exit_code, 2) << only.all();
  EXPECT_NE(only.err.find("--sparsity predictor"), std::string::npos) << only.err;
}

TEST_F(TrainPredictorCommandTest, DamagedMissingOrForeignPredictorsAreRefused) {
  const std::string gen = " --sparsity predictor -n 4 --temp 0 -p hello";
  CmdRun missing = Flashlm("generate " + store_ + gen);
  EXPECT_EQ(missing.exit_code, 2) << missing.all();
  EXPECT_NE(missing.err.find("train-predictor"), std::string::npos) << missing.err;

  ASSERT_EQ(
      Flashlm("train-predictor " + store_ + " --text " + text_ + " --rank 4 --epochs 1").exit_code,
      0);
  const fs::path file = fs::path(store_) / "ffn_predictor.bin";
  std::stringstream ss;
  ss << std::ifstream(file, std::ios::binary).rdbuf();
  const std::string good = ss.str();
  std::string damaged = good;
  damaged[good.size() / 2] = static_cast<char>(damaged[good.size() / 2] ^ 0x01);
  std::ofstream(file, std::ios::binary | std::ios::trunc) << damaged;
  CmdRun bad = Flashlm("generate " + store_ + gen);
  EXPECT_EQ(bad.exit_code, 2) << bad.all();
  EXPECT_NE(bad.err.find("checksum"), std::string::npos) << bad.err;
  std::ofstream(file, std::ios::binary | std::ios::trunc) << good;
  ASSERT_EQ(Flashlm("generate " + store_ + gen).exit_code, 0);

  const std::string gguf2 = (dir_ / "m2.gguf").string(), store2 = (dir_ / "store2").string();
  ASSERT_EQ(Flashlm("synth --shape tiny --seed 5 --dtype q8_0 --out " + gguf2).exit_code, 0);
  ASSERT_EQ(
      Flashlm("repack " + gguf2 + " " + store2 + " --bundle gate-up-down --no-progress").exit_code,
      0);
  CmdRun foreign = Flashlm("generate " + store2 + gen + " --predictor " + file.string());
  EXPECT_EQ(foreign.exit_code, 2) << foreign.all();
  EXPECT_NE(foreign.err.find("another store"), std::string::npos) << foreign.err;
}

// `flashlm plan` with --sparsity predictor plans the budget as generate does: the predictor's
// DRAM is charged (its own item among the always-resident parts), so the plan it prints at a
// budget is the one generate prints. Without the predictor file plan refuses as generate does.
TEST_F(TrainPredictorCommandTest, PlanChargesThePredictorAsGenerateDoes) {
  const std::string flags = " --sparsity predictor --mem-budget 8400000";
  CmdRun missing = Flashlm("plan " + store_ + flags + " --dram-gbps 10");
  EXPECT_EQ(missing.exit_code, 2) << missing.all();
  EXPECT_NE(missing.err.find("train-predictor"), std::string::npos) << missing.err;

  ASSERT_EQ(
      Flashlm("train-predictor " + store_ + " --text " + text_ + " --rank 8 --epochs 1").exit_code,
      0);
  // The residency plan block: from "residency plan:" to the line before "model (layers)".
  auto plan_block = [](const std::string& text) {
    const size_t b = text.find("residency plan:");
    const size_t e = text.find("  model (layers)", b);
    return b == std::string::npos || e == std::string::npos ? std::string() : text.substr(b, e - b);
  };
  CmdRun g = Flashlm("generate " + store_ + flags + " -n 2 --temp 0 -p hello");
  ASSERT_EQ(g.exit_code, 0) << g.all();
  CmdRun p = Flashlm("plan " + store_ + flags + " --dram-gbps 10");
  ASSERT_EQ(p.exit_code, 0) << p.all();
  const std::string generated = plan_block(g.err), planned = plan_block(p.out);
  ASSERT_FALSE(generated.empty()) << g.err;
  EXPECT_NE(generated.find("FFN predictor"), std::string::npos) << generated;
  EXPECT_EQ(planned, generated);
  EXPECT_NE(p.out.find(", FFN predictor "), std::string::npos) << p.out;  // the memory line

  CmdRun j = Flashlm("plan " + store_ + flags + " --dram-gbps 10 --json");
  ASSERT_EQ(j.exit_code, 0) << j.all();
  const nlohmann::json pj = nlohmann::json::parse(j.out, nullptr, false);
  ASSERT_FALSE(pj.is_discarded()) << j.out;
  const nlohmann::json& parts = pj["budget"]["plan"]["always_resident"];
  ASSERT_TRUE(parts.contains("FFN predictor")) << parts.dump();
  EXPECT_GT(parts["FFN predictor"].get<uint64_t>(), 0u);
  // Dense asks for no predictor: none is charged.
  CmdRun dense = Flashlm("plan " + store_ + " --sparsity dense --mem-budget 8400000 --dram-gbps 10");
  ASSERT_EQ(dense.exit_code, 0) << dense.all();
  EXPECT_EQ(dense.out.find("FFN predictor"), std::string::npos) << dense.out;
}

// --lookahead reads each layer's guessed bundles ahead and changes nothing else: with exact relu
// sparsity (ReLU model, gate+up-down store) and with the predictor's own (gate-up-down store), at
// the minimum budget (every bundle streamed, chunks of 32 so that this tiny model's FFN is not
// cheaper to pin than to stream), the generated tokens equal the same run's
// without it, and the stats count bundles read ahead and the ones used. Bad uses exit 2.
TEST_F(TrainPredictorCommandTest, LookaheadChangesOnlyWhenReadsGoOut) {
  const std::string gguf = (dir_ / "relu.gguf").string();
  ASSERT_EQ(Flashlm("synth --shape tiny --activation relu --fire-rate 0.2 --hot-skew 1 --seed 6 "
                    "--dtype q8_0 --out " + gguf)
                .exit_code,
            0);
  struct Case {
    std::string bundle, sparsity;
  };
  for (const Case& c : {Case{"gate+up-down", "--sparsity relu"},
                        Case{"gate-up-down", "--sparsity predictor --predictor-cut 0.3"}}) {
    SCOPED_TRACE(c.bundle);
    const std::string store = (dir_ / c.bundle).string();
    ASSERT_EQ(Flashlm("repack " + gguf + " " + store + " --bundle " + c.bundle +
                      " --align 512 --no-progress")
                  .exit_code,
              0);
    const std::string g = "generate " + store + " -p 'Once upon a time' -n 12 --temp 0 " +
                          "--ignore-eos --ctx 64 --chunk-bundles 32 " + c.sparsity;
    if (c.sparsity == "--sparsity relu") {  // no predictor yet
      CmdRun none = Flashlm(g + " --lookahead 0.5");
      EXPECT_EQ(none.exit_code, 2) << none.all();
      EXPECT_NE(none.err.find("train-predictor"), std::string::npos) << none.err;
    }
    CmdRun t = Flashlm("train-predictor " + store + " --text " + text_ + " --rank 8 --epochs 2");
    ASSERT_EQ(t.exit_code, 0) << t.all();
    const std::string json = (dir_ / "stats.json").string();
    auto run = [&](const std::string& extra) {  // at its own minimum (the predictor counts)
      CmdRun tiny = Flashlm(g + extra + " --mem-budget 1");
      std::smatch m;
      EXPECT_TRUE(std::regex_search(tiny.err, m, std::regex("minimum of ([0-9]+) bytes")))
          << tiny.err;
      CmdRun r = Flashlm(g + extra + " --mem-budget " + m[1].str() + " --stats-json " + json);
      EXPECT_EQ(r.exit_code, 0) << r.all();
      std::ifstream in(json);
      return nlohmann::json::parse(in, nullptr, false);
    };
    const nlohmann::json plain = run(""), ahead = run(" --lookahead 0.3");
    ASSERT_FALSE(plain.is_discarded());
    ASSERT_FALSE(ahead.is_discarded());
    ASSERT_TRUE(plain["ids"].is_array());
    ASSERT_GE(plain["ids"].size(), 12u);
    EXPECT_EQ(plain["ids"], ahead["ids"]);
    EXPECT_EQ(plain["io"]["ffn_neurons_computed"], ahead["io"]["ffn_neurons_computed"]);
    const nlohmann::json& f0 = plain["ffn"];
    const nlohmann::json& f1 = ahead["ffn"];
    EXPECT_EQ(f0["bundles_prefetched"].get<uint64_t>(), 0u);
    EXPECT_GT(f1["bundles_prefetched"].get<uint64_t>(), 0u) << f1.dump();
    EXPECT_GT(f1["prefetch_used"].get<uint64_t>(), 0u) << f1.dump();
    EXPECT_LE(f1["prefetch_used"].get<uint64_t>(), f1["bundles_prefetched"].get<uint64_t>());
    // The same bundles are served; what was read ahead and used is not read again.
    EXPECT_EQ(f0["bundles_streamed"], f1["bundles_streamed"]);
    EXPECT_EQ(f0["lookahead_flops"].get<uint64_t>(), 0u);
    EXPECT_GT(f1["lookahead_flops"].get<uint64_t>(), 0u) << f1.dump();
    // With every bundle pinned (budget 0 = unlimited) there is nothing to read ahead: the
    // predictor is not run for it, and the output is the same.
    CmdRun all = Flashlm(g + " --lookahead 0.3 --mem-budget 0 --stats-json " + json);
    EXPECT_EQ(all.exit_code, 0) << all.all();
    std::ifstream in(json);
    const nlohmann::json unlimited = nlohmann::json::parse(in, nullptr, false);
    ASSERT_FALSE(unlimited.is_discarded());
    EXPECT_EQ(unlimited["ids"], plain["ids"]);
    EXPECT_EQ(unlimited["ffn"]["lookahead_flops"].get<uint64_t>(), 0u) << unlimited["ffn"].dump();
    EXPECT_EQ(unlimited["ffn"]["bundles_prefetched"].get<uint64_t>(), 0u);
  }
  const std::string relu = (dir_ / "gate+up-down").string();
  for (const std::string bad :
       {"--sparsity relu --lookahead 1.5", "--sparsity relu --lookahead -0.5",
        "--sparsity relu --lookahead nan", "--sparsity relu --lookahead x",
        "--sparsity dense --lookahead 0.5"}) {
    CmdRun r = Flashlm("generate " + relu + " -n 2 --temp 0 " + bad);
    EXPECT_EQ(r.exit_code, 2) << bad << ": " << r.all();
    EXPECT_NE(r.err.find("--lookahead"), std::string::npos) << r.err;
  }
}

}  // namespace
}  // namespace flashlm::tools
