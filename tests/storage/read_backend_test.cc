// The conformance suite every ReadBackend must pass (TYPED_TEST over uring, pread, memory and
// the fault-injecting wrapper), fault cases included: short reads, EAGAIN/EINTR, EIO, bit
// flips, delays, EOF, bounds on queue depth, invalid requests, and the O_DIRECT fallback.
#include "storage/read_backend.h"

#include <gtest/gtest.h>

#include <cerrno>
#include <filesystem>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "storage/buffer_pool.h"
#include "storage/fault_backend.h"
#include "storage/fault_injector.h"
#include "storage/file.h"
#include "storage/memory_backend.h"
#include "storage/uring_backend.h"
#include "tests/storage/storage_test_util.h"
#include "tests/test_util.h"

namespace flashlm::storage {
namespace {

using ::flashlm::storage::testing::CountBitFlips;
using ::flashlm::storage::testing::CountMismatches;
using ::flashlm::storage::testing::WritePatternFile;

struct UringKind {
  static constexpr BackendKind kKind = BackendKind::kUring;
  static constexpr bool kFaultWrapper = false;
};
struct PreadKind {
  static constexpr BackendKind kKind = BackendKind::kPread;
  static constexpr bool kFaultWrapper = false;
};
struct MemoryKind {
  static constexpr BackendKind kKind = BackendKind::kMemory;
  static constexpr bool kFaultWrapper = false;
};
struct FaultPreadKind {
  static constexpr BackendKind kKind = BackendKind::kPread;
  static constexpr bool kFaultWrapper = true;
};

// 1 MiB plus a tail that is not a multiple of any alignment.
constexpr uint64_t kFileBytes = (1u << 20) + 1000;
constexpr uint32_t kDepth = 8;
constexpr uint64_t kBlock = 16384;

template <typename Kind>
class ReadBackendTest : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = (scratch_ / "data.bin").string();
    WritePatternFile(path_, kFileBytes);
    auto file = File::OpenForRead(path_);
    ASSERT_TRUE(file.ok()) << file.status().ToString();
    file_ = std::make_unique<File>(std::move(file).value());
    auto pool = BufferPool::Create(kDepth, kBlock, 4096);
    ASSERT_TRUE(pool.ok());
    pool_ = std::make_unique<BufferPool>(std::move(pool).value());
  }

  // Builds the backend under test; skips (with the reason) when the kernel refuses io_uring.
  void Make(FaultInjector* faults = nullptr, uint32_t depth = kDepth) {
    ReadBackendOptions o;
    o.queue_depth_max = depth;
    o.registered_buffers = pool_.get();
    o.faults = faults;
    Result<std::unique_ptr<ReadBackend>> b = Kind::kFaultWrapper
                                                 ? MakeFaultBackend(Kind::kKind, o, faults)
                                                 : MakeReadBackend(Kind::kKind, o);
    if (!b.ok() && b.status().code() == StatusCode::kNotSupported) {
      GTEST_SKIP() << "backend unavailable here: " << b.status().ToString();
    }
    ASSERT_TRUE(b.ok()) << b.status().ToString();
    backend_ = std::move(b).value();
    auto id = backend_->RegisterFile(*file_);
    ASSERT_TRUE(id.ok()) << id.status().ToString();
    file_id_ = *id;
  }

  // Reads `offsets` (kBlock each, into pool buffers) at full depth; returns completions by tag.
  std::vector<ReadCompletion> ReadAll(const std::vector<uint64_t>& offsets) {
    std::vector<ReadCompletion> by_tag(offsets.size());
    std::vector<ReadCompletion> out(kDepth);
    size_t next = 0, done = 0;
    std::vector<int> buffer_of_slot(offsets.size(), -1);
    while (done < offsets.size()) {
      while (next < offsets.size() && backend_->in_flight() < kDepth) {
        auto buf = pool_->Acquire();
        EXPECT_TRUE(buf.has_value());
        if (!buf) return by_tag;
        buffer_of_slot[next] = static_cast<int>(*buf);
        ReadRequest r{file_id_, offsets[next], pool_->buffer(*buf).first(kBlock), next};
        Status s = backend_->Submit({&r, 1});
        EXPECT_TRUE(s.ok()) << s.ToString();
        if (!s.ok()) return by_tag;
        ++next;
      }
      Result<size_t> n = backend_->Reap(1, out);
      EXPECT_TRUE(n.ok()) << n.status().ToString();
      if (!n.ok()) return by_tag;
      EXPECT_GE(*n, 1u);
      for (size_t i = 0; i < *n; ++i) {
        uint64_t tag = out[i].tag;
        EXPECT_LT(tag, offsets.size());
        if (tag >= offsets.size()) continue;
        ByteSpan data = pool_->buffer(buffer_of_slot[tag]).first(out[i].bytes_read);
        flips_ += CountBitFlips(data, offsets[tag]);
        mismatched_bytes_ += CountMismatches(data, offsets[tag]);
        pool_->Release(buffer_of_slot[tag]);
        by_tag[tag] = std::move(out[i]);
        ++done;
      }
    }
    return by_tag;
  }

