#include "layout/extent_reader.h"

#include <gtest/gtest.h>

#include <cstring>

#include "layout/repack.h"
#include "layout/store_reader.h"
#include "tests/layout/memory_checkpoint.h"
#include "tests/test_util.h"

namespace flashlm::layout {
namespace {

namespace fs = std::filesystem;
using testing::MemoryCheckpoint;

// A q8_0 store of a small model, 512-byte alignment (bundles of 204 bytes in 512-byte strides).
std::unique_ptr<StoreReader> MakeStore(const fs::path& dir) {
  MemoryCheckpoint src = MemoryCheckpoint::Llama(64, 172, 2, 50, DType::kQ8_0);
  RepackOptions o;
  o.alignment_bytes = 512;
  auto sum = Repack(src, (dir / "store").string(), o);
  EXPECT_TRUE(sum.ok()) << sum.status().ToString();
  auto r = StoreReader::Open((dir / "store").string());
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  return r.ok() ? std::move(*r) : nullptr;
}

// The store's ExtentReader with `queue_depth` reads in flight and `groups` read groups.
ExtentReader& Limited(StoreReader& store, uint32_t queue_depth, uint32_t groups) {
  ExtentReader& x = store.extent_reader();
  ExtentReaderLimits limits;
  limits.queue_depth = queue_depth;
  limits.groups = groups;
  EXPECT_TRUE(x.SetLimits(limits).ok());
  return x;
}

std::vector<std::byte> ReadAlone(StoreReader& r, const Extent& e) {
  std::vector<std::byte> out(e.raw_bytes);
  EXPECT_TRUE(r.ReadExtent(e, out).ok());
  return out;
}

// Neighbouring bundles are merged into few reads; every extent arrives verified and intact, and
// the counters say what was asked for and what was read.
TEST(ExtentReaderTest, SynchronousReadsMergeNeighbours) {
  ::flashlm::testing::ScratchDir dir;
  auto store = MakeStore(dir.path());
  ASSERT_NE(store, nullptr);
  ExtentReader& x = store->extent_reader();
  auto bundles = store->BundleExtents(0, 0, 172);
  ASSERT_TRUE(bundles.ok());
  std::vector<std::vector<std::byte>> want;
  for (const Extent& e : *bundles) want.push_back(ReadAlone(*store, e));
  x.ResetCounters();
  std::vector<std::vector<std::byte>> got(bundles->size());
  std::vector<ByteSpan> outs;
  uint64_t stored = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    got[i].resize((*bundles)[i].raw_bytes);
    outs.push_back(got[i]);
    stored += (*bundles)[i].stored_bytes;
  }
  ASSERT_TRUE(x.ReadExtents(*bundles, outs).ok());
  EXPECT_EQ(got, want);
  const ReadCounters c = x.counters();
  EXPECT_EQ(c.bytes_requested, stored);
  EXPECT_GE(c.bytes_read, stored);
  EXPECT_LT(c.reads, bundles->size() / 4) << "neighbours were not merged";
  // Sizes that disagree are refused before anything is read.
  outs[3] = outs[3].first(10);
  EXPECT_EQ(x.ReadExtents(*bundles, outs).code(), StatusCode::kInvalidArgument);
}

// Plans: merged neighbours land at their offsets in one buffer; without merging, every extent is
// a span of its own.
TEST(ExtentReaderTest, PlansMergeOrKeepApart) {
  ::flashlm::testing::ScratchDir dir;
  auto store = MakeStore(dir.path());
  ASSERT_NE(store, nullptr);
  ExtentReader& x = store->extent_reader();
  auto bundles = store->BundleExtents(1, 10, 20);
  ASSERT_TRUE(bundles.ok());
  ExtentPlan merged, apart;
  ASSERT_TRUE(x.PlanExtents(*bundles, 0, true, &merged).ok());
  ASSERT_TRUE(x.PlanExtents(*bundles, 0, false, &apart).ok());
  EXPECT_EQ(merged.reads.spans.size(), 1u);
  EXPECT_EQ(apart.reads.spans.size(), 20u);
  EXPECT_EQ(merged.requested_bytes, apart.requested_bytes);
  // Every other bundle: gaps of one stride merge only when the gap allowance covers them.
  std::vector<Extent> odd;
  for (size_t i = 0; i < bundles->size(); i += 2) odd.push_back((*bundles)[i]);
  ExtentPlan tight, loose;
  ASSERT_TRUE(x.PlanExtents(odd, 0, true, &tight).ok());
  const uint64_t stride = odd[1].offset_bytes - odd[0].offset_bytes;
  ASSERT_TRUE(x.PlanExtents(odd, stride, true, &loose).ok());
  EXPECT_EQ(tight.reads.spans.size(), odd.size());
  EXPECT_EQ(loose.reads.spans.size(), 1u);
  for (size_t i = 1; i < odd.size(); ++i) EXPECT_GT(loose.Offset(i), loose.Offset(i - 1));
  // A bad file index is refused.
  Extent bad = odd[0];
  bad.file_index = 7;
  EXPECT_EQ(x.PlanExtents(std::span<const Extent>(&bad, 1), 0, true, &tight).code(),
            StatusCode::kInvalidArgument);
}

// Two read groups in flight at once: each Wait returns when its own reads have landed, whatever
// order completions arrive in; the bytes are the store's.
TEST(ExtentReaderTest, GroupsLandIndependently) {
  ::flashlm::testing::ScratchDir dir;
  auto store = MakeStore(dir.path());
  ASSERT_NE(store, nullptr);
  ExtentReader& x = Limited(*store, 8, 2);
  auto g1 = x.AddGroup();
  auto g2 = x.AddGroup();
  ASSERT_TRUE(g1.ok() && g2.ok());
  EXPECT_EQ(x.AddGroup().status().code(), StatusCode::kResourceExhausted);
  auto a = store->BundleExtents(0, 0, 30);
  auto b = store->BundleExtents(1, 100, 30);
  ASSERT_TRUE(a.ok() && b.ok());
  ExtentPlan pa, pb;
  ASSERT_TRUE(x.PlanExtents(*a, 0, true, &pa).ok());
  ASSERT_TRUE(x.PlanExtents(*b, 0, false, &pb).ok());  // 30 reads: more than the queue holds
  auto ba = storage::AlignedBuffer::Allocate(pa.bytes, 4096);
  auto bb = storage::AlignedBuffer::Allocate(pb.bytes, 4096);
  ASSERT_TRUE(ba.ok() && bb.ok());
  EXPECT_EQ(x.QueuePlan(*g2, pb, bb->span()).code(), StatusCode::kResourceExhausted);
  EXPECT_FALSE(x.InFlight(*g2));  // nothing was queued
  ASSERT_TRUE(x.PlanExtents(*b, 0, true, &pb).ok());
  ASSERT_TRUE(x.QueuePlan(*g1, pa, ba->span()).ok());
  ASSERT_TRUE(x.QueuePlan(*g2, pb, bb->span()).ok());
  ASSERT_TRUE(x.Submit().ok());
  EXPECT_TRUE(x.InFlight(*g1) || x.InFlight(*g2));
  ASSERT_TRUE(x.Wait(*g2).ok());
  EXPECT_FALSE(x.InFlight(*g2));
  ASSERT_TRUE(x.Wait(*g1).ok());
  for (size_t i = 0; i < a->size(); ++i) {
    const Extent& e = (*a)[i];
    ConstByteSpan bytes(ba->data() + pa.Offset(i), e.stored_bytes);
    EXPECT_TRUE(x.Verify(e, bytes).ok());
    const std::vector<std::byte> want = ReadAlone(*store, e);
    EXPECT_EQ(std::memcmp(bytes.data(), want.data(), want.size()), 0) << i;
  }
  for (size_t i = 0; i < b->size(); ++i) {
    const Extent& e = (*b)[i];
    EXPECT_TRUE(x.Verify(e, ConstByteSpan(bb->data() + pb.Offset(i), e.stored_bytes)).ok());
  }
}

// Every read is booked to the source of its group (the synchronous path's to kOther): per
// source, the bytes and reads that landed; together they are the backend's totals.
TEST(ExtentReaderTest, ReadsAreCountedBySource) {
  ::flashlm::testing::ScratchDir dir;
  auto store = MakeStore(dir.path());
  ASSERT_NE(store, nullptr);
  ExtentReader& x = Limited(*store, 8, 2);
  auto ffn = x.AddGroup(ReadSource::kFfn);
  auto attention = x.AddGroup(ReadSource::kAttention);
  ASSERT_TRUE(ffn.ok() && attention.ok());
  auto a = store->BundleExtents(0, 0, 30);
  auto b = store->BundleExtents(1, 100, 3);
  ASSERT_TRUE(a.ok() && b.ok());
  ExtentPlan pa, pb;
  ASSERT_TRUE(x.PlanExtents(*a, 0, true, &pa).ok());
  ASSERT_TRUE(x.PlanExtents(*b, 0, false, &pb).ok());  // 3 reads
  auto ba = storage::AlignedBuffer::Allocate(pa.bytes, 4096);
  auto bb = storage::AlignedBuffer::Allocate(pb.bytes, 4096);
  ASSERT_TRUE(ba.ok() && bb.ok());
  x.ResetCounters();
  ASSERT_TRUE(x.QueuePlan(*ffn, pa, ba->span()).ok());
  ASSERT_TRUE(x.QueuePlan(*attention, pb, bb->span()).ok());
  ASSERT_TRUE(x.Submit().ok());
  ASSERT_TRUE(x.Wait(*attention).ok());
  ASSERT_TRUE(x.Wait(*ffn).ok());
  std::vector<std::byte> one((*b)[0].raw_bytes);  // the synchronous path
  ASSERT_TRUE(x.ReadExtents(std::span<const Extent>(b->data(), 1),
                            std::span<const ByteSpan>(std::vector<ByteSpan>{one}))
                  .ok());
  const ReadCounters c = x.counters();
  EXPECT_EQ(c.of(ReadSource::kFfn).reads, pa.reads.reads.size());
  EXPECT_EQ(c.of(ReadSource::kFfn).bytes_read, pa.bytes);
  EXPECT_EQ(c.of(ReadSource::kAttention).reads, 3u);
  EXPECT_EQ(c.of(ReadSource::kAttention).bytes_read, pb.bytes);
  EXPECT_EQ(c.of(ReadSource::kOther).reads, 1u);
  EXPECT_EQ(c.of(ReadSource::kClassifier).reads, 0u);
  uint64_t reads = 0, bytes = 0, wait = 0;
  for (const SourceCounters& s : c.by_source) {
    reads += s.reads;
    bytes += s.bytes_read;
    wait += s.wait_ns;
  }
  EXPECT_EQ(reads, c.reads);
  EXPECT_EQ(bytes, c.bytes_read);
  EXPECT_EQ(wait, c.wait_ns);
  EXPECT_STREQ(ReadSourceName(ReadSource::kFfn), "ffn");
  x.ResetCounters();
  EXPECT_EQ(x.counters().of(ReadSource::kFfn).reads, 0u);
}

// Idle work: at most kIdleWorkMax at once, a removed one's slot is taken again, and a removed
// work is never called (its holder may be gone); waits with idle work land every read intact.
TEST(ExtentReaderTest, IdleWorkSlotsAndRemoval) {
  ::flashlm::testing::ScratchDir dir;
  auto store = MakeStore(dir.path());
  ASSERT_NE(store, nullptr);
  ExtentReader& x = Limited(*store, 64, 1);
  auto g = x.AddGroup(ReadSource::kFfn);
  ASSERT_TRUE(g.ok());
  bool removed_ran = false;
  int kept_calls = 0;  // it may run or not, as reads land
  std::vector<uint32_t> slots;
  for (size_t i = 0; i < ExtentReader::kIdleWorkMax; ++i) {
    auto slot = x.AddIdleWork([&] {
      removed_ran = true;
      return false;
    });
    ASSERT_TRUE(slot.ok());
    slots.push_back(*slot);
  }
  EXPECT_EQ(x.AddIdleWork([] { return false; }).status().code(), StatusCode::kResourceExhausted);
  for (uint32_t slot : slots) x.RemoveIdleWork(slot);
  auto kept = x.AddIdleWork([&] { return ++kept_calls < 100; });
  ASSERT_TRUE(kept.ok());
  EXPECT_EQ(*kept, slots[0]);  // the first free slot
  auto bundles = store->BundleExtents(0, 0, 172);
  ASSERT_TRUE(bundles.ok());
  ExtentPlan plan;
  ASSERT_TRUE(x.PlanExtents(*bundles, 0, false, &plan).ok());
  auto buf = storage::AlignedBuffer::Allocate(plan.bytes, 4096);
  ASSERT_TRUE(buf.ok());
  for (size_t first = 0; first < bundles->size(); first += 32) {  // 32 reads at a time
    ExtentPlan part;
    const size_t n = std::min<size_t>(32, bundles->size() - first);
    ASSERT_TRUE(
        x.PlanExtents(std::span<const Extent>(bundles->data() + first, n), 0, false, &part).ok());
    ASSERT_TRUE(x.QueuePlan(*g, part, buf->span()).ok());
    ASSERT_TRUE(x.Submit().ok());
    ASSERT_TRUE(x.Wait(*g).ok());
    for (size_t i = 0; i < n; ++i) {
      const Extent& e = (*bundles)[first + i];
      EXPECT_TRUE(x.Verify(e, ConstByteSpan(buf->data() + part.Offset(i), e.stored_bytes)).ok());
    }
  }
  EXPECT_FALSE(removed_ran);
  x.RemoveIdleWork(*kept);
  x.RemoveIdleWork(*kept);  // twice: nothing happens
}

// A flipped byte is Corruption in the one message format: the extent, what it holds, its file
// and offset, both checksums.
TEST(ExtentReaderTest, VerifyNamesTheExtent) {
  ::flashlm::testing::ScratchDir dir;
  auto store = MakeStore(dir.path());
  ASSERT_NE(store, nullptr);
  const Extent e = store->BundleExtentAt(1, 3);
  ::flashlm::testing::FlipByte(dir.path() / "store" / DataFileName(0), e.offset_bytes + 17);
  std::vector<std::byte> out(e.raw_bytes);
  const Status s = store->ReadExtent(e, out);
  ASSERT_EQ(s.code(), StatusCode::kCorruption);
  const std::string msg(s.message());
  EXPECT_NE(msg.find("checksum mismatch in extent " + std::to_string(e.index) + " (FFN layer 1 "
                     "bundle 3 (neuron 3); data-00000.bin offset " +
                     std::to_string(e.offset_bytes) + ", " + std::to_string(e.stored_bytes) +
                     " bytes): catalog 0x"),
            std::string::npos)
      << msg;
  // Verify on its own, on bytes in memory.
  std::vector<std::byte> good = out;
  EXPECT_EQ(store->extent_reader().Verify(e, good).code(), StatusCode::kCorruption);
}

// With checksums on first reads only (StoreReadOptions::verify_every_read false), an extent that
// passed once is not hashed again: a byte flipped on disk after that goes unnoticed in it, while
// an extent read for the first time is still checked, and the default reader still finds both.
TEST(ExtentReaderTest, FirstReadOnlyChecksEachExtentOnce) {
  ::flashlm::testing::ScratchDir dir;
  auto every = MakeStore(dir.path());
  ASSERT_NE(every, nullptr);
  StoreReadOptions o;
  o.verify_every_read = false;
  auto opened = StoreReader::Open((dir / "store").string(), o);
  ASSERT_TRUE(opened.ok()) << opened.status().ToString();
  StoreReader& first = **opened;
  EXPECT_TRUE(every->verifies_every_read());
  EXPECT_FALSE(first.verifies_every_read());
  ExtentReader& x = first.extent_reader();
  const Extent seen = first.BundleExtentAt(1, 3), unseen = first.BundleExtentAt(1, 4);
  EXPECT_FALSE(x.Verified(seen));
  const std::vector<std::byte> intact = ReadAlone(first, seen);
  EXPECT_TRUE(x.Verified(seen));
  EXPECT_FALSE(x.Verified(unseen));
  EXPECT_FALSE(every->extent_reader().Verified(seen));  // the default reader records nothing
  const fs::path data = dir.path() / "store" / DataFileName(0);
  ::flashlm::testing::FlipByte(data, seen.offset_bytes + 17);
  ::flashlm::testing::FlipByte(data, unseen.offset_bytes + 17);
  std::vector<std::byte> out(seen.raw_bytes);
  EXPECT_EQ(every->ReadExtent(seen, out).code(), StatusCode::kCorruption);
  EXPECT_EQ(every->ReadExtent(unseen, out).code(), StatusCode::kCorruption);
  ASSERT_TRUE(first.ReadExtent(seen, out).ok());  // passed before: not checked again
  EXPECT_NE(out, intact);                         // (the flipped byte came through)
  const Status s = first.ReadExtent(unseen, out);
  EXPECT_EQ(s.code(), StatusCode::kCorruption);
  EXPECT_NE(std::string(s.message()).find("FFN layer 1 bundle 4"), std::string::npos)
      << s.ToString();
  EXPECT_FALSE(x.Verified(unseen));
  // Verify and CheckDigest on bytes in memory follow the same record.
  EXPECT_TRUE(x.Verify(seen, out).ok());
  EXPECT_EQ(x.CheckDigest(unseen, 0).code(), StatusCode::kCorruption);
}

TEST(ExtentReaderTest, BadLimitsAreRefused) {
  ::flashlm::testing::ScratchDir dir;
  auto store = MakeStore(dir.path());
  ASSERT_NE(store, nullptr);
  ExtentReaderLimits l;
  l.queue_depth = 0;
  EXPECT_EQ(store->extent_reader().SetLimits(l).code(), StatusCode::kInvalidArgument);
  l.queue_depth = 4;
  l.read_max_bytes = 1000;
  EXPECT_EQ(store->extent_reader().SetLimits(l).code(), StatusCode::kInvalidArgument);
  l.read_max_bytes = 1 << 20;
  EXPECT_TRUE(store->extent_reader().SetLimits(l).ok());
  EXPECT_GT(ExtentReader::ResidentBytes(l), l.staging_bytes);
}

}  // namespace
}  // namespace flashlm::layout
