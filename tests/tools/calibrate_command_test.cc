// `flashlm calibrate` and `--sparsity threshold` through the built binary: a calibrated store
// generates; bad flags, a checkpoint, a store without gate+up-down bundles and thresholds files
// that are damaged, missing or of another store exit 2 with a message naming the problem.
#include <gtest/gtest.h>

#include <fstream>
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

class CalibrateCommandTest : public ::testing::Test {
 protected:
  void SetUp() override {
    gguf_ = (dir_ / "m.gguf").string();
    ASSERT_EQ(Flashlm("synth --shape tiny --seed 4 --dtype q8_0 --out " + gguf_).exit_code, 0);
    store_ = (dir_ / "store").string();
    CmdRun r = Flashlm("repack " + gguf_ + " " + store_ + " --bundle gate+up-down --no-progress");
    ASSERT_EQ(r.exit_code, 0) << r.all();
    text_ = (dir_ / "text.txt").string();
    std::ofstream(text_) << "Once upon a time there was a little dog. The dog liked to run in "
                            "the park with the ball, and the sun was warm on the grass.\n";
  }
  ::flashlm::testing::ScratchDir dir_;
  std::string gguf_, store_, text_;
};

TEST_F(CalibrateCommandTest, CalibratesAndGenerates) {
  CmdRun r = Flashlm("calibrate " + store_ + " --text " + text_ + " --target-sparsity 0.6");
  ASSERT_EQ(r.exit_code, 0) << r.all();
  EXPECT_TRUE(fs::exists(fs::path(store_) / "ffn_thresholds.json"));
  // One line per layer (tiny: 2 layers), each skipping at least 0.6 of the calibration values.
  std::regex line("\\n +([0-9]+) +([0-9.e+-]+) +([0-9.]+)");
  int layers = 0;
  for (std::sregex_iterator it(r.out.begin(), r.out.end(), line), end; it != end; ++it) {
    EXPECT_GE(std::stod((*it)[3].str()), 0.6) << r.out;
    EXPECT_LT(std::stod((*it)[3].str()), 0.62) << r.out;
    ++layers;
  }
  EXPECT_EQ(layers, 2) << r.out;
  CmdRun g = Flashlm("generate " + store_ +
                     " --sparsity threshold -n 8 --temp 0 -p hello "
                     "--mem-budget 0");
  ASSERT_EQ(g.exit_code, 0) << g.all();
  EXPECT_NE(g.err.find("threshold sparsity"), std::string::npos) << g.err;
  CmdRun p = Flashlm("perplexity " + store_ + " --sparsity threshold --text " + text_);
  ASSERT_EQ(p.exit_code, 0) << p.all();
  EXPECT_NE(p.out.find("perplexity:"), std::string::npos) << p.out;
}

TEST_F(CalibrateCommandTest, BadTargetsAreRefused) {
  for (const char* bad : {"1", "1.5", "-0.1", "nan", "abc"}) {
    CmdRun r = Flashlm("calibrate " + store_ + " --text " + text_ + " --target-sparsity " + bad);
    EXPECT_EQ(r.exit_code, 2) << bad << ": " << r.all();
    EXPECT_NE(r.err.find("--target-sparsity"), std::string::npos) << bad << ": " << r.err;
  }
  CmdRun none = Flashlm("calibrate " + store_ + " --text " + text_);
  EXPECT_EQ(none.exit_code, 2) << none.all();
  CmdRun empty_text = Flashlm("calibrate " + store_ + " --text /dev/null --target-sparsity 0.5");
  EXPECT_EQ(empty_text.exit_code, 2) << empty_text.all();
  CmdRun sparse = Flashlm("calibrate " + store_ + " --text " + text_ +
                          " --target-sparsity 0.5 --sparsity threshold");
  EXPECT_EQ(sparse.exit_code, 2) << sparse.all();
  EXPECT_FALSE(fs::exists(fs::path(store_) / "ffn_thresholds.json"));
}