  std::vector<uint64_t> RandomOffsets(size_t n, uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::vector<uint64_t> v(n);
    for (auto& o : v) o = (rng() % (kFileBytes / kBlock)) * kBlock;
    return v;
  }

  flashlm::testing::ScratchDir scratch_;
  std::string path_;
  std::unique_ptr<File> file_;
  std::unique_ptr<BufferPool> pool_;
  std::unique_ptr<ReadBackend> backend_;
  uint32_t file_id_ = 0;
  uint64_t flips_ = 0;
  uint64_t mismatched_bytes_ = 0;
};

using BackendKinds = ::testing::Types<UringKind, PreadKind, MemoryKind, FaultPreadKind>;
class KindNames {
 public:
  template <typename T>
  static std::string GetName(int) {
    if (std::is_same_v<T, UringKind>) return "uring";
    if (std::is_same_v<T, PreadKind>) return "pread";
    if (std::is_same_v<T, MemoryKind>) return "memory";
    return "fault_pread";
  }
};
TYPED_TEST_SUITE(ReadBackendTest, BackendKinds, KindNames);

TYPED_TEST(ReadBackendTest, ReadsMatchTheFileAtFullDepth) {
  this->Make();
  if (this->IsSkipped()) return;
  auto offsets = this->RandomOffsets(200, 1);
  auto done = this->ReadAll(offsets);
  for (size_t i = 0; i < done.size(); ++i) {
    EXPECT_TRUE(done[i].status.ok()) << done[i].status.ToString();
    EXPECT_EQ(done[i].bytes_read, kBlock);
    EXPECT_EQ(done[i].tag, i);
  }
  EXPECT_EQ(this->mismatched_bytes_, 0u);
  EXPECT_EQ(this->backend_->in_flight(), 0u);
  const IoStats& st = this->backend_->stats();
  EXPECT_EQ(st.reads(), 200u);
  EXPECT_EQ(st.bytes(), 200 * kBlock);
  EXPECT_EQ(st.errors(), 0u);
  EXPECT_GE(st.LatencyQuantileNs(0.99), st.LatencyQuantileNs(0.5));
  this->backend_->ResetStats();
  EXPECT_EQ(this->backend_->stats().reads(), 0u);
}

TYPED_TEST(ReadBackendTest, ReadsIntoUnregisteredBuffersToo) {
  this->Make();
  if (this->IsSkipped()) return;
  auto buf = AlignedBuffer::Allocate(3 * kBlock, 4096);
  ASSERT_TRUE(buf.ok());
  std::vector<ReadRequest> batch;
  for (uint64_t i = 0; i < 3; ++i) {
    batch.push_back(
        {this->file_id_, (10 + 7 * i) * kBlock, buf->span().subspan(i * kBlock, kBlock), 100 + i});
  }
  ASSERT_TRUE(this->backend_->Submit(batch).ok());
  std::vector<ReadCompletion> out(8);
  size_t got = 0;
  while (got < 3) {
    auto n = this->backend_->Reap(3 - got, std::span(out).subspan(got));
    ASSERT_TRUE(n.ok());
    got += *n;
  }
  for (size_t i = 0; i < 3; ++i) {
    ASSERT_TRUE(out[i].status.ok()) << out[i].status.ToString();
    uint64_t k = out[i].tag - 100;
    EXPECT_EQ(CountMismatches(buf->span().subspan(k * kBlock, kBlock), (10 + 7 * k) * kBlock), 0u);
  }
}

