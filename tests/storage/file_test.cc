#include "storage/file.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <cerrno>
#include <filesystem>
#include <fstream>
#include <vector>

#include "storage/aligned_buffer.h"
#include "tests/storage/storage_test_util.h"
#include "tests/test_util.h"

namespace flashlm::storage {
namespace {

using testing::CountMismatches;

TEST(FileTest, MissingFileIsNotFound) {
  auto f = File::OpenForRead("/nonexistent/flashlm/file.bin");
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.status().code(), StatusCode::kNotFound);
  EXPECT_NE(f.status().message().find("/nonexistent/flashlm/file.bin"), std::string_view::npos);
}

TEST(FileTest, DirectoryIsRefused) {
  flashlm::testing::ScratchDir dir;
  auto f = File::OpenForRead(dir.path().string(), FileOptions{.direct = false});
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.status().code(), StatusCode::kInvalidArgument);
}

// A FIFO in place of a file is refused at once: a blocking open would wait for a writer forever.
TEST(FileTest, FifoIsRefusedWithoutBlocking) {
  flashlm::testing::ScratchDir dir;
  const std::string fifo = (dir / "fifo").string();
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0644), 0);
  for (bool direct : {false, true}) {
    auto f = File::OpenForRead(fifo, FileOptions{.direct = direct});
    ASSERT_FALSE(f.ok());
    EXPECT_EQ(f.status().code(), StatusCode::kInvalidArgument) << f.status().ToString();
  }
  Result<int> fd = OpenRegularFile(fifo);
  EXPECT_EQ(fd.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(OpenRegularFile((dir / "none").string()).status().code(), StatusCode::kNotFound);
}

TEST(FileTest, ReadFileBoundedStopsAtTheLimit) {
  flashlm::testing::ScratchDir dir;
  const std::string path = (dir / "t.txt").string();
  std::ofstream(path) << "hello";
  EXPECT_EQ(*ReadFileBounded(path, 5), "hello");
  EXPECT_EQ(ReadFileBounded(path, 4).status().code(), StatusCode::kInvalidArgument);
  // An endless source is refused after limit + 1 bytes, not read without end.
  Result<std::string> zero = ReadFileBounded("/dev/zero", 1 << 20);
  EXPECT_EQ(zero.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(zero.status().message().find("limit"), std::string_view::npos);
  EXPECT_EQ(ReadFileBounded(dir.path().string(), 10).status().code(), StatusCode::kInvalidArgument);
}

TEST(FileTest, WriteFileAtomicallyAllOrNothing) {
  flashlm::testing::ScratchDir dir;
  // A long but legal name (255 bytes): the temporary beside it must still fit.
  const std::string name(255, 'n');
  const std::string path = (dir / name).string();
  ASSERT_TRUE(WriteFileAtomically(path, AsBytes("first")).ok());
  ASSERT_TRUE(WriteFileAtomically(path, AsBytes("second")).ok());
  EXPECT_EQ(*ReadFileBounded(path, 100), "second");
  // Failures are IoError and leave nothing behind.
  EXPECT_EQ(WriteFileAtomically((dir / "no" / "x").string(), AsBytes("x")).code(),
            StatusCode::kIoError);
  size_t entries = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir.path())) {
    (void)e;
    ++entries;
  }
  EXPECT_EQ(entries, 1u);
}

