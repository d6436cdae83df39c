#include "layout/gguf_writer.h"

#include <gtest/gtest.h>

#include <filesystem>

#include "layout/gguf_reader.h"
#include "tests/layout/layout_test_util.h"
#include "tests/test_util.h"

namespace flashlm::layout {
namespace {

Result<GgufFile> ParseFile(const std::filesystem::path& p, std::unique_ptr<ByteSource>* keep) {
  ASSIGN_OR_RETURN(*keep, OpenFileSource(p.string()));
  return GgufFile::Parse(**keep);
}

TEST(GgufWriterTest, RoundTripsEveryMetadataTypeAndTensorBytes) {
  flashlm::testing::ScratchDir dir;
  const auto path = dir / "all.gguf";
  GgufWriter w(64);
  w.AddMetadata("u8", GgufValue::Scalar(GgufType::kU8, 200, 0, 0));
  w.AddMetadata("i8", GgufValue::Scalar(GgufType::kI8, 0, -100, 0));
  w.AddMetadata("u16", GgufValue::Scalar(GgufType::kU16, 60000, 0, 0));
  w.AddMetadata("i16", GgufValue::Scalar(GgufType::kI16, 0, -30000, 0));
  w.AddMetadata("u32", GgufValue::U32(4000000000u));
  w.AddMetadata("i32", GgufValue::I32(-2000000000));
  w.AddMetadata("u64", GgufValue::U64(~uint64_t{0}));
  w.AddMetadata("i64", GgufValue::Scalar(GgufType::kI64, 0, INT64_MIN, 0));
  w.AddMetadata("f32", GgufValue::F32(1.5f));
  w.AddMetadata("f64", GgufValue::Scalar(GgufType::kF64, 0, 0, 2.25));
  w.AddMetadata("bool", GgufValue::Bool(true));
  w.AddMetadata("str", GgufValue::Str("h\xC3\xA9llo"));
  w.AddMetadata("strs", GgufValue::StrArray({"a", "", "ccc"}));
  w.AddMetadata("f32s", GgufValue::NumArray(GgufType::kF32, std::vector<float>{1, -2, 3.5f}));
  w.AddMetadata("i16s", GgufValue::NumArray(GgufType::kI16, std::vector<int16_t>{-1, 7}));
  GgufValue nested;
  nested.type = GgufType::kArray;
  nested.elem_type = GgufType::kArray;
  nested.count = 2;
  nested.arrays = {GgufValue::NumArray(GgufType::kU8, std::vector<uint8_t>{1, 2}),
                   GgufValue::StrArray({"x"})};
  w.AddMetadata("nested", nested);
  w.AddTensor("a", DType::kF32, {3, 5});    // 60 bytes: padded to 64
  w.AddTensor("b", DType::kQ8_0, {2, 64});  // 136 bytes
  w.AddTensor("c", DType::kF16, {7});
  std::vector<std::byte> data(60 + 136 + 14);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<std::byte>(i * 7 + 1);
  ASSERT_TRUE(w.Begin(path.string()).ok());
  // Uneven chunks that straddle tensor boundaries.
  ASSERT_TRUE(w.Append(ConstByteSpan(data).first(50)).ok());
  ASSERT_TRUE(w.Append(ConstByteSpan(data).subspan(50, 100)).ok());
  ASSERT_TRUE(w.Append(ConstByteSpan(data).subspan(150)).ok());
  EXPECT_FALSE(std::filesystem::exists(path)) << "visible before Finish";
  ASSERT_TRUE(w.Finish().ok());
  EXPECT_FALSE(std::filesystem::exists(dir / "all.gguf.tmp"));

  std::unique_ptr<ByteSource> src;
  auto f = ParseFile(path, &src);
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  EXPECT_EQ(f->version, 3u);
  EXPECT_EQ(f->alignment, 64u);
  EXPECT_EQ(f->Find("u8")->u, 200u);
  EXPECT_EQ(f->Find("i8")->i, -100);
  EXPECT_EQ(f->Find("u16")->u, 60000u);
  EXPECT_EQ(f->Find("i16")->i, -30000);
  EXPECT_EQ(f->Find("u32")->u, 4000000000u);
  EXPECT_EQ(f->Find("i32")->i, -2000000000);
  EXPECT_EQ(f->Find("u64")->u, ~uint64_t{0});
  EXPECT_EQ(f->Find("i64")->i, INT64_MIN);
  EXPECT_EQ(f->Find("f32")->f, 1.5);
  EXPECT_EQ(f->Find("f64")->f, 2.25);
  EXPECT_EQ(f->Find("f64")->type, GgufType::kF64);
  EXPECT_EQ(f->Find("bool")->u, 1u);
  EXPECT_EQ(f->Find("str")->s, "h\xC3\xA9llo");
  EXPECT_EQ(f->Find("strs")->strings, (std::vector<std::string>{"a", "", "ccc"}));
  EXPECT_EQ(f->Find("f32s")->count, 3u);
  EXPECT_EQ(f->Find("f32s")->ArrayDouble(2), 3.5);
  EXPECT_EQ(f->Find("i16s")->ArrayInt(0), -1);
  const GgufValue* n = f->Find("nested");
  ASSERT_NE(n, nullptr);
  ASSERT_EQ(n->arrays.size(), 2u);
  EXPECT_EQ(n->arrays[0].ArrayInt(1), 2);
  EXPECT_EQ(n->arrays[1].strings, std::vector<std::string>{"x"});

  ASSERT_EQ(f->tensors.size(), 3u);
  EXPECT_EQ(f->tensors[0].ne, (std::vector<uint64_t>{5, 3}));  // innermost first on disk
  EXPECT_EQ(f->tensors[1].ggml_type, 8u);
  size_t at = 0;
  for (const GgufTensor& t : f->tensors) {
    EXPECT_EQ(t.offset_bytes % 64, 0u) << t.name;
    std::vector<std::byte> got(t.size_bytes);
    ASSERT_TRUE(src->ReadAt(t.offset_bytes, got).ok());
    EXPECT_TRUE(std::equal(got.begin(), got.end(), data.begin() + at)) << t.name;
    at += t.size_bytes;
  }
  EXPECT_EQ(at, data.size());
}

TEST(GgufWriterTest, MisuseIsAnErrorAndLeavesNoFile) {
  flashlm::testing::ScratchDir dir;
  const auto path = dir / "x.gguf";
  {
    GgufWriter w;
    w.AddTensor("a", DType::kF32, {4});
    ASSERT_TRUE(w.Begin(path.string()).ok());
    ASSERT_TRUE(w.Append(std::vector<std::byte>(8)).ok());
    EXPECT_EQ(w.Finish().code(), StatusCode::kFailedPrecondition);  // 8 of 16 bytes
    EXPECT_EQ(w.Append(std::vector<std::byte>(9)).code(), StatusCode::kFailedPrecondition);
  }
  EXPECT_FALSE(std::filesystem::exists(path));
  EXPECT_FALSE(std::filesystem::exists(dir / "x.gguf.tmp"));
  {
    GgufWriter w;
    w.AddMetadata("k", GgufValue::U32(1));
    w.AddMetadata("k", GgufValue::U32(2));
    EXPECT_EQ(w.Begin(path.string()).code(), StatusCode::kInvalidArgument);
  }
  {
    GgufWriter w;
    w.AddTensor("a", DType::kF32, {4});
    w.AddTensor("a", DType::kF32, {4});
    EXPECT_EQ(w.Begin(path.string()).code(), StatusCode::kInvalidArgument);
  }
  {
    GgufWriter w;
    w.AddTensor("q", DType::kQ8_0, {2, 33});
    EXPECT_EQ(w.Begin(path.string()).code(), StatusCode::kInvalidArgument);
  }
  {
    GgufWriter w;
    EXPECT_EQ(w.Append(std::vector<std::byte>(1)).code(), StatusCode::kFailedPrecondition);
    EXPECT_EQ(w.Begin((dir / "no-such-dir" / "x.gguf").string()).code(), StatusCode::kIoError);
  }
  EXPECT_FALSE(std::filesystem::exists(path));
}

}  // namespace
}  // namespace flashlm::layout
