// End-to-end checks of `flashlm generate|perplexity --mem-budget` (out-of-core runs) through the
// built binary on a q8_0 store of stories260K: the plan is printed, the output equals the
// unlimited run, a too-small budget is refused naming the minimum, I/O accounting is reported.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>
#include <sstream>
#include <string>

#include "tests/test_util.h"
#include "tests/tools/run_flashlm.h"

namespace flashlm::tools {
namespace {

using ::flashlm::testing::CmdRun;
namespace fs = std::filesystem;

CmdRun Flashlm(const std::string& args) { return ::flashlm::testing::RunFlashlm(args); }

TEST(MemBudgetCommandTest, GenerateStreamsWithIdenticalOutput) {
  FLASHLM_REQUIRE_SHARED_MODEL(gguf, "stories260K-gguf/stories260K.gguf");
  ::flashlm::testing::ScratchDir dir;
  const std::string store = (dir / "store").string();
  CmdRun rp = Flashlm("repack " + gguf.string() + " " + store + " --dtype q8_0 --no-progress");
  ASSERT_EQ(rp.exit_code, 0) << rp.err;
  const std::string g = "generate " + store + " -p 'Once upon a time' -n 30 --temp 0 --ctx 64 ";
  CmdRun dram = Flashlm(g);
  ASSERT_EQ(dram.exit_code, 0) << dram.err;
  CmdRun unlimited = Flashlm(g + "--mem-budget 0");
  ASSERT_EQ(unlimited.exit_code, 0) << unlimited.err;
  EXPECT_NE(unlimited.err.find("residency plan: budget unlimited"), std::string::npos)
      << unlimited.err;
  // A budget of 1 byte is refused, naming the minimum in bytes.
  CmdRun tiny = Flashlm(g + "--mem-budget 1");
  EXPECT_NE(tiny.exit_code, 0);
  std::smatch m;
  ASSERT_TRUE(std::regex_search(tiny.err, m, std::regex("minimum of ([0-9]+) bytes"))) << tiny.err;
  const uint64_t minimum = std::stoull(m[1].str());
  // At the minimum: everything streams, the text equals the unlimited run's.
  const std::string json = (dir / "stats.json").string();
  CmdRun low = Flashlm(g + "--mem-budget " + std::to_string(minimum) + " --stats-json " + json);
  ASSERT_EQ(low.exit_code, 0) << low.err;
  EXPECT_EQ(low.out, unlimited.out);
  EXPECT_NE(low.err.find("streaming the rest in chunks"), std::string::npos) << low.err;
  EXPECT_NE(low.err.find("io: "), std::string::npos) << low.err;
  std::ifstream in(json);
  const nlohmann::json stats = nlohmann::json::parse(in);
  ASSERT_TRUE(stats.contains("io")) << stats.dump();
  const nlohmann::json& io = stats["io"];
  EXPECT_GT(io["bytes_read"].get<uint64_t>(), 0u) << io.dump();
  EXPECT_GT(io["reads"].get<uint64_t>(), 0u) << io.dump();
  EXPECT_EQ(io["cache_hit_rate"].get<double>(), 0.0) << io.dump();  // nothing pinned
  EXPECT_EQ(io["passes"].get<uint64_t>(), 30u) << io.dump();  // the prompt, then 29 tokens
  EXPECT_LE(io["planned_bytes"].get<uint64_t>(), minimum) << io.dump();
  // Where the bytes went: at the minimum the attention layers and the FFN bundles stream, and the
  // sources add up to the reads counted.
  const nlohmann::json& by = io["by_source"];
  EXPECT_GT(by["attention"]["bytes_read"].get<uint64_t>(), 0u) << by.dump();
  EXPECT_GT(by["ffn"]["bytes_read"].get<uint64_t>(), 0u) << by.dump();
  uint64_t source_bytes = 0, source_reads = 0;
  for (const auto& [name, part] : by.items()) {
    source_bytes += part["bytes_read"].get<uint64_t>();
    source_reads += part["reads"].get<uint64_t>();
  }
  EXPECT_EQ(source_bytes, io["bytes_read"].get<uint64_t>()) << io.dump();
  EXPECT_EQ(source_reads, io["reads"].get<uint64_t>()) << io.dump();
  EXPECT_NE(low.err.find("io by source, per forward pass: attention "), std::string::npos)
      << low.err;
  // The naive mode, one read per bundle and split reads, each at its own minimum: the same text.
  for (const char* mode : {"--no-pipeline", "--no-coalesce", "--split-bundle-reads"}) {
    CmdRun refused = Flashlm(g + mode + " --mem-budget 1");
    ASSERT_TRUE(std::regex_search(refused.err, m, std::regex("minimum of ([0-9]+) bytes")))
        << refused.err;
    CmdRun r = Flashlm(g + mode + " --mem-budget " + m[1].str());
    ASSERT_EQ(r.exit_code, 0) << mode << ": " << r.err;
    EXPECT_EQ(r.out, unlimited.out) << mode;
    if (std::string(mode) == "--no-coalesce") {
      EXPECT_NE(r.err.find("one read per bundle"), std::string::npos) << r.err;
    } else if (std::string(mode) == "--split-bundle-reads") {
      EXPECT_NE(r.err.find("split reads"), std::string::npos) << r.err;
    } else {
      EXPECT_EQ(r.err.find("pipelined"), std::string::npos) << r.err;
    }
  }
  // Checksums on each extent's first read only: the same text, said in the plan's reads line; a
  // bundle damaged on disk is still Corruption naming it (its first read is checked).
  // (Its minimum is a little higher: the record of extents checked is charged with the catalog.)
  CmdRun once_tiny = Flashlm(g + "--mem-budget 1 --verify-reads first");
  ASSERT_TRUE(std::regex_search(once_tiny.err, m, std::regex("minimum of ([0-9]+) bytes")))
      << once_tiny.err;
  const uint64_t once_minimum = std::stoull(m[1].str());
  EXPECT_GT(once_minimum, minimum);
  const std::string at_minimum = g + "--mem-budget " + std::to_string(once_minimum);
  CmdRun once = Flashlm(at_minimum + " --verify-reads first");
  ASSERT_EQ(once.exit_code, 0) << once.err;
  EXPECT_EQ(once.out, unlimited.out);
  EXPECT_NE(once.err.find("checksums on each extent's first read"), std::string::npos) << once.err;
  EXPECT_NE(low.err.find("checksums on every read"), std::string::npos) << low.err;
  CmdRun bad_verify = Flashlm(at_minimum + " --verify-reads some");
  EXPECT_EQ(bad_verify.exit_code, 2) << bad_verify.err;
  EXPECT_NE(bad_verify.err.find("--verify-reads"), std::string::npos) << bad_verify.err;
  {
    const std::string damaged = (dir / "damaged").string();
    fs::copy(store, damaged);
    const fs::path data = fs::path(damaged) / "data-00000.bin";
    const uint64_t size = fs::file_size(data);
    bool in_bundle = false;
    for (uint64_t off = size / 2 / 4096 * 4096; off < size && !in_bundle; off += 4096) {
      ::flashlm::testing::FlipByte(data, off);
      in_bundle = Flashlm("verify " + damaged).all().find("bundle") != std::string::npos;
      if (!in_bundle) ::flashlm::testing::FlipByte(data, off);
    }
    ASSERT_TRUE(in_bundle);
    for (const char* verify : {"every", "first"}) {
      CmdRun r =
          Flashlm("generate " + damaged + " -p 'Once upon a time' -n 30 --temp 0 --ctx 64 " +
                  "--mem-budget " + std::to_string(once_minimum) + " --verify-reads " + verify);
      EXPECT_NE(r.exit_code, 0) << verify;
      EXPECT_NE(r.err.find("checksum mismatch"), std::string::npos) << verify << ": " << r.err;
      EXPECT_NE(r.err.find("FFN layer"), std::string::npos) << verify << ": " << r.err;
    }
  }
  // Not a store: usage error.
  CmdRun not_store = Flashlm("generate " + gguf.string() + " -n 2 --mem-budget 1G");
  EXPECT_EQ(not_store.exit_code, 2) << not_store.err;
  CmdRun bad_size = Flashlm(g + "--mem-budget 12Q");
  EXPECT_EQ(bad_size.exit_code, 2) << bad_size.err;
  // Tuning flags out of range: usage errors naming the flag.
  // (64 buffers of 172 bundles read one by one: more reads in flight than the reader takes.)
  for (const char* bad : {"--stream-buffers 1", "--stream-buffers 65", "--chunk-bundles 0",
                          "--chunk-bundles 70000", "--stream-buffers 64 --no-coalesce"}) {
    CmdRun r = Flashlm(g + "--mem-budget 0 " + bad);
    EXPECT_EQ(r.exit_code, 2) << bad << ": " << r.err;
    const std::string flag = std::string(bad).substr(0, std::string(bad).find(' '));
    EXPECT_NE(r.err.find(flag), std::string::npos) << r.err;
  }
  // Perplexity at the minimum budget equals the unlimited figure.
  const std::string text = (dir / "t.txt").string();
  std::ofstream(text) << "Once upon a time there was a little girl. She liked to play.\n";
  CmdRun p0 = Flashlm("perplexity " + store + " --text " + text + " --ctx 16");
  ASSERT_EQ(p0.exit_code, 0) << p0.err;
  CmdRun ptiny = Flashlm("perplexity " + store + " --text " + text + " --ctx 16 --mem-budget 1");
  ASSERT_TRUE(std::regex_search(ptiny.err, m, std::regex("minimum of ([0-9]+) bytes")))
      << ptiny.err;
  CmdRun p1 =
      Flashlm("perplexity " + store + " --text " + text + " --ctx 16 --mem-budget " + m[1].str());
  ASSERT_EQ(p1.exit_code, 0) << p1.err;
  EXPECT_EQ(p1.out, p0.out);
  EXPECT_NE(p1.err.find("streaming the rest"), std::string::npos) << p1.err;
}

// The plan accounts for every byte the engine allocates: at three budgets (unlimited, half of
// everything resident, the minimum) the peak RSS that `/usr/bin/time` would report is the planned
// bytes plus at most the stated overhead (16 MiB: the binary and its libraries, thread stacks,
// the LMDB map's touched pages, allocator slack), and the plan does not reserve air (the process
// holds at least 90% of it). A 110m-shape f16 model (random weights, 269 MB) makes the budget
// dominate; its bundles (4.5 KiB) are larger than a page, as real models' are.
TEST(MemBudgetCommandTest, PlannedBytesMatchPeakRss) {
#if defined(__SANITIZE_ADDRESS__)
  GTEST_SKIP() << "under AddressSanitizer the resident set is the sanitizer's (shadow memory)";
#endif
  ::flashlm::testing::ScratchDir dir;
  const std::string gguf = (dir / "m.gguf").string(), store = (dir / "store").string();
  ASSERT_EQ(Flashlm("synth --shape 110m --dtype f16 --out " + gguf).exit_code, 0);
  CmdRun rp = Flashlm("repack " + gguf + " " + store + " --align 512 --no-progress");
  ASSERT_EQ(rp.exit_code, 0) << rp.err;
  const std::string json = (dir / "stats.json").string();
  const std::string g = "generate " + store + " -p 'Once upon a time' -n 8 --temp 0 --ctx 256 " +
                        "--threads 2 --stats-json " + json + " --mem-budget ";
  auto run = [&](uint64_t budget) {
    CmdRun r = Flashlm(g + std::to_string(budget));
    EXPECT_EQ(r.exit_code, 0) << r.err;
    std::ifstream in(json);
    return nlohmann::json::parse(in)["io"];
  };
  const nlohmann::json unlimited = run(0);
  const uint64_t all = unlimited["planned_bytes"].get<uint64_t>();
  ASSERT_GT(all, 200u << 20);
  CmdRun tiny = Flashlm(g + "1");
  std::smatch m;
  ASSERT_TRUE(std::regex_search(tiny.err, m, std::regex("minimum of ([0-9]+) bytes"))) << tiny.err;
  const uint64_t minimum = std::stoull(m[1].str());
  ASSERT_LT(minimum, all / 2);
  constexpr int64_t kOverhead = 16 << 20;
  for (uint64_t budget : {uint64_t{0}, all / 2, minimum}) {
    const nlohmann::json io = budget == 0 ? unlimited : run(budget);
    const int64_t planned = io["planned_bytes"].get<int64_t>();
    const int64_t rss = io["peak_rss_bytes"].get<int64_t>();
    if (budget != 0) {
      EXPECT_LE(planned, static_cast<int64_t>(budget));
      EXPECT_GT(io["bytes_read"].get<uint64_t>(), 0u);
    }
    EXPECT_LE(rss, planned + kOverhead) << "budget " << budget << ": " << io.dump();
    EXPECT_GE(rss, planned / 10 * 9) << "budget " << budget << ": " << io.dump();
    std::printf("budget %llu: planned %.1f MiB, peak RSS %.1f MiB (%+.1f MiB)\n",
                static_cast<unsigned long long>(budget), planned / 1048576.0, rss / 1048576.0,
                (rss - planned) / 1048576.0);
  }
}

// --mem-budget auto without a memory cgroup of its own: the budget printed (in bytes) is what
// the machine has available less the headroom, and the text is the unlimited run's.
TEST(MemBudgetCommandTest, AutoBudgetRunsAndSaysWhereItCameFrom) {
  FLASHLM_REQUIRE_SHARED_MODEL(gguf, "stories260K-gguf/stories260K.gguf");
  ::flashlm::testing::ScratchDir dir;
  const std::string store = (dir / "store").string();
  CmdRun rp = Flashlm("repack " + gguf.string() + " " + store + " --dtype q8_0 --no-progress");
  ASSERT_EQ(rp.exit_code, 0) << rp.err;
  const std::string g = "generate " + store + " -p 'Once upon a time' -n 12 --temp 0 --ctx 64 ";
  CmdRun unlimited = Flashlm(g + "--mem-budget 0");
  ASSERT_EQ(unlimited.exit_code, 0) << unlimited.err;
  CmdRun automatic = Flashlm(g + "--mem-budget auto");
  ASSERT_EQ(automatic.exit_code, 0) << automatic.err;
  EXPECT_EQ(automatic.out, unlimited.out);
  std::smatch m;
  ASSERT_TRUE(std::regex_search(automatic.err, m,
                                std::regex("--mem-budget auto: [^(]*\\(([0-9]+) bytes; "
                                           "MemAvailable [^;]*; less [^)]* for everything else")))
      << automatic.err;
  EXPECT_GT(std::stoull(m[1].str()), 0u);
  EXPECT_NE(automatic.err.find("residency plan: budget"), std::string::npos) << automatic.err;
  // plan takes it too.
  CmdRun plan = Flashlm("plan " + store + " --ctx 64 --mem-budget auto");
  EXPECT_EQ(plan.exit_code, 0) << plan.err;
  EXPECT_NE(plan.err.find("--mem-budget auto: "), std::string::npos) << plan.err;
  // A checkpoint still needs a store, auto or not.
  CmdRun checkpoint = Flashlm("generate " + gguf.string() + " -n 2 --mem-budget auto");
  EXPECT_NE(checkpoint.exit_code, 0);
  EXPECT_NE(checkpoint.err.find("needs a store"), std::string::npos) << checkpoint.err;
}

// This process's cgroup v1 memory group directory, or "" when there is none.
fs::path OwnMemoryCgroupV1() {
  std::ifstream in("/proc/self/cgroup");
  std::string line;
  while (std::getline(in, line)) {
    const size_t a = line.find(":memory:");
    if (a != std::string::npos) {
      const fs::path dir = fs::path("/sys/fs/cgroup/memory") / line.substr(a + 8).substr(1);
      if (fs::is_directory(dir)) return dir;
    }
  }
  return {};
}

// A child memory group of this process's with a limit, removed at the end.
class MemoryCgroup {
 public:
  explicit MemoryCgroup(const fs::path& dir) : dir_(dir) {}
  ~MemoryCgroup() {
    std::error_code ec;
    fs::remove(dir_, ec);  // rmdir: empty once its processes have exited
  }
  bool SetLimit(uint64_t bytes) const {
    std::ofstream out(dir_ / "memory.limit_in_bytes");
    out << bytes;
    out.flush();
    return static_cast<bool>(out);
  }
  // A RunFlashlm prefix that runs the command in this group.
  std::string Prefix() const {
    return "sh -c 'echo $$ > " + (dir_ / "cgroup.procs").string() + " && exec \"$@\"' sh ";
  }

