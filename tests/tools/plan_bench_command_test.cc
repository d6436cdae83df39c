// End-to-end checks of `flashlm plan` and `flashlm bench` through the built binary: the brief's
// arithmetic for the 7B shape, every kind of model, bad input exiting 2 with a message, and a
// small bench sweep that streams, predicts and writes its CSV, JSON and plot.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>
#include <string>

#include "tests/test_util.h"
#include "tests/tools/run_flashlm.h"

namespace flashlm::tools {
namespace {

using ::flashlm::testing::CmdRun;

CmdRun Flashlm(const std::string& args) { return ::flashlm::testing::RunFlashlm(args); }

nlohmann::json ParseJson(const std::string& text) {
  return nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
}

TEST(PlanCommandTest, ReproducesTheBriefsSevenBillionExample) {
  CmdRun r = Flashlm("plan --shape 7b --dtype q4_0 --ctx 8192 --kv-dtype q8_0 --dram-gbps 58");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("the brief's formula (int8, 1 byte, d = dim 4096, one sequence): 2.15 GB "
                       "(2 GiB)"),
            std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("6.74 G parameters"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("DRAM bandwidth binds"), std::string::npos) << r.out;

  CmdRun j = Flashlm("plan --shape 7b --dtype q4_0 --ctx 32768 --kv-dtype int8 --dram-gbps 58 "
                     "--json");
  ASSERT_EQ(j.exit_code, 0) << j.err;
  const nlohmann::json p = ParseJson(j.out);
  ASSERT_FALSE(p.is_discarded()) << j.out;
  EXPECT_EQ(p["kv_cache"]["brief_int8_bytes"].get<double>(), 8.0 * (1ull << 30));
  EXPECT_EQ(p["kv_cache"]["bytes"].get<double>(), 8.0 * (1ull << 30));
  EXPECT_NEAR(p["weights"]["parameters"].get<double>() / 1e9, 6.74, 0.01);
  // q4_0: 18 bytes per 32 values, 3.79 GB where the brief counts 3.5 GB at 4 bits.
  EXPECT_NEAR(p["weights"]["bytes"].get<double>() / 1e9, 3.79, 0.01);
  const double tok_s = p["resident"]["speed"]["dram_tok_s"].get<double>();
  EXPECT_NEAR(tok_s, 58e9 / (p["resident"]["speed"]["weight_bytes_per_token"].get<double>() +
                             8.0 * (1ull << 30)),
              1e-9);
  EXPECT_EQ(p["resident"]["speed"]["binding"], "DRAM bandwidth");
}

TEST(PlanCommandTest, RunsOnEveryKindOfModel) {
  ::flashlm::testing::ScratchDir dir;
  const std::string gguf = (dir / "tiny.gguf").string();
  ASSERT_EQ(Flashlm("synth --shape tiny --dtype q8_0 --out " + gguf).exit_code, 0);
  const std::string store = (dir / "store").string();
  ASSERT_EQ(Flashlm("repack " + gguf + " " + store + " --no-progress").exit_code, 0);
  for (const std::string& model : {gguf, store}) {
    CmdRun r = Flashlm("plan " + model + " --dram-gbps 10 --json");
    ASSERT_EQ(r.exit_code, 0) << model << ": " << r.err;
    const nlohmann::json p = ParseJson(r.out);
    ASSERT_FALSE(p.is_discarded()) << r.out;
    EXPECT_EQ(p["model"]["measured"].get<bool>(), model == store);
    EXPECT_GT(p["memory"]["minimum_budget_bytes"].get<uint64_t>(), 0u);
    EXPECT_GT(p["weights"]["bytes"].get<uint64_t>(), 0u);
  }
  // A flash profile measured on the spot, on the store's data file.
  CmdRun measured = Flashlm("plan " + store + " --dram-gbps 10 --flash measure --json");
  ASSERT_EQ(measured.exit_code, 0) << measured.err;
  const nlohmann::json mp = ParseJson(measured.out);
  ASSERT_FALSE(mp.is_discarded()) << measured.out;
  EXPECT_NE(mp["flash_profile"]["source"].get<std::string>().find("(measured)"),
            std::string::npos);
  EXPECT_EQ(mp["flash_profile"]["queue_depth_max"].get<uint32_t>(), 16u);
  CmdRun shape = Flashlm("plan --shape 1b --dtype q8_0 --dram-gbps 20");
  EXPECT_EQ(shape.exit_code, 0) << shape.err;
  // The shared model in its three formats, where present.
  const std::filesystem::path bin = ::flashlm::testing::SharedModel("stories260K/stories260K.bin");
  const std::filesystem::path tok = ::flashlm::testing::SharedModel("stories260K/tok512.bin");
  const std::filesystem::path hf = ::flashlm::testing::SharedModel("stories260K-hf-derived");
  if (bin.empty() || tok.empty() || hf.empty()) {
    GTEST_SKIP() << "shared stories260K models not found under "
                 << ::flashlm::testing::SharedModelsDir();
  }
  CmdRun b = Flashlm("plan " + bin.string() + " --tokenizer " + tok.string() + " --dram-gbps 10");
  EXPECT_EQ(b.exit_code, 0) << b.err;
  EXPECT_NE(b.out.find("model: llama2c"), std::string::npos) << b.out;
  CmdRun h = Flashlm("plan " + hf.string() + " --dram-gbps 10");
  EXPECT_EQ(h.exit_code, 0) << h.err;
  EXPECT_NE(h.out.find("model: safetensors"), std::string::npos) << h.out;
}

TEST(PlanCommandTest, BadInputExitsTwoWithAMessage) {
  ::flashlm::testing::ScratchDir dir;
  struct Case {
    std::string args, message;
  };
  std::ofstream(dir / "bad.json") << "not json";
  const Case cases[] = {
      {"plan --shape 13b", "unknown shape"},
      {"plan /no/such/model.gguf", "no such file"},
      {"plan --shape tiny --mem-budget 1K --dram-gbps 1", "below the minimum"},
      {"plan --shape tiny --fire-rate 0", "--fire-rate"},
      {"plan --shape tiny --kv-dtype q4_0", "--kv-dtype"},
      {"plan --shape tiny --flash " + (dir / "bad.json").string(), "iobench"},
      {"plan", "give a MODEL or --shape"},
      {"plan --shape tiny --flash measure", "needs a model file"},
  };
  for (const Case& c : cases) {
    CmdRun r = Flashlm(c.args);
    EXPECT_EQ(r.exit_code, 2) << c.args << "\n" << r.all();
    EXPECT_NE(r.err.find(c.message), std::string::npos) << c.args << "\n" << r.err;
  }
}

TEST(BenchCommandTest, SweepStreamsPredictsAndWritesItsOutputs) {
  ::flashlm::testing::ScratchDir dir;
  const std::string gguf = (dir / "m.gguf").string();
  ASSERT_EQ(Flashlm("synth --shape 15m --dtype q8_0 --out " + gguf).exit_code, 0);
  const std::string store = (dir / "store").string();
  ASSERT_EQ(Flashlm("repack " + gguf + " " + store + " --no-progress").exit_code, 0);
  // A flash profile as iobench writes it.
  const std::string profile = (dir / "profile.json").string();
  std::ofstream(profile) << R"({"points": [
      {"pattern": "random", "direct": true, "block_bytes": 4096, "queue_depth": 32, "mib_per_s": 100},
      {"pattern": "random", "direct": true, "block_bytes": 1048576, "queue_depth": 32, "mib_per_s": 1000}]})";
  const std::string out = (dir / "b").string();
  CmdRun r = Flashlm("bench " + store + " --budgets all,auto,30M,1K --chunk-bundles 16 --tokens 4 " +
                     "--prompt-tokens 4 --repeat 1 --no-drop-caches --flash " + profile +
                     " --csv " + out + ".csv --json " + out + ".json --plot " + out + ".svg");
  ASSERT_EQ(r.exit_code, 0) << r.all();
  EXPECT_NE(r.err.find("skipped"), std::string::npos) << r.err;  // 1K: below the minimum
  std::ifstream in(out + ".json");
  const nlohmann::json j = nlohmann::json::parse(in, nullptr, false);
  ASSERT_FALSE(j.is_discarded());
  ASSERT_EQ(j["points"].size(), 3u);
  const nlohmann::json& all = j["points"][0];
  const nlohmann::json& automatic = j["points"][1];
  const nlohmann::json& streamed = j["points"][2];
  // auto: the budget --mem-budget auto would take, printed with its bytes.
  std::smatch m;
  ASSERT_TRUE(std::regex_search(r.err, m, std::regex("--budgets auto: [^(]*\\(([0-9]+) bytes")))
      << r.err;
  EXPECT_EQ(automatic["budget"], "auto");
  EXPECT_EQ(automatic["budget_bytes"].get<uint64_t>(), std::stoull(m[1].str()));
  EXPECT_EQ(all["budget"], "all");
  EXPECT_EQ(all["bytes_per_token"].get<double>(), 0.0);
  EXPECT_GT(all["decode_tok_s"].get<double>(), 0.0);
  EXPECT_EQ(streamed["budget_bytes"].get<uint64_t>(), 30u << 20);
  EXPECT_GT(streamed["bytes_per_token"].get<double>(), 0.0);
  EXPECT_GT(streamed["mean_read_bytes"].get<double>(), 0.0);
  EXPECT_GT(streamed["predicted_tok_s"].get<double>(), 0.0);
  EXPECT_GT(streamed["predicted_flash_tok_s"].get<double>(), 0.0);
  EXPECT_EQ(streamed["dram_from"], "resident decode");
  EXPECT_LE(streamed["planned_bytes"].get<double>(), double(30u << 20));
  EXPECT_TRUE(std::filesystem::exists(out + ".csv"));
  EXPECT_TRUE(std::filesystem::exists(out + ".svg"));
}

