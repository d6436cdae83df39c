// Reliability (issue 16): generated damage against every read-only command, through the binary.
//
// Each case damages a copy of a small store (or passes a hostile flag) and runs inspect, verify,
// generate, tokenize and perplexity on it under a timeout. A case passes when every command
// exits with the code the README promises (2 bad input, 1 runtime failure; never a signal, never
// the timeout) and says what is wrong on stderr. Damage is generated here, not kept as files:
// the catalog cut at every LMDB page boundary, bit flips across the catalog and its seal,
// declared sizes at their extremes, FIFOs in place of store files.
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/stat.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "layout/catalog_seal.h"
#include "layout/repack.h"
#include "layout/store_format.h"
#include "storage/lmdb_env.h"
#include "tests/layout/memory_checkpoint.h"
#include "tests/test_util.h"
#include "tests/tools/run_flashlm.h"

namespace flashlm::tools {
namespace {

namespace fs = std::filesystem;
using ::flashlm::testing::CmdRun;

// Every command gets this long; a hang shows up as exit 124 (or 137 after SIGKILL).
constexpr const char* kTimeout = "timeout -s KILL 60 ";

std::string Q(const fs::path& p) { return "'" + p.string() + "'"; }

CmdRun RunCmd(const std::string& args) {
  // `timeout` exits with 128 + the signal when the command dies by one, 124/137 on a hang.
  return ::flashlm::testing::RunFlashlm(args, kTimeout);
}

// The read-only commands, as argument strings for a store at `s`.
std::vector<std::string> ReadOnlyCommands(const fs::path& s, const fs::path& text) {
  return {"inspect " + Q(s), "verify " + Q(s), "generate " + Q(s) + " -p hi -n 2 --temp 0",
          "tokenize " + Q(s) + " hi", "perplexity " + Q(s) + " --text " + Q(text)};
}

// Runs every read-only command on `store` and expects each to exit with `code` and a message
// on stderr containing `message` (when not empty).
void ExpectAllRefuse(const fs::path& store, const fs::path& text, int code,
                     const std::string& message, const std::string& what) {
  for (const std::string& args : ReadOnlyCommands(store, text)) {
    const CmdRun r = RunCmd(args);
    EXPECT_EQ(r.exit_code, code) << what << ": " << args << "\n" << r.err;
    EXPECT_NE(r.err.find("flashlm "), std::string::npos) << what << ": " << args;
    if (!message.empty()) {
      EXPECT_NE(r.err.find(message), std::string::npos) << what << ": " << args << "\n" << r.err;
    }
  }
}

std::string ReadAll(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}
void WriteAll(const fs::path& p, std::string_view bytes) {
  std::ofstream(p, std::ios::binary | std::ios::trunc).write(bytes.data(), bytes.size());
}

// Rewrites catalog key `key` with mutate(value) and reseals the catalog: damage behind the seal,
// as a faulty writer would leave it.
void MutateAndReseal(const fs::path& store, const std::string& key,
                     const std::function<void(std::string&)>& mutate) {
  {
    storage::LmdbEnv::Options o;
    o.read_only = false;
    auto env = storage::LmdbEnv::Open((store / "catalog.mdb").string(), o);
    ASSERT_TRUE(env.ok()) << env.status().ToString();
    std::string v;
    {
      auto r = (*env)->BeginRead();
      ASSERT_TRUE(r.ok());
      auto got = r->Get(key);
      ASSERT_TRUE(got.ok()) << key;
      v.assign(reinterpret_cast<const char*>(got->data()), got->size());
    }
    mutate(v);
    auto w = (*env)->BeginWrite();
    ASSERT_TRUE(w.ok());
    ASSERT_TRUE(w->Put(key, v).ok());
    ASSERT_TRUE(w->Commit().ok());
  }
  fs::remove(store / "catalog.mdb-lock");
  ASSERT_TRUE(layout::WriteCatalogSeal(store.string()).ok());
}

void SetJsonNumber(std::string& json, const std::string& field, const std::string& value) {
  const std::string key = "\"" + field + "\":";
  const size_t at = json.find(key);
  ASSERT_NE(at, std::string::npos) << json;
  const size_t end = json.find_first_of(",}", at + key.size());
  json.replace(at + key.size(), end - at - key.size(), value);
}

class DamageTest : public ::testing::Test {
 protected:
  void SetUp() override {
    layout::testing::MemoryCheckpoint src =
        layout::testing::MemoryCheckpoint::Llama(32, 24, 2, 40, layout::DType::kF32);
    auto r = layout::Repack(src, base().string(), {});
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    std::ofstream(text()) << "tok1 tok2 tok3 tok4 tok5";
  }
  fs::path base() const { return dir_ / "base"; }
  fs::path text() const { return dir_ / "text.txt"; }
  fs::path Copy(const std::string& name) {
    const fs::path p = dir_ / name;
    fs::remove_all(p);
    fs::copy(base(), p, fs::copy_options::recursive);
    return p;
  }
  ::flashlm::testing::ScratchDir dir_;
};

TEST_F(DamageTest, IntactStoreRuns) {
  for (const std::string& args : ReadOnlyCommands(base(), text())) {
    const CmdRun r = RunCmd(args);
    EXPECT_EQ(r.exit_code, 0) << args << "\n" << r.err;
  }
}

// Cut at every LMDB page boundary (and mid-page): Corruption, exit 2, never SIGBUS.
TEST_F(DamageTest, CatalogCutAtEveryPageBoundary) {
  const std::string whole = ReadAll(base() / "catalog.mdb");
  ASSERT_EQ(whole.size() % 4096, 0u);
  const fs::path s = Copy("cut");
  for (size_t cut = 0; cut < whole.size(); cut += 4096) {
    WriteAll(s / "catalog.mdb", std::string_view(whole).substr(0, cut));
    ExpectAllRefuse(s, text(), 2, "catalog", "cut at " + std::to_string(cut));
  }
  WriteAll(s / "catalog.mdb", std::string_view(whole).substr(0, whole.size() - 100));
  ExpectAllRefuse(s, text(), 2, "cut short", "cut mid-page");
}

// Bit flips spread over the whole catalog (records and LMDB's own pages) and over the seal.
TEST_F(DamageTest, BitFlipsAcrossTheCatalogAndItsSeal) {
  const fs::path s = Copy("flip");
  const uint64_t size = fs::file_size(s / "catalog.mdb");
  constexpr int kFlips = 12;
  for (int i = 0; i < kFlips; ++i) {
    const uint64_t off = (size * i) / kFlips + 37 * i;
    const char mask = static_cast<char>(1u << (i % 8));
    ::flashlm::testing::FlipByte(s / "catalog.mdb", off, mask);
    ExpectAllRefuse(s, text(), 2, "checksum", "catalog flip at " + std::to_string(off));
    ::flashlm::testing::FlipByte(s / "catalog.mdb", off, mask);
  }
  for (uint64_t off : {0u, 9u, 17u, 31u}) {
    ::flashlm::testing::FlipByte(s / "catalog.sum", off, 0x04);
    ExpectAllRefuse(s, text(), 2, "catalog.sum", "seal flip at " + std::to_string(off));
    ::flashlm::testing::FlipByte(s / "catalog.sum", off, 0x04);
  }
  fs::remove(s / "catalog.sum");
  ExpectAllRefuse(s, text(), 2, "Repack", "no seal (format version 1)");
}

// A FIFO in place of any store file is refused at once (an open that waits for a writer would
// hang every command).
TEST_F(DamageTest, FifoInPlaceOfStoreFiles) {
  for (const char* name : {"data-00000.bin", "catalog.mdb", "catalog.sum"}) {
    const fs::path s = Copy(std::string("fifo-") + name);
    fs::remove(s / name);
    ASSERT_EQ(::mkfifo((s / name).c_str(), 0644), 0);
    ExpectAllRefuse(s, text(), 2, "regular file", name);
  }
}

// Config values a checkpoint reader refuses are refused from a store too, even sealed.
TEST_F(DamageTest, InvalidConfigBehindAValidSeal) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"norm_eps", "-1e-05"}, {"rope_theta", "-10000"}, {"max_seq_len", "0"}, {"dim", "0"}};
  for (const auto& [field, value] : cases) {
    const fs::path s = Copy("config-" + field);
    MutateAndReseal(s, "config", [&](std::string& j) { SetJsonNumber(j, field, value); });
    ExpectAllRefuse(s, text(), 2, "model config", field + " = " + value);
  }
}