 private:
  fs::path dir_;
};

// In a memory cgroup with a limit of 256 MiB, auto takes the group's room (less 64 MiB) and names
// the group; with a limit below the headroom it refuses with the figures, not a crash.
TEST(MemBudgetCommandTest, AutoBudgetInAMemoryCgroupTakesItsRoom) {
#if defined(__SANITIZE_ADDRESS__)
  GTEST_SKIP() << "under AddressSanitizer the sanitizer's shadow memory is charged to the group";
#endif
  FLASHLM_REQUIRE_SHARED_MODEL(gguf, "stories260K-gguf/stories260K.gguf");
  const fs::path parent = OwnMemoryCgroupV1();
  if (parent.empty()) GTEST_SKIP() << "no cgroup v1 memory controller for this process";
  const fs::path dir = parent / ("flashlm-auto-test-" + std::to_string(getpid()));
  std::error_code ec;
  if (!fs::create_directory(dir, ec)) {
    GTEST_SKIP() << "cannot create the memory cgroup " << dir << ": " << ec.message()
                 << " (needs root)";
  }
  MemoryCgroup group(dir);
  constexpr uint64_t kMiB = uint64_t{1} << 20;
  ASSERT_TRUE(group.SetLimit(256 * kMiB));
  ::flashlm::testing::ScratchDir scratch;
  const std::string store = (scratch / "store").string();
  CmdRun rp = Flashlm("repack " + gguf.string() + " " + store + " --dtype q8_0 --no-progress");
  ASSERT_EQ(rp.exit_code, 0) << rp.err;
  const std::string g = "generate " + store + " -p 'Once upon a time' -n 12 --temp 0 --ctx 64 ";
  CmdRun unlimited = Flashlm(g + "--mem-budget 0");
  ASSERT_EQ(unlimited.exit_code, 0) << unlimited.err;
  CmdRun confined = ::flashlm::testing::RunFlashlm(g + "--mem-budget auto", group.Prefix());
  ASSERT_EQ(confined.exit_code, 0) << confined.err;
  EXPECT_EQ(confined.out, unlimited.out);
  std::smatch m;
  ASSERT_TRUE(std::regex_search(confined.err, m,
                                std::regex("--mem-budget auto: [^(]*\\(([0-9]+) bytes; .*memory "
                                           "cgroup [^:]*flashlm-auto-test-[0-9]+: .* free of "
                                           "its limit of 256 MiB")))
      << confined.err;
  // The group's room is 256 MiB less what the shell and flashlm itself held at start-up (a few
  // MiB); the headroom is 64 MiB.
  const uint64_t budget = std::stoull(m[1].str());
  EXPECT_LE(budget, 192 * kMiB);
  EXPECT_GE(budget, 160 * kMiB);
  // A limit below the headroom leaves nothing: refused, naming what there is.
  ASSERT_TRUE(group.SetLimit(48 * kMiB));
  CmdRun tight = ::flashlm::testing::RunFlashlm(g + "--mem-budget auto", group.Prefix());
  EXPECT_NE(tight.exit_code, 0);
  EXPECT_NE(tight.err.find("--mem-budget auto: only "), std::string::npos) << tight.err;
  EXPECT_NE(tight.err.find("left to everything else"), std::string::npos) << tight.err;
  EXPECT_TRUE(tight.out.empty()) << tight.out;
}

}  // namespace
}  // namespace flashlm::tools
