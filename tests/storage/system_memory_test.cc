#include "storage/system_memory.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "tests/test_util.h"

namespace flashlm::storage {
namespace {

namespace fs = std::filesystem;
constexpr uint64_t kMiB = uint64_t{1} << 20;

void Write(const fs::path& path, const std::string& text) {
  fs::create_directories(path.parent_path());
  std::ofstream(path) << text;
}

// A machine's files laid out under `root`: /proc/meminfo with MemAvailable `avail_kb`.
void WriteMeminfo(const fs::path& root, uint64_t avail_kb) {
  Write(root / "proc/meminfo",
        "MemTotal:       24000000 kB\nMemFree:         1000000 kB\n"
        "MemAvailable:   " +
            std::to_string(avail_kb) + " kB\nBuffers:  10 kB\n");
}

TEST(SystemMemoryTest, ParsesMemAvailable) {
  auto v = ParseMemAvailable("MemTotal: 100 kB\nMemAvailable:    2048 kB\nCached: 3 kB\n");
  ASSERT_TRUE(v.ok()) << v.status().ToString();
  EXPECT_EQ(*v, 2048u * 1024);
  EXPECT_EQ(ParseMemAvailable("MemTotal: 100 kB\n").status().code(), StatusCode::kCorruption);
  EXPECT_EQ(ParseMemAvailable("MemAvailable: lots kB\n").status().code(), StatusCode::kCorruption);
  EXPECT_EQ(ParseMemAvailable("MemAvailable: 12\n").status().code(), StatusCode::kCorruption);
  // A key that merely ends in the name is not it.
  EXPECT_EQ(ParseMemAvailable("XMemAvailable: 12 kB\n").status().code(), StatusCode::kCorruption);
  // A value that would overflow in bytes.
  EXPECT_EQ(ParseMemAvailable("MemAvailable: 99999999999999999999 kB\n").status().code(),
            StatusCode::kCorruption);
}

TEST(SystemMemoryTest, ThisMachine) {
  auto m = ReadSystemMemory();
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  EXPECT_GT(m->mem_available, 0u);
  EXPECT_LE(m->available(), m->mem_available);
  if (m->cgroup_limit != kNoLimit) {
    EXPECT_LE(m->cgroup_room, m->cgroup_limit);
    EXPECT_FALSE(m->cgroup.empty());
  }
}

TEST(SystemMemoryTest, NoMeminfoIsNotFound) {
  flashlm::testing::ScratchDir dir;
  EXPECT_EQ(ReadSystemMemory(dir.path().string()).status().code(), StatusCode::kNotFound);
}

TEST(SystemMemoryTest, WithoutACgroupLimitMemAvailableDecides) {
  flashlm::testing::ScratchDir dir;
  WriteMeminfo(dir.path(), 4 * 1024 * 1024);
  Write(dir / "proc/self/cgroup", "4:memory:/a\n0::/\n");
  const fs::path v1 = dir / "sys/fs/cgroup/memory";
  Write(v1 / "a/memory.limit_in_bytes", "9223372036854771712\n");  // v1's "no limit"
  Write(v1 / "a/memory.usage_in_bytes", "1000\n");
  auto m = ReadSystemMemory(dir.path().string());
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  EXPECT_EQ(m->mem_available, 4096 * kMiB);
  EXPECT_EQ(m->cgroup_limit, kNoLimit);
  EXPECT_EQ(m->available(), 4096 * kMiB);
}

// cgroup v1: the tightest of the process's group and its ancestors, file cache not counted as
// used.
TEST(SystemMemoryTest, CgroupV1TightestAncestorWins) {
  flashlm::testing::ScratchDir dir;
  WriteMeminfo(dir.path(), 4 * 1024 * 1024);
  Write(dir / "proc/self/cgroup", "5:cpu,cpuacct:/\n4:memory:/a/b\n");
  const fs::path v1 = dir / "sys/fs/cgroup/memory";
  // a/b: 512 MiB, 300 MiB used of which 150 MiB file cache: 362 MiB of room.
  Write(v1 / "a/b/memory.limit_in_bytes", std::to_string(512 * kMiB) + "\n");
  Write(v1 / "a/b/memory.usage_in_bytes", std::to_string(300 * kMiB) + "\n");
  Write(v1 / "a/b/memory.stat", "cache 1\ntotal_inactive_file " + std::to_string(100 * kMiB) +
                                    "\ntotal_active_file " + std::to_string(50 * kMiB) + "\n");
  auto m = ReadSystemMemory(dir.path().string());
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  EXPECT_EQ(m->cgroup_limit, 512 * kMiB);
  EXPECT_EQ(m->cgroup_room, 362 * kMiB);
  EXPECT_EQ(m->cgroup, "/a/b");
  EXPECT_EQ(m->available(), 362 * kMiB);
  // a: 400 MiB with 100 MiB used: 300 MiB of room, tighter than a/b's.
  Write(v1 / "a/memory.limit_in_bytes", std::to_string(400 * kMiB) + "\n");
  Write(v1 / "a/memory.usage_in_bytes", std::to_string(100 * kMiB) + "\n");
  m = ReadSystemMemory(dir.path().string());
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  EXPECT_EQ(m->cgroup, "/a");
  EXPECT_EQ(m->cgroup_room, 300 * kMiB);
  // A group over its limit has no room.
  Write(v1 / "a/memory.usage_in_bytes", std::to_string(500 * kMiB) + "\n");
  m = ReadSystemMemory(dir.path().string());
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  EXPECT_EQ(m->available(), 0u);
}

// cgroup v2: the smaller of memory.max and memory.high; "max" is no limit; MemAvailable still
// caps it.
TEST(SystemMemoryTest, CgroupV2) {
  flashlm::testing::ScratchDir dir;
  WriteMeminfo(dir.path(), 512 * 1024);  // 512 MiB
  Write(dir / "proc/self/cgroup", "0::/x\n");
  const fs::path v2 = dir / "sys/fs/cgroup";
  Write(v2 / "x/memory.max", "max\n");
  Write(v2 / "x/memory.high", std::to_string(1024 * kMiB) + "\n");
  Write(v2 / "x/memory.current", std::to_string(200 * kMiB) + "\n");
  Write(v2 / "x/memory.stat", "anon 1\nactive_file " + std::to_string(50 * kMiB) +
                                  "\ninactive_file " + std::to_string(50 * kMiB) + "\n");
  auto m = ReadSystemMemory(dir.path().string());
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  EXPECT_EQ(m->cgroup_limit, 1024 * kMiB);
  EXPECT_EQ(m->cgroup_room, 924 * kMiB);
  EXPECT_EQ(m->cgroup, "/x");
  EXPECT_EQ(m->available(), 512 * kMiB);  // MemAvailable is the smaller
}

// In a cgroup namespace /proc/self/cgroup names a path the mount does not have: the mount's own
// root is this process's group.
TEST(SystemMemoryTest, CgroupNamespaceReadsTheMountRoot) {
  flashlm::testing::ScratchDir dir;
  WriteMeminfo(dir.path(), 4 * 1024 * 1024);
  Write(dir / "proc/self/cgroup", "0::/outside/the/namespace\n");
  Write(dir / "sys/fs/cgroup/memory.max", std::to_string(256 * kMiB) + "\n");
  Write(dir / "sys/fs/cgroup/memory.current", std::to_string(6 * kMiB) + "\n");
  auto m = ReadSystemMemory(dir.path().string());
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  EXPECT_EQ(m->cgroup, "/");
  EXPECT_EQ(m->cgroup_room, 250 * kMiB);
}

// Malformed cgroup files are no limit, not an error: the cgroup is optional.
TEST(SystemMemoryTest, MalformedCgroupFilesAreNoLimit) {
  flashlm::testing::ScratchDir dir;
  WriteMeminfo(dir.path(), 1024);
  Write(dir / "proc/self/cgroup", "garbage\n4:memory:relative\n4:memory:/a\n");
  Write(dir / "sys/fs/cgroup/memory/a/memory.limit_in_bytes", "12abc\n");
  auto m = ReadSystemMemory(dir.path().string());
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  EXPECT_EQ(m->cgroup_limit, kNoLimit);
  EXPECT_EQ(m->available(), 1024u * 1024);
}

}  // namespace
}  // namespace flashlm::storage
