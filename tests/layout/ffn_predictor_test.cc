// The FFN predictor file: round trip, and every way a file can be wrong for the store it is used
// with (damaged anywhere, truncated, another store, another shape, missing) refused clearly.
#include "layout/ffn_predictor.h"

#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <sstream>

#include "layout/dtype.h"
#include "tests/test_util.h"

namespace flashlm::layout {
namespace {

FfnPredictor Sample() {
  FfnPredictor p;
  p.store_identity = 0x0123456789abcdefULL;
  p.dim = 8;
  p.hidden = 12;
  p.rank = 3;
  p.relu = false;
  p.fire_fraction = 0.25f;
  p.tokens = 99;
  for (uint32_t l = 0; l < 2; ++l) {
    FfnPredictorLayer layer;
    layer.fire_cut = 0.5f + l;
    layer.recall = 0.9f;
    layer.precision = 0.4f;
    layer.predicted_fraction = 0.3f;
    for (uint64_t i = 0; i < uint64_t{p.rank} * p.dim; ++i) layer.a.push_back(0.01f * i - l);
    for (uint64_t i = 0; i < uint64_t{p.hidden} * p.rank; ++i) layer.b.push_back(-0.02f * i);
    for (uint32_t i = 0; i < p.hidden; ++i) layer.bias.push_back(0.5f * i);
    p.layers.push_back(layer);
  }
  return p;
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

TEST(FfnPredictorTest, RoundTrip) {
  testing::ScratchDir dir;
  const std::string path = (dir / "p.bin").string();
  const FfnPredictor p = Sample();
  ASSERT_TRUE(SaveFfnPredictor(p, path).ok());
  EXPECT_EQ(Read(path).size(), FfnPredictorFileBytes(2, 8, 12, 3));
  Result<FfnPredictor> back = LoadFfnPredictor(path, p.store_identity, 2, 8, 12);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->rank, 3u);
  EXPECT_FALSE(back->relu);
  EXPECT_EQ(back->fire_fraction, 0.25f);
  EXPECT_EQ(back->tokens, 99u);
  ASSERT_EQ(back->layers.size(), 2u);
  for (size_t l = 0; l < 2; ++l) {
    EXPECT_EQ(back->layers[l].a, p.layers[l].a);
    EXPECT_EQ(back->layers[l].b, p.layers[l].b);
    EXPECT_EQ(back->layers[l].bias, p.layers[l].bias);
    EXPECT_EQ(back->layers[l].fire_cut, p.layers[l].fire_cut);
  }
}

// Held as f16: every matrix value rounded to nearest (within half an f16 step of the f32), the
// f32 copies freed, the bias untouched and the bytes halved; a value beyond f16's range leaves
// the predictor as it was.
TEST(FfnPredictorTest, HoldAsF16RoundsTheMatricesAndFreesTheF32) {
  const FfnPredictor f32 = Sample();
  FfnPredictor p = Sample();
  ASSERT_TRUE(HoldAsF16(&p));
  for (size_t l = 0; l < p.layers.size(); ++l) {
    const FfnPredictorLayer& got = p.layers[l];
    const FfnPredictorLayer& want = f32.layers[l];
    ASSERT_TRUE(got.f16());
    EXPECT_TRUE(got.a.empty() && got.b.empty());
    ASSERT_EQ(got.a_f16.size(), want.a.size());
    ASSERT_EQ(got.b_f16.size(), want.b.size());
    for (size_t i = 0; i < want.a.size(); ++i) {
      const float v = want.a[i], h = F16ToF32(got.a_f16[i]);
      EXPECT_LE(std::fabs(h - v), std::fabs(v) * std::ldexp(1.0f, -11) + 1e-7f) << l << " a " << i;
    }
    for (size_t i = 0; i < want.b.size(); ++i) {
      const float v = want.b[i], h = F16ToF32(got.b_f16[i]);
      EXPECT_LE(std::fabs(h - v), std::fabs(v) * std::ldexp(1.0f, -11) + 1e-7f) << l << " b " << i;
    }
    EXPECT_EQ(got.bias, want.bias);
  }
  EXPECT_EQ(p.LayerBytes(true), (3u * 8 + 12u * 3) * 2 + 12u * 4);
  EXPECT_EQ(p.LayerBytes(false), (3u * 8 + 12u * 3) * 4 + 12u * 4);
  FfnPredictor big = Sample();
  big.layers[1].b[5] = 70000.0f;
  EXPECT_FALSE(HoldAsF16(&big));
  EXPECT_FALSE(big.layers[0].f16());
  EXPECT_EQ(big.layers[0].a, f32.layers[0].a);
}

TEST(FfnPredictorTest, EveryFlippedByteIsRefused) {
  testing::ScratchDir dir;
  const std::string path = (dir / "p.bin").string();
  const FfnPredictor p = Sample();
  ASSERT_TRUE(SaveFfnPredictor(p, path).ok());
  const std::string good = Read(path);
  for (size_t i = 0; i < good.size(); i += 7) {
    std::string bad = good;
    bad[i] = static_cast<char>(bad[i] ^ 0x10);
    Write(path, bad);
    Result<FfnPredictor> r = LoadFfnPredictor(path, p.store_identity, 2, 8, 12);
    ASSERT_FALSE(r.ok()) << "byte " << i;
    EXPECT_EQ(r.status().code(), StatusCode::kCorruption) << "byte " << i;
  }
  Write(path, good.substr(0, good.size() - 9));  // truncated
  EXPECT_EQ(LoadFfnPredictor(path, p.store_identity, 2, 8, 12).status().code(),
            StatusCode::kCorruption);
  Write(path, "");
  EXPECT_EQ(LoadFfnPredictor(path, p.store_identity, 2, 8, 12).status().code(),
            StatusCode::kCorruption);
}

TEST(FfnPredictorTest, AnotherStoreOrShapeIsRefused) {
  testing::ScratchDir dir;
  const std::string path = (dir / "p.bin").string();
  const FfnPredictor p = Sample();
  ASSERT_TRUE(SaveFfnPredictor(p, path).ok());
  Result<FfnPredictor> other = LoadFfnPredictor(path, p.store_identity + 1, 2, 8, 12);
  ASSERT_FALSE(other.ok());
  EXPECT_EQ(other.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(other.status().message().find("another store"), std::string::npos);
  EXPECT_EQ(LoadFfnPredictor(path, p.store_identity, 3, 8, 12).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(LoadFfnPredictor(path, p.store_identity, 2, 8, 13).status().code(),
            StatusCode::kInvalidArgument);
  Result<FfnPredictor> missing =
      LoadFfnPredictor((dir / "none.bin").string(), p.store_identity, 2, 8, 12);
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("train-predictor"), std::string::npos);
}

TEST(FfnPredictorTest, SaveRefusesBadValues) {
  testing::ScratchDir dir;
  FfnPredictor p = Sample();
  p.layers[1].b[4] = std::nanf("");
  EXPECT_EQ(SaveFfnPredictor(p, (dir / "p.bin").string()).code(), StatusCode::kInvalidArgument);
  p = Sample();
  p.layers[0].bias.pop_back();
  EXPECT_EQ(SaveFfnPredictor(p, (dir / "p.bin").string()).code(), StatusCode::kInvalidArgument);
  EXPECT_FALSE(std::filesystem::exists(dir / "p.bin"));
}

}  // namespace
}  // namespace flashlm::layout