TYPED_TEST(ReadBackendTest, EndOfFileShortensTheReadWithOkStatus) {
  this->Make();
  if (this->IsSkipped()) return;
  uint64_t last = AlignDown(kFileBytes, 4096);  // the block holding the unaligned tail
  uint64_t past = AlignUp(kFileBytes, 4096) + 4096;
  ByteSpan a = this->pool_->buffer(0).first(8192);
  ByteSpan b = this->pool_->buffer(1).first(4096);
  ReadRequest batch[] = {{this->file_id_, last, a, 1}, {this->file_id_, past, b, 2}};
  ASSERT_TRUE(this->backend_->Submit(batch).ok());
  ReadCompletion out[2];
  size_t got = 0;
  while (got < 2) {
    auto n = this->backend_->Reap(2, std::span(out).subspan(got));
    ASSERT_TRUE(n.ok());
    got += *n;
  }
  for (const ReadCompletion& c : out) {
    ASSERT_TRUE(c.status.ok()) << c.status.ToString();
    if (c.tag == 1) {
      EXPECT_EQ(c.bytes_read, kFileBytes - last);
      EXPECT_EQ(CountMismatches(a.first(c.bytes_read), last), 0u);
    } else {
      EXPECT_EQ(c.bytes_read, 0u);
    }
  }
}

TYPED_TEST(ReadBackendTest, QueueDepthIsABound) {
  this->Make(nullptr, 4);
  if (this->IsSkipped()) return;
  EXPECT_EQ(this->backend_->queue_depth_max(), 4u);
  std::vector<ReadRequest> five;
  for (uint32_t i = 0; i < 5; ++i) {
    five.push_back({this->file_id_, i * kBlock, this->pool_->buffer(i).first(kBlock), i});
  }
  Status s = this->backend_->Submit(five);
  EXPECT_EQ(s.code(), StatusCode::kResourceExhausted) << s.ToString();
  EXPECT_EQ(this->backend_->in_flight(), 0u);  // all or nothing
  ASSERT_TRUE(this->backend_->Submit(std::span(five).first(4)).ok());
  EXPECT_EQ(this->backend_->in_flight(), 4u);
  EXPECT_EQ(this->backend_->Submit(std::span(five).subspan(4)).code(),
            StatusCode::kResourceExhausted);
  std::vector<ReadCompletion> out(2);  // smaller than what is ready: the rest waits
  size_t got = 0;
  while (got < 4) {
    auto n = this->backend_->Reap(1, out);
    ASSERT_TRUE(n.ok());
    ASSERT_LE(*n, 2u);
    got += *n;
  }
  EXPECT_EQ(this->backend_->in_flight(), 0u);
  auto n = this->backend_->Reap(0, out);  // nothing in flight: returns at once
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(*n, 0u);
}