TEST(FileTest, OpensDirectOnARealDiskWithAPowerOfTwoAlignment) {
  flashlm::testing::ScratchDir dir;
  std::string path = (dir / "a.bin").string();
  testing::WritePatternFile(path, 10000);
  auto f = File::OpenForRead(path);
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  EXPECT_EQ(f->size_bytes(), 10000u);
  EXPECT_TRUE(IsPowerOfTwo(f->alignment_bytes()));
  EXPECT_GE(f->alignment_bytes(), 512u);
  EXPECT_FALSE(f->writable());
  if (f->is_direct()) {
    EXPECT_EQ(f->required_alignment_bytes(), f->alignment_bytes());
  }
  // ReadAt with an aligned buffer stops at EOF.
  auto buf = AlignedBuffer::Allocate(16384, 4096);
  ASSERT_TRUE(buf.ok());
  auto n = f->ReadAt(8192, buf->span().first(4096));
  ASSERT_TRUE(n.ok()) << n.status().ToString();
  EXPECT_EQ(*n, 10000u - 8192u);
  EXPECT_EQ(CountMismatches(buf->span().first(*n), 8192), 0u);
  if (f->is_direct()) {
    EXPECT_EQ(f->ReadAt(1, buf->span().first(4096)).status().code(), StatusCode::kInvalidArgument);
  }
}

// DirectIoAlignmentIn says of a folder what File says of a file created there, leaves nothing
// behind, and is 4096 for a folder it cannot probe.
TEST(FileTest, DirectIoAlignmentInAFolderIsAFilesAlignmentThere) {
  flashlm::testing::ScratchDir dir;
  bool reported = false;
  const uint64_t a = DirectIoAlignmentIn(dir.path().string(), &reported);
  EXPECT_TRUE(IsPowerOfTwo(a));
  EXPECT_GE(a, 512u);
  EXPECT_TRUE(std::filesystem::is_empty(dir.path()));
  auto f = File::Create((dir / "probe.bin").string());
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  if (f->is_direct() && reported) {
    EXPECT_EQ(a, std::max<uint64_t>(512, f->alignment_bytes()));
  }
  if (!reported) EXPECT_EQ(a, 4096u);
  EXPECT_EQ(DirectIoAlignmentIn((dir / "no-such-folder").string(), &reported), 4096u);
  EXPECT_FALSE(reported);
}

TEST(FileTest, EinvalOnDirectOpenFallsBackToBuffered) {
  flashlm::testing::ScratchDir dir;
  std::string path = (dir / "b.bin").string();
  testing::WritePatternFile(path, 5000);
  FileOptions o;
  o.simulate_direct_open_errno = EINVAL;
  auto f = File::OpenForRead(path, o);
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  EXPECT_FALSE(f->is_direct());
  std::vector<std::byte> buf(100);
  auto n = f->ReadAt(4950, buf);
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(*n, 50u);
  EXPECT_EQ(CountMismatches(std::span(buf).first(50), 4950), 0u);
  // Any other errno is an error, not a fallback.
  o.simulate_direct_open_errno = EACCES;
  auto g = File::OpenForRead(path, o);
  EXPECT_FALSE(g.ok());
}

TEST(FileTest, CreateWriteReadBack) {
  flashlm::testing::ScratchDir dir;
  std::string path = (dir / "c.bin").string();
  auto f = File::Create(path);
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  EXPECT_TRUE(f->writable());
  auto buf = AlignedBuffer::Allocate(8192, 4096);
  ASSERT_TRUE(buf.ok());
  for (size_t i = 0; i < 8192; ++i) buf->span()[i] = testing::PatternByte(4096 + i);
  ASSERT_TRUE(f->WriteAt(4096, buf->span()).ok());
  EXPECT_EQ(f->size_bytes(), 12288u);
  ASSERT_TRUE(f->Sync().ok());
  auto r = File::OpenForRead(path);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->size_bytes(), 12288u);
  auto back = AlignedBuffer::Allocate(8192, 4096);
  ASSERT_TRUE(back.ok());
  auto n = r->ReadAt(4096, back->span());
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(*n, 8192u);
  EXPECT_EQ(CountMismatches(back->span(), 4096), 0u);
  EXPECT_EQ(r->WriteAt(0, back->span()).code(), StatusCode::kFailedPrecondition);
  ASSERT_TRUE(f->Truncate(100).ok());
  EXPECT_EQ(f->size_bytes(), 100u);
}

}  // namespace
}  // namespace flashlm::storage
