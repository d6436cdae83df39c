#include "layout/json_util.h"

#include <gtest/gtest.h>

#include <string>

namespace flashlm::layout {
namespace {

TEST(JsonUtilTest, ParsesWellFormedInput) {
  auto j = ParseUntrustedJson(R"({"a": [1, 2, {"b": "x]}"}]})", "test");
  ASSERT_TRUE(j.ok()) << j.status().ToString();
  EXPECT_EQ((*j)["a"][2]["b"], "x]}");
}

TEST(JsonUtilTest, RefusesDeepNestingAndGarbageWithoutThrowing) {
  std::string deep(100000, '[');
  auto d = ParseUntrustedJson(deep, "deep.json");
  EXPECT_EQ(d.status().code(), StatusCode::kCorruption);
  EXPECT_NE(std::string(d.status().message()).find("deep.json"), std::string::npos);
  // Brackets inside strings do not count towards the depth.
  std::string in_string = "{\"k\": \"" + std::string(1000, '[') + "\"}";
  EXPECT_TRUE(ParseUntrustedJson(in_string, "s").ok());
  EXPECT_EQ(ParseUntrustedJson("{\"a\": ", "t").status().code(), StatusCode::kCorruption);
}

}  // namespace
}  // namespace flashlm::layout
