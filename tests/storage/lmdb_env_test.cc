#include "storage/lmdb_env.h"

#include <gtest/gtest.h>

#include <fstream>
#include <string>
#include <vector>

#include "tests/test_util.h"

namespace flashlm::storage {
namespace {

std::string Str(ConstByteSpan b) {
  return std::string(reinterpret_cast<const char*>(b.data()), b.size());
}

TEST(LmdbEnvTest, PutGetIterate) {
  testing::ScratchDir dir;
  const std::string path = (dir / "cat.mdb").string();
  {
    LmdbEnv::Options o;
    o.read_only = false;
    o.create = true;
    o.map_size_bytes = 16 << 20;
    auto env = LmdbEnv::Open(path, o);
    ASSERT_TRUE(env.ok()) << env.status().ToString();
    auto txn = (*env)->BeginWrite();
    ASSERT_TRUE(txn.ok());
    ASSERT_TRUE(txn->Put("a/2", "two").ok());
    ASSERT_TRUE(txn->Put("a/1", "one").ok());
    ASSERT_TRUE(txn->Put("b", "bee").ok());
    std::vector<std::byte> big(1 << 20, std::byte{7});
    ASSERT_TRUE(txn->Put("big", big).ok());
    EXPECT_EQ(txn->Put("", "x").code(), StatusCode::kInvalidArgument);
    ASSERT_TRUE(txn->Commit().ok());
    // An uncommitted transaction leaves nothing.
    auto txn2 = (*env)->BeginWrite();
    ASSERT_TRUE(txn2.ok());
    ASSERT_TRUE(txn2->Put("ghost", "boo").ok());
  }
  LmdbEnv::Options ro;
  auto env = LmdbEnv::Open(path, ro);
  ASSERT_TRUE(env.ok()) << env.status().ToString();
  auto txn = (*env)->BeginRead();
  ASSERT_TRUE(txn.ok());
  EXPECT_EQ(Str(*txn->Get("b")), "bee");
  EXPECT_EQ(txn->Get("big")->size(), 1u << 20);
  EXPECT_EQ(txn->Get("ghost").status().code(), StatusCode::kNotFound);
  std::vector<std::string> seen;
  ASSERT_TRUE(txn->ForEach("a/",
                           [&](std::string_view k, ConstByteSpan v) {
                             seen.push_back(std::string(k) + "=" + Str(v));
                             return true;
                           })
                  .ok());
  EXPECT_EQ(seen, (std::vector<std::string>{"a/1=one", "a/2=two"}));
  EXPECT_EQ((*env)->BeginWrite().status().code(), StatusCode::kFailedPrecondition);
}

TEST(LmdbEnvTest, MissingAndGarbageFiles) {
  testing::ScratchDir dir;
  EXPECT_EQ(LmdbEnv::Open((dir / "none.mdb").string(), {}).status().code(), StatusCode::kNotFound);
  const std::string junk = (dir / "junk.mdb").string();
  std::ofstream(junk, std::ios::binary) << std::string(8192, 'z');
  Result<std::unique_ptr<LmdbEnv>> env = LmdbEnv::Open(junk, {});
  EXPECT_FALSE(env.ok());
}

// A catalog cut at any page boundary (or mid-page) is refused before LMDB maps it: reading the
// records of a cut-short map would fault (SIGBUS) instead of failing.
TEST(LmdbEnvTest, CutShortFileIsCorruptionNotASignal) {
  testing::ScratchDir dir;
  const std::string path = (dir / "cat.mdb").string();
  {
    LmdbEnv::Options o;
    o.read_only = false;
    o.create = true;
    o.map_size_bytes = 16 << 20;
    auto env = LmdbEnv::Open(path, o);
    ASSERT_TRUE(env.ok()) << env.status().ToString();
    auto txn = (*env)->BeginWrite();
    ASSERT_TRUE(txn.ok());
    for (int i = 0; i < 200; ++i) {
      ASSERT_TRUE(txn->Put("key/" + std::to_string(1000 + i), std::string(300, 'v')).ok());
    }
    ASSERT_TRUE(txn->Commit().ok());
  }
  std::filesystem::remove(path + "-lock");
  std::ifstream in(path, std::ios::binary);
  const std::string whole((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  ASSERT_GT(whole.size(), 8u * 4096);
  for (size_t cut = 0; cut < whole.size(); cut += (cut % 4096 == 0 ? 100 : 4096 - cut % 4096)) {
    std::ofstream(path, std::ios::binary | std::ios::trunc).write(whole.data(), cut);
    Result<std::unique_ptr<LmdbEnv>> env = LmdbEnv::Open(path, {});
    ASSERT_FALSE(env.ok()) << "cut at " << cut;
    EXPECT_EQ(env.status().code(), StatusCode::kCorruption)
        << "cut at " << cut << ": " << env.status().ToString();
  }
  std::ofstream(path, std::ios::binary | std::ios::trunc).write(whole.data(), whole.size());
  Result<std::unique_ptr<LmdbEnv>> env = LmdbEnv::Open(path, {});
  ASSERT_TRUE(env.ok()) << env.status().ToString();
  auto txn = (*env)->BeginRead();
  ASSERT_TRUE(txn.ok());
  EXPECT_EQ(Str(*txn->Get("key/1199")), std::string(300, 'v'));
}

}  // namespace
}  // namespace flashlm::storage
