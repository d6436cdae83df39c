// The FFN thresholds file: round trip, and every way a file can be wrong for the store it is used
// with (damaged, another store, another shape, missing, malformed) refused with a clear error.
#include "layout/ffn_thresholds.h"

#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <sstream>

#include "tests/test_util.h"

namespace flashlm::layout {
namespace {

FfnThresholds Sample() {
  FfnThresholds t;
  t.store_identity = 0x0123456789abcdefULL;
  t.hidden_dim = 172;
  t.target_sparsity = 0.7;
  t.tokens = 258;
  t.thresholds = {0.125f, 0.3f, 1e-7f, 2.5f, 0.0f};
  t.calibrated_sparsity = {0.70, 0.71, 0.7005, 0.702, 0.7};
  return t;
}

std::string Read(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}
void Write(const std::filesystem::path& p, const std::string& s) {
  std::ofstream(p, std::ios::binary | std::ios::trunc) << s;
}

TEST(FfnThresholdsTest, RoundTrip) {
  testing::ScratchDir dir;
  const std::string path = (dir / "t.json").string();
  const FfnThresholds t = Sample();
  ASSERT_TRUE(SaveFfnThresholds(t, path).ok());
  auto back = LoadFfnThresholds(path, t.store_identity, 5, 172);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->store_identity, t.store_identity);
  EXPECT_EQ(back->hidden_dim, t.hidden_dim);
  EXPECT_EQ(back->target_sparsity, t.target_sparsity);
  EXPECT_EQ(back->tokens, t.tokens);
  EXPECT_EQ(back->thresholds, t.thresholds);  // floats exactly
  EXPECT_EQ(back->calibrated_sparsity, t.calibrated_sparsity);
}

TEST(FfnThresholdsTest, DamagedFileIsCorruption) {
  testing::ScratchDir dir;
  const std::string path = (dir / "t.json").string();
  ASSERT_TRUE(SaveFfnThresholds(Sample(), path).ok());
  std::string text = Read(path);
  // A changed threshold (still valid JSON, still in range): only the checksum catches it.
  const size_t at = text.find("0.125");
  ASSERT_NE(at, std::string::npos) << text;
  text[at + 2] = '2';
  Write(path, text);
  auto r = LoadFfnThresholds(path, Sample().store_identity, 5, 172);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kCorruption);
  EXPECT_NE(r.status().message().find("checksum"), std::string::npos) << r.status().ToString();

  // Cut short: not JSON.
  Write(path, Read(path).substr(0, 40));
  auto cut = LoadFfnThresholds(path, Sample().store_identity, 5, 172);
  EXPECT_EQ(cut.status().code(), StatusCode::kCorruption) << cut.status().ToString();
  // JSON but not ours.
  Write(path, "[1, 2, 3]");
  EXPECT_EQ(LoadFfnThresholds(path, 1, 5, 172).status().code(), StatusCode::kCorruption);
  Write(path, "{\"format\": \"other\"}");
  EXPECT_EQ(LoadFfnThresholds(path, 1, 5, 172).status().code(), StatusCode::kCorruption);
}

TEST(FfnThresholdsTest, AnotherStoreOrShapeIsRefused) {
  testing::ScratchDir dir;
  const std::string path = (dir / "t.json").string();
  ASSERT_TRUE(SaveFfnThresholds(Sample(), path).ok());
  auto other = LoadFfnThresholds(path, 0x1111, 5, 172);
  ASSERT_FALSE(other.ok());
  EXPECT_EQ(other.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(other.status().message().find("another store"), std::string::npos)
      << other.status().ToString();
  auto layers = LoadFfnThresholds(path, Sample().store_identity, 6, 172);
  EXPECT_EQ(layers.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(layers.status().message().find("5 layers of 172"), std::string::npos)
      << layers.status().ToString();
  auto hidden = LoadFfnThresholds(path, Sample().store_identity, 5, 64);
  EXPECT_EQ(hidden.status().code(), StatusCode::kInvalidArgument);
}

TEST(FfnThresholdsTest, MissingFileSaysHowToMakeOne) {
  testing::ScratchDir dir;
  auto r = LoadFfnThresholds((dir / "none.json").string(), 1, 5, 172);
  EXPECT_EQ(r.status().code(), StatusCode::kNotFound);
  EXPECT_NE(r.status().message().find("flashlm calibrate"), std::string::npos)
      << r.status().ToString();
}

TEST(FfnThresholdsTest, OutOfRangeValuesAreNotSaved) {
  testing::ScratchDir dir;
  const std::string path = (dir / "t.json").string();
  FfnThresholds t = Sample();
  t.thresholds[1] = -1.0f;
  EXPECT_EQ(SaveFfnThresholds(t, path).code(), StatusCode::kInvalidArgument);
  t = Sample();
  t.thresholds[2] = std::nanf("");
  EXPECT_EQ(SaveFfnThresholds(t, path).code(), StatusCode::kInvalidArgument);
  t = Sample();
  t.target_sparsity = 1.0;
  EXPECT_EQ(SaveFfnThresholds(t, path).code(), StatusCode::kInvalidArgument);
  t = Sample();
  t.calibrated_sparsity.pop_back();
  EXPECT_EQ(SaveFfnThresholds(t, path).code(), StatusCode::kInvalidArgument);
  t = Sample();
  t.thresholds.clear();
  t.calibrated_sparsity.clear();
  EXPECT_EQ(SaveFfnThresholds(t, path).code(), StatusCode::kInvalidArgument);
  EXPECT_FALSE(std::filesystem::exists(path));  // nothing half-written
}

}  // namespace
}  // namespace flashlm::layout