TEST_F(CalibrateCommandTest, CheckpointsAndStoresWithoutSeparateGateAreRefused) {
  CmdRun ckpt = Flashlm("calibrate " + gguf_ + " --text " + text_ + " --target-sparsity 0.5");
  EXPECT_EQ(ckpt.exit_code, 2) << ckpt.all();
  EXPECT_NE(ckpt.err.find("not a store"), std::string::npos) << ckpt.err;
  const std::string together = (dir_ / "together").string();
  ASSERT_EQ(Flashlm("repack " + gguf_ + " " + together + " --bundle gate-up-down --no-progress")
                .exit_code,
            0);
  CmdRun r = Flashlm("calibrate " + together + " --text " + text_ + " --target-sparsity 0.5");
  EXPECT_EQ(r.exit_code, 2) << r.all();
  EXPECT_NE(r.err.find("gate+up-down"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(fs::path(together) / "ffn_thresholds.json"));
  // Threshold mode on a checkpoint (no bundles) is refused too.
  CmdRun g = Flashlm("generate " + gguf_ + " --sparsity threshold -n 2 --temp 0");
  EXPECT_EQ(g.exit_code, 2) << g.all();
}

TEST_F(CalibrateCommandTest, DamagedMissingOrForeignThresholdsAreRefused) {
  const std::string gen = " --sparsity threshold -n 4 --temp 0 -p hello";
  CmdRun missing = Flashlm("generate " + store_ + gen);
  EXPECT_EQ(missing.exit_code, 2) << missing.all();
  EXPECT_NE(missing.err.find("flashlm calibrate"), std::string::npos) << missing.err;

  ASSERT_EQ(
      Flashlm("calibrate " + store_ + " --text " + text_ + " --target-sparsity 0.5").exit_code, 0);
  const fs::path file = fs::path(store_) / "ffn_thresholds.json";
  std::stringstream ss;
  ss << std::ifstream(file).rdbuf();
  const std::string good = ss.str();
  // A changed digit of a threshold: the checksum catches it.
  std::smatch m;
  ASSERT_TRUE(std::regex_search(good, m, std::regex("\"thresholds\": \\[\\s*[0-9]\\.([0-9])")));
  std::string damaged = good;
  const size_t at = static_cast<size_t>(m.position(1));
  damaged[at] = damaged[at] == '9' ? '1' : static_cast<char>(damaged[at] + 1);
  std::ofstream(file, std::ios::trunc) << damaged;
  CmdRun bad = Flashlm("generate " + store_ + gen);
  EXPECT_EQ(bad.exit_code, 2) << bad.all();
  EXPECT_NE(bad.err.find("checksum"), std::string::npos) << bad.err;
  std::ofstream(file, std::ios::trunc) << good;
  ASSERT_EQ(Flashlm("generate " + store_ + gen).exit_code, 0);

  // Another store (another seed, same shape): its file is refused here, and ours there.
  const std::string gguf2 = (dir_ / "m2.gguf").string(), store2 = (dir_ / "store2").string();
  ASSERT_EQ(Flashlm("synth --shape tiny --seed 5 --dtype q8_0 --out " + gguf2).exit_code, 0);
  ASSERT_EQ(
      Flashlm("repack " + gguf2 + " " + store2 + " --bundle gate+up-down --no-progress").exit_code,
      0);
  CmdRun foreign = Flashlm("generate " + store2 + gen + " --thresholds " + file.string());
  EXPECT_EQ(foreign.exit_code, 2) << foreign.all();
  EXPECT_NE(foreign.err.find("another store"), std::string::npos) << foreign.err;
  // Another shape: a store of a wider model.
  const std::string gguf3 = (dir_ / "m3.gguf").string(), store3 = (dir_ / "store3").string();
  ASSERT_EQ(Flashlm("synth --shape tiny --hidden 320 --dtype q8_0 --out " + gguf3).exit_code, 0);
  ASSERT_EQ(
      Flashlm("repack " + gguf3 + " " + store3 + " --bundle gate+up-down --no-progress").exit_code,
      0);
  CmdRun shape = Flashlm("generate " + store3 + gen + " --thresholds " + file.string());
  EXPECT_EQ(shape.exit_code, 2) << shape.all();
  // Store identity is checked first; either message names the mismatch.
  EXPECT_TRUE(shape.err.find("another store") != std::string::npos ||
              shape.err.find("layers of") != std::string::npos)
      << shape.err;
  // --thresholds without threshold mode.
  CmdRun stray = Flashlm("generate " + store_ + " -n 2 --thresholds " + file.string());
  EXPECT_EQ(stray.exit_code, 2) << stray.all();
  EXPECT_NE(stray.err.find("--thresholds"), std::string::npos) << stray.err;
}

}  // namespace
}  // namespace flashlm::tools
