#include "layout/checkpoint.h"

#include <gtest/gtest.h>

namespace flashlm::layout {
namespace {

TEST(TensorInfoTest, ShapeAccessors) {
  TensorInfo w{"blk.0.ffn_down.weight", DType::kF32, {64, 172}};
  EXPECT_EQ(w.rows(), 64u);
  EXPECT_EQ(w.cols(), 172u);
  EXPECT_EQ(w.num_values(), 64u * 172u);
  TensorInfo norm{"output_norm.weight", DType::kF32, {64}};
  EXPECT_EQ(norm.rows(), 1u);
  EXPECT_EQ(norm.cols(), 64u);
  EXPECT_EQ(norm.num_values(), 64u);
}

}  // namespace
}  // namespace flashlm::layout