// A declared context of 2^31-1 costs nothing until asked for: the default context is the
// model's capped at 4096, and an explicit context past the engine's maximum is refused up front.
TEST_F(DamageTest, DeclaredContextAtItsExtreme) {
  const fs::path s = Copy("huge-ctx");
  MutateAndReseal(s, "config",
                  [](std::string& j) { SetJsonNumber(j, "max_seq_len", "2147483647"); });
  for (const std::string& args : ReadOnlyCommands(s, text())) {
    const CmdRun r = RunCmd(args);
    EXPECT_EQ(r.exit_code, 0) << args << "\n" << r.err;
  }
  CmdRun r = RunCmd("generate " + Q(s) + " -p hi -n 2 --ctx 2147483647");
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("--ctx"), std::string::npos) << r.err;
  r = RunCmd("perplexity " + Q(s) + " --text " + Q(text()) + " --ctx 2147483647");
  EXPECT_EQ(r.exit_code, 2) << r.err;
  // Peak RSS of every command this process has run so far (the largest waited-for descendant):
  // a tiny model stays far below what a 2^31-1 KV cache would take (8 GiB per layer and head).
  struct rusage ru {};
  ASSERT_EQ(getrusage(RUSAGE_CHILDREN, &ru), 0);
  EXPECT_LT(static_cast<uint64_t>(ru.ru_maxrss) * 1024, uint64_t{1} << 30);
}