TEST(BenchCommandTest, BadInputExitsTwo) {
  ::flashlm::testing::ScratchDir dir;
  const std::string gguf = (dir / "t.gguf").string();
  ASSERT_EQ(Flashlm("synth --shape tiny --dtype f32 --out " + gguf).exit_code, 0);
  const std::string store = (dir / "store").string();
  ASSERT_EQ(Flashlm("repack " + gguf + " " + store + " --no-progress").exit_code, 0);
  struct Case {
    std::string args, message;
  };
  const Case cases[] = {
      {"bench " + gguf, "not a store"},
      {"bench " + store + " --coalesce maybe", "--coalesce"},
      {"bench " + store + " --chunk-bundles 0", "--chunk-bundles"},
      {"bench " + store + " --budgets 1K --no-drop-caches", "every point"},
      {"bench " + store + " --tokens 0", "--tokens"},
      {"bench " + store + " --plot x.txt", "--plot"},
  };
  for (const Case& c : cases) {
    CmdRun r = Flashlm(c.args);
    EXPECT_EQ(r.exit_code, 2) << c.args << "\n" << r.all();
    EXPECT_NE(r.err.find(c.message), std::string::npos) << c.args << "\n" << r.err;
  }
}

}  // namespace
}  // namespace flashlm::tools
