// End-to-end checks of `flashlm repack | inspect | verify` through the built binary, on stores
// made from a generated model (a store is itself a repack input).
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "layout/repack.h"
#include "layout/store_reader.h"
#include "storage/bytes.h"
#include "storage/file.h"
#include "tests/layout/memory_checkpoint.h"
#include "tests/test_util.h"
#include "tests/tools/run_flashlm.h"

namespace flashlm::tools {
namespace {

namespace fs = std::filesystem;

struct CommandRun {
  int exit_code;
  std::string out;  // stdout and stderr
};

CommandRun Flashlm(const std::string& args) {
  ::flashlm::testing::CmdRun r = ::flashlm::testing::RunFlashlm(args);
  return CommandRun{r.exit_code, r.all()};
}

class StoreCommandsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    layout::testing::MemoryCheckpoint src =
        layout::testing::MemoryCheckpoint::Llama(64, 172, 2, 60, layout::DType::kF32);
    auto r = layout::Repack(src, (dir_ / "base").string(), {});
    ASSERT_TRUE(r.ok()) << r.status().ToString();
  }
  ::flashlm::testing::ScratchDir dir_;
};

TEST_F(StoreCommandsTest, RepackInspectVerify) {
  CommandRun r = Flashlm("repack --no-progress --dtype q8_0 --align 512 --bundle gate+up-down " +
                         (dir_ / "base").string() + " " + (dir_ / "q8").string());
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_NE(r.out.find("tensors        21"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("padding"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("MB/s"), std::string::npos) << r.out;

  r = Flashlm("inspect " + (dir_ / "q8").string());
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_NE(r.out.find("gate+up-down"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("padding"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("blk.1.ffn_down.weight"), std::string::npos) << r.out;

  r = Flashlm("inspect --json " + (dir_ / "q8").string());
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_NE(r.out.find("\"format_version\": 2"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("\"source_format\": \"store\""), std::string::npos) << r.out;

  r = Flashlm("verify " + (dir_ / "q8").string());
  EXPECT_EQ(r.exit_code, 0) << r.out;
  EXPECT_NE(r.out.find("ok:"), std::string::npos) << r.out;
}

// Without --align, repack aligns extents to the direct-I/O alignment of the folder it writes to
// (the least padding with which every extent is still one O_DIRECT read) and says so.
TEST_F(StoreCommandsTest, RepackAlignsToTheFilesystemByDefault) {
  CommandRun r = Flashlm("repack --no-progress --dtype q8_0 " + (dir_ / "base").string() + " " +
                         (dir_ / "auto").string());
  ASSERT_EQ(r.exit_code, 0) << r.out;
  bool reported = false;
  const uint64_t want = storage::DirectIoAlignmentIn(dir_.path().string(), &reported);
  EXPECT_NE(r.out.find("(extents aligned to " + ::flashlm::FormatBytes(want) +
                       (reported ? ", the filesystem's direct-I/O alignment)"
                                 : ", as the filesystem does not report its direct-I/O "
                                   "alignment)")),
            std::string::npos)
      << r.out;
  auto store = layout::StoreReader::Open((dir_ / "auto").string());
  ASSERT_TRUE(store.ok()) << store.status().ToString();
  EXPECT_EQ((*store)->header().alignment_bytes, want);
  // An explicit --align is kept.
  r = Flashlm("repack --no-progress --dtype q8_0 --align 8K " + (dir_ / "base").string() + " " +
              (dir_ / "a8k").string());
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_NE(r.out.find("(extents aligned to 8 KiB)"), std::string::npos) << r.out;
  store = layout::StoreReader::Open((dir_ / "a8k").string());
  ASSERT_TRUE(store.ok()) << store.status().ToString();
  EXPECT_EQ((*store)->header().alignment_bytes, 8192u);
}

TEST_F(StoreCommandsTest, VerifyNamesTheFirstBadExtent) {
  auto store = layout::StoreReader::Open((dir_ / "base").string());
  ASSERT_TRUE(store.ok());
  layout::Extent e = (*store)->BundleExtents(1, 7, 1).value()[0];
  store->reset();
  {
    std::fstream f(dir_ / "base" / layout::DataFileName(0),
                   std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(e.offset_bytes + 100));
    f.put('\x5a');
  }
  CommandRun r = Flashlm("verify " + (dir_ / "base").string());
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.out.find("extent " + std::to_string(e.index) + " "), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("FFN layer 1 bundle 7"), std::string::npos) << r.out;
}

TEST_F(StoreCommandsTest, BadInputsFailCleanly) {
  CommandRun r = Flashlm("repack --no-progress --dtype q9 " + (dir_ / "base").string() + " " +
                         (dir_ / "x").string());
  EXPECT_EQ(r.exit_code, 2) << r.out;
  r = Flashlm("repack --no-progress --align 1000 " + (dir_ / "base").string() + " " +
              (dir_ / "x").string());
  EXPECT_EQ(r.exit_code, 2) << r.out;
  r = Flashlm("repack --no-progress " + (dir_ / "nothing").string() + " " + (dir_ / "x").string());
  EXPECT_NE(r.exit_code, 0) << r.out;
  EXPECT_FALSE(fs::exists(dir_ / "x"));
  r = Flashlm("verify " + (dir_ / "nothing").string());
  EXPECT_NE(r.exit_code, 0) << r.out;
  r = Flashlm("inspect " + (dir_ / "nothing").string());
  EXPECT_NE(r.exit_code, 0) << r.out;
  r = Flashlm("repack --no-progress " + (dir_ / "base").string() + " " + (dir_ / "base").string());
  EXPECT_EQ(r.exit_code, 2) << r.out;
  EXPECT_NE(r.out.find("already exists"), std::string::npos) << r.out;
}

TEST_F(StoreCommandsTest, CorruptSourceLeavesNothingBehind) {
  FLASHLM_REQUIRE_SHARED_MODEL(gguf, "stories260K-gguf/stories260K.gguf");
  // A GGUF cut short in its tensor data.
  const fs::path bad = dir_ / "cut.gguf";
  fs::copy_file(gguf, bad);
  fs::resize_file(bad, fs::file_size(gguf) - 100000);
  CommandRun r = Flashlm("repack --no-progress " + bad.string() + " " + (dir_ / "out").string());
  EXPECT_NE(r.exit_code, 0) << r.out;
  EXPECT_NE(r.out.find("flashlm repack:"), std::string::npos) << r.out;
  EXPECT_FALSE(fs::exists(dir_ / "out"));
  for (const auto& e : fs::directory_iterator(dir_.path())) {
    EXPECT_EQ(e.path().filename().string().find(".flashlm-tmp-"), std::string::npos) << e.path();
  }
  // And the intact file repacks, inspects and verifies.
  r = Flashlm("repack --no-progress " + gguf.string() + " " + (dir_ / "ok").string());
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_EQ(Flashlm("verify " + (dir_ / "ok").string()).exit_code, 0);
}

}  // namespace
}  // namespace flashlm::tools