// Hostile flags and inputs: each is bad input (exit 2) with a message naming it.
TEST_F(DamageTest, BadFlagsAreUsageErrors) {
  const std::string g = "generate " + Q(base()) + " -p hi ";
  const std::string p = "perplexity " + Q(base()) + " --text ";
  struct Case {
    std::string args, message;
  };
  const std::vector<Case> cases = {
      {g + "-n ''", "empty value"},
      {g + "-n 2 --temp nan", "not a finite number"},
      {g + "-n 2 --top-p inf", "not a finite number"},
      {g + "-n 2 --mem-budget ''", "--mem-budget"},
      {g + "-n 2 --threads 100000", "--threads"},
      {g + "-n 2 --tokenizer " + Q(dir_ / "missing.bin"), "no such file"},
      {g + "-n 2 --mem-budget 1K", "below the minimum"},
      {p + "/dev/zero", "limit of 64 MiB"},
      {p + Q(dir_ / "missing.txt"), "no such file"},
      {p + Q(text()) + " --ctx 0", "--ctx"},
      {"repack --no-progress --compress zstd --zstd-level 100 " + Q(base()) + " " + Q(dir_ / "z"),
       "zstd level"},
      {"repack --no-progress --tokenizer " + Q(dir_ / "missing.bin") + " " + Q(base()) + " " +
           Q(dir_ / "t"),
       "no such file"},
  };
  for (const Case& c : cases) {
    const CmdRun r = RunCmd(c.args);
    EXPECT_EQ(r.exit_code, 2) << c.args << "\n" << r.err;
    EXPECT_NE(r.err.find(c.message), std::string::npos) << c.args << "\n" << r.err;
  }
  // The default perplexity window follows a model whose context (256) is below 512.
  const CmdRun r = RunCmd(p + Q(text()));
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("(ctx 256)"), std::string::npos) << r.out;
}

// Output that cannot be written fails the command (exit 1) and leaves no partial file.
TEST_F(DamageTest, LostWritesFailTheCommand) {
  const std::string g = "generate " + Q(base()) + " -p hi -n 2 --temp 0";
  CmdRun r = RunCmd(g + " > /dev/full");
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_NE(r.err.find("standard output"), std::string::npos) << r.err;
  r = RunCmd("inspect " + Q(base()) + " > /dev/full");
  EXPECT_EQ(r.exit_code, 1) << r.err;
  r = RunCmd(g + " --stats-json " + Q(dir_ / "no" / "such" / "s.json"));
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_NE(r.err.find("--stats-json"), std::string::npos) << r.err;
  // A long but legal output name (255 bytes) works: temporaries have short names of their own.
  const std::string long_name(255, 'x');
  r = RunCmd(g + " --stats-json " + Q(dir_ / long_name));
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(fs::exists(dir_ / long_name));
  fs::remove(dir_ / long_name);
  r = RunCmd("repack --no-progress " + Q(base()) + " " + Q(dir_ / long_name));
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(fs::exists(dir_ / long_name / "catalog.sum"));
  for (const auto& e : fs::directory_iterator(dir_.path())) {
    const std::string name = e.path().filename().string();
    EXPECT_EQ(name.find(".tmp"), std::string::npos) << name;
    EXPECT_EQ(name.find(layout::kTempMarker), std::string::npos) << name;
  }
}

// repack of an HF folder with a llama2.c tokenizer.bin, as --help says it takes (generate
// already accepted the pair).
TEST_F(DamageTest, RepackHfFolderWithLlama2cTokenizer) {
  FLASHLM_REQUIRE_SHARED_MODEL(hf, "stories260K-hf-derived/config.json");
  FLASHLM_REQUIRE_SHARED_MODEL(tok, "stories260K/tok512.bin");
  CmdRun r = RunCmd("repack --no-progress " + Q(hf.parent_path()) + " " + Q(dir_ / "hf") +
                    " --tokenizer " + Q(tok));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  r = RunCmd("generate " + Q(dir_ / "hf") + " -p 'Once upon' -n 4 --temp 0");
  EXPECT_EQ(r.exit_code, 0) << r.err;
}

}  // namespace
}  // namespace flashlm::tools