TYPED_TEST(ReadBackendTest, InvalidRequestsAreRejectedWhole) {
  this->Make();
  if (this->IsSkipped()) return;
  ByteSpan buf = this->pool_->buffer(0).first(kBlock);
  ReadRequest good{this->file_id_, 0, buf, 1};
  ReadRequest unknown{this->file_id_ + 7, 0, this->pool_->buffer(1).first(kBlock), 2};
  ReadRequest batch[] = {good, unknown};
  EXPECT_EQ(this->backend_->Submit(batch).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(this->backend_->in_flight(), 0u);
  if (this->file_->is_direct()) {
    ReadRequest misaligned{this->file_id_, 100, buf, 3};
    Status s = this->backend_->Submit({&misaligned, 1});
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.ToString();
    EXPECT_NE(s.message().find("aligned"), std::string_view::npos) << s.ToString();
  }
}

TYPED_TEST(ReadBackendTest, ShortReadsAreFinishedInsideTheBackend) {
  FaultConfig fc;
  fc.seed = 7;
  fc.short_read_rate = 0.6;
  FaultInjector faults(fc);
  this->Make(&faults);
  if (this->IsSkipped()) return;
  auto offsets = this->RandomOffsets(100, 2);
  auto done = this->ReadAll(offsets);
  for (const auto& c : done) {
    EXPECT_TRUE(c.status.ok()) << c.status.ToString();
    EXPECT_EQ(c.bytes_read, kBlock);
  }
  EXPECT_EQ(this->mismatched_bytes_, 0u);
  EXPECT_GT(faults.counts().short_reads, 10u);
  EXPECT_GT(this->backend_->stats().retries(), 0u);
}

TYPED_TEST(ReadBackendTest, EagainAndEintrAreRetriedInsideTheBackend) {
  FaultConfig fc;
  fc.seed = 8;
  fc.eagain_rate = 0.3;
  fc.eintr_rate = 0.3;
  FaultInjector faults(fc);
  this->Make(&faults);
  if (this->IsSkipped()) return;
  auto done = this->ReadAll(this->RandomOffsets(100, 3));
  for (const auto& c : done) {
    EXPECT_TRUE(c.status.ok()) << c.status.ToString();
    EXPECT_EQ(c.bytes_read, kBlock);
  }
  EXPECT_EQ(this->mismatched_bytes_, 0u);
  EXPECT_GT(faults.counts().eagains, 5u);
  EXPECT_GT(faults.counts().eintrs, 5u);
}

TYPED_TEST(ReadBackendTest, EioFailsOnlyThatRequest) {
  FaultConfig fc;
  fc.eio_rate = 1.0;
  fc.faults_max = 1;
  FaultInjector faults(fc);
  this->Make(&faults);
  if (this->IsSkipped()) return;
  auto done = this->ReadAll(this->RandomOffsets(40, 4));
  int failed = 0;
  for (const auto& c : done) {
    if (c.status.ok()) {
      EXPECT_EQ(c.bytes_read, kBlock);
    } else {
      ++failed;
      EXPECT_EQ(c.status.code(), StatusCode::kIoError);
      EXPECT_NE(c.status.message().find("offset"), std::string_view::npos) << c.status.ToString();
    }
  }
  EXPECT_EQ(failed, 1);
  EXPECT_EQ(this->mismatched_bytes_, 0u);
  EXPECT_EQ(this->backend_->stats().errors(), 1u);
}

TYPED_TEST(ReadBackendTest, AFlippedBitIsObservable) {
  FaultConfig fc;
  fc.bit_flip_rate = 1.0;
  fc.faults_max = 1;
  FaultInjector faults(fc);
  this->Make(&faults);
  if (this->IsSkipped()) return;
  auto done = this->ReadAll(this->RandomOffsets(20, 5));
  for (const auto& c : done) EXPECT_TRUE(c.status.ok());
  // The status says nothing (only a checksum can): exactly one bit of the data is wrong.
  EXPECT_EQ(this->flips_, 1u);
  EXPECT_EQ(faults.counts().bit_flips, 1u);
}

TYPED_TEST(ReadBackendTest, SlowReadsStillComplete) {
  FaultConfig fc;
  fc.delay_rate = 0.5;
  fc.delay_us = 500;
  FaultInjector faults(fc);
  this->Make(&faults);
  if (this->IsSkipped()) return;
  auto done = this->ReadAll(this->RandomOffsets(30, 6));
  for (const auto& c : done) EXPECT_TRUE(c.status.ok());
  EXPECT_EQ(this->mismatched_bytes_, 0u);
  EXPECT_GT(faults.counts().delays, 0u);
}

TYPED_TEST(ReadBackendTest, DirectRefusedFallsBackToBufferedReads) {
  // The EINVAL path is simulated (tmpfs on this kernel accepts O_DIRECT), then checked end to
  // end: the file opens buffered, and unaligned reads, legal without O_DIRECT, succeed.
  FileOptions fo;
  fo.simulate_direct_open_errno = EINVAL;
  auto buffered = File::OpenForRead(this->path_, fo);
  ASSERT_TRUE(buffered.ok()) << buffered.status().ToString();
  EXPECT_FALSE(buffered->is_direct());
  EXPECT_EQ(buffered->required_alignment_bytes(), 1u);
  this->file_ = std::make_unique<File>(std::move(buffered).value());
  this->Make();
  if (this->IsSkipped()) return;
  std::vector<std::byte> buf(777);
  ReadRequest r{this->file_id_, 12345, buf, 9};
  ASSERT_TRUE(this->backend_->Submit({&r, 1}).ok());
  ReadCompletion c;
  auto n = this->backend_->Reap(1, {&c, 1});
  ASSERT_TRUE(n.ok());
  ASSERT_EQ(*n, 1u);
  ASSERT_TRUE(c.status.ok()) << c.status.ToString();
  EXPECT_EQ(c.bytes_read, 777u);
  EXPECT_EQ(CountMismatches(buf, 12345), 0u);
}

TYPED_TEST(ReadBackendTest, FilesOnTmpfsReadCorrectly) {
  // /dev/shm is tmpfs: older kernels refuse O_DIRECT there (real EINVAL fallback), newer ones
  // accept it. Either way the data must come back right.
  if (!std::filesystem::is_directory("/dev/shm")) GTEST_SKIP() << "no /dev/shm here";
  std::string path = "/dev/shm/flashlm-read-backend-test-" + std::to_string(getpid());
  WritePatternFile(path, 64 * 1024 + 10);
  auto f = File::OpenForRead(path);
  std::filesystem::remove(path);  // the open descriptor keeps it alive
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  this->file_ = std::make_unique<File>(std::move(f).value());
  this->Make();
  if (this->IsSkipped()) return;
  ByteSpan buf = this->pool_->buffer(0).first(kBlock);
  ReadRequest r{this->file_id_, 4 * kBlock, buf, 1};
  ASSERT_TRUE(this->backend_->Submit({&r, 1}).ok());
  ReadCompletion c;
  auto n = this->backend_->Reap(1, {&c, 1});
  ASSERT_TRUE(n.ok());
  ASSERT_TRUE(c.status.ok()) << c.status.ToString();
  EXPECT_EQ(c.bytes_read, 10u);
  EXPECT_EQ(CountMismatches(buf.first(10), 4 * kBlock), 0u);
}

TEST(UringBackendTest, UsesFixedFilesAndBuffersWhereTheKernelAllows) {
  auto pool = BufferPool::Create(4, 4096);
  ASSERT_TRUE(pool.ok());
  ReadBackendOptions o;
  o.queue_depth_max = 4;
  o.registered_buffers = &*pool;
  auto b = UringBackend::Create(o);
  if (!b.ok()) GTEST_SKIP() << "io_uring refused: " << b.status().ToString();
  EXPECT_TRUE((*b)->fixed_files());
  EXPECT_TRUE((*b)->fixed_buffers());
  EXPECT_EQ((*b)->name(), "uring");
}

TEST(FaultBackendTest, WrapsAnyBackendWithRequestLevelFaults) {
  ReadBackendOptions o;
  o.queue_depth_max = 4;
  auto mem = MemoryBackend::Create(o);
  ASSERT_TRUE(mem.ok());
  std::vector<std::byte> contents(4096);
  for (size_t i = 0; i < contents.size(); ++i) contents[i] = testing::PatternByte(i);
  ASSERT_TRUE((*mem)->AddFile(contents).ok());
  FaultConfig fc;
  fc.eio_rate = 0.5;
  fc.bit_flip_rate = 1.0;
  fc.seed = 3;
  FaultInjector faults(fc);
  FaultBackend fb(std::move(mem).value(), &faults);
  EXPECT_EQ(fb.name(), "fault(memory)");
  int failed = 0, flipped = 0;
  for (int round = 0; round < 20; ++round) {
    std::vector<std::byte> buf(1024);
    ReadRequest r{0, 1024, buf, static_cast<uint64_t>(round)};
    ASSERT_TRUE(fb.Submit({&r, 1}).ok());
    ReadCompletion c;
    auto n = fb.Reap(1, {&c, 1});
    ASSERT_TRUE(n.ok());
    ASSERT_EQ(*n, 1u);
    EXPECT_EQ(c.tag, static_cast<uint64_t>(round));  // the caller's tag comes back
    if (!c.status.ok()) {
      ++failed;
      EXPECT_EQ(c.status.code(), StatusCode::kIoError);
    } else {
      EXPECT_EQ(CountBitFlips(buf, 1024), 1u);
      ++flipped;
    }
  }
  EXPECT_GT(failed, 0);
  EXPECT_GT(flipped, 0);
}

TEST(MakeReadBackendTest, AutoPicksABackendAndNamesParse) {
  ReadBackendOptions o;
  o.queue_depth_max = 2;
  auto b = MakeReadBackend(BackendKind::kAuto, o);
  ASSERT_TRUE(b.ok()) << b.status().ToString();
  EXPECT_TRUE((*b)->name() == "uring" || (*b)->name() == "pread");
  EXPECT_EQ(*ParseBackendKind("pread"), BackendKind::kPread);
  EXPECT_EQ(ParseBackendKind("spdk").status().code(), StatusCode::kInvalidArgument);
  o.queue_depth_max = 0;
  EXPECT_EQ(MakeReadBackend(BackendKind::kAuto, o).status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace flashlm::storage
