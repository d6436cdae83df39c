#include "cache/kv_page_cache.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <random>
#include <vector>

#include "tests/test_util.h"

namespace flashlm::cache {
namespace {

using layout::KvKind;

// 2 sequences x 3 layers x 40 positions in 4-token pages of 32 f32 values (512 bytes of rows,
// padded to 4 KiB pages): 10 pages per (sequence, layer), 60 V pages.
layout::VCacheLayout SmallLayout() {
  layout::VCacheLayout l;
  l.n_layers = 3;
  l.n_kv_heads = 2;
  l.head_dim = 16;
  l.tokens_per_page = 4;
  l.max_tokens = 40;
  l.max_sequences = 2;
  l.dtype = layout::DType::kF32;
  return l;
}

KvPageCacheOptions Options(uint64_t pool_bytes, const flashlm::testing::ScratchDir& dir) {
  KvPageCacheOptions o;
  o.layout = SmallLayout();
  o.pool_bytes = pool_bytes;
  o.spill_dir = dir.path().string();
  return o;
}

// The bytes of row `pos` of (kind, seq, layer) in the reference: a pattern of its coordinates
// and a per-write generation, so a stale row after a rewind is told apart from a fresh one.
void FillRow(std::byte* row, uint64_t row_bytes, KvKind kind, uint32_t seq, uint32_t layer,
             uint32_t pos, uint32_t generation) {
  for (uint64_t i = 0; i < row_bytes; ++i) {
    row[i] = static_cast<std::byte>((i * 7 + pos * 13 + layer * 31 + seq * 57 +
                                     static_cast<uint32_t>(kind) * 101 + generation * 3) &
                                    0xff);
  }
}

// Writes position `pos` of `seq` in every layer, K and V, as the engine does.
void WriteAll(KvPageCache& c, uint32_t seq, uint32_t pos, uint32_t generation) {
  const layout::VCacheLayout& l = c.layout();
  const uint64_t rb = l.row_bytes();
  for (uint32_t layer = 0; layer < l.n_layers; ++layer) {
    for (KvKind kind : {KvKind::kKey, KvKind::kValue}) {
      auto page = c.PageForWrite(kind, seq, layer, pos / l.tokens_per_page);
      ASSERT_TRUE(page.ok()) << page.status().ToString();
      FillRow(page->data() + (pos % l.tokens_per_page) * rb, rb, kind, seq, layer, pos, generation);
    }
    ASSERT_TRUE(
        c.MarkValueRowWritten(seq, layer, pos / l.tokens_per_page, pos % l.tokens_per_page).ok());
  }
}

TEST(KvPageCacheTest, SizesAndBounds) {
  flashlm::testing::ScratchDir dir;
  const layout::VCacheLayout l = SmallLayout();
  EXPECT_EQ(KvPageCache::FullPoolBytes(l), 2u * 60 * 4096);
  // Every K page, one layer's pages of both sequences, one page being filled per layer.
  EXPECT_EQ(KvPageCache::MinimumPoolBytes(l), (60u + 2 * (10 + 3)) * 4096);
  auto small = KvPageCache::Create(Options(KvPageCache::MinimumPoolBytes(l) - 1, dir));
  EXPECT_EQ(small.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(small.status().ToString().find("minimum"), std::string::npos);
  KvPageCacheOptions huge = Options(~uint64_t{0}, dir);
  huge.layout.max_tokens = 1u << 30;
  huge.layout.tokens_per_page = 1;
  EXPECT_EQ(KvPageCache::Create(huge).status().code(), StatusCode::kInvalidArgument);
  KvPageCacheOptions nodir = Options(KvPageCache::MinimumPoolBytes(l), dir);
  nodir.spill_dir = (dir / "missing").string();
  EXPECT_FALSE(KvPageCache::Create(nodir).ok());
  // A pool holding everything spills nothing and has no file.
  auto full = KvPageCache::Create(Options(KvPageCache::FullPoolBytes(l), dir));
  ASSERT_TRUE(full.ok());
  EXPECT_FALSE((*full)->spills());
  EXPECT_EQ((*full)->spill_file(), nullptr);
}

// A seeded random workload of writes, rewinds and fetches against a plain reference copy of
// every row: at the minimum pool, V pages go to flash and come back identical; nothing is left
// in the spill folder, during or after.
TEST(KvPageCacheTest, SpilledPagesMatchReferenceUnderRandomWorkload) {
  flashlm::testing::ScratchDir dir;
  const layout::VCacheLayout l = SmallLayout();
  auto created = KvPageCache::Create(Options(KvPageCache::MinimumPoolBytes(l), dir));
  ASSERT_TRUE(created.ok()) << created.status().ToString();
  KvPageCache& c = **created;
  ASSERT_TRUE(c.spills());
  EXPECT_TRUE(std::filesystem::is_empty(dir.path()));  // unlinked as soon as it was opened
  const uint64_t rb = l.row_bytes();
  std::vector<uint32_t> length(l.max_sequences, 0), generation(l.max_sequences, 0);
  // [seq][pos]: the generation the row was last written with.
  std::vector<std::vector<uint32_t>> written(l.max_sequences,
                                             std::vector<uint32_t>(l.max_tokens, 0));
  std::mt19937 rng(7);
  std::vector<std::byte> want(rb);
  uint64_t fetches = 0;
  for (int step = 0; step < 3000; ++step) {
    const uint32_t seq = rng() % l.max_sequences;
    const uint32_t op = rng() % 10;
    if (op < 6 && length[seq] < l.max_tokens) {  // append
      WriteAll(c, seq, length[seq], generation[seq]);
      if (HasFatalFailure()) return;
      written[seq][length[seq]] = generation[seq];
      ++length[seq];
    } else if (op < 7 && length[seq] > 0) {  // rewind
      const uint32_t to = rng() % length[seq];
      c.Truncate(seq, to);
      length[seq] = to;
      ++generation[seq];           // rows written from here on differ from the dropped ones
    } else if (length[seq] > 0) {  // attention over one layer: every page, checked
      const uint32_t layer = rng() % l.n_layers;
      const uint64_t pages = CeilDiv(length[seq], l.tokens_per_page);
      Status st = c.FetchValues(seq, layer, 0, pages);
      ASSERT_TRUE(st.ok()) << st.ToString();
      ++fetches;
      for (uint32_t pos = 0; pos < length[seq]; ++pos) {
        for (KvKind kind : {KvKind::kKey, KvKind::kValue}) {
          const std::byte* got = c.PageData(kind, seq, layer, pos / l.tokens_per_page) +
                                 (pos % l.tokens_per_page) * rb;
          FillRow(want.data(), rb, kind, seq, layer, pos, written[seq][pos]);
          ASSERT_EQ(std::memcmp(got, want.data(), rb), 0)
              << "seq " << seq << " layer " << layer << " pos " << pos;
        }
      }
      c.ReleaseFetched();
    }
  }
  EXPECT_GT(fetches, 100u);
  EXPECT_GT(c.stats().pages_written, 0u);
  EXPECT_GT(c.stats().reads, 0u);
  EXPECT_EQ(c.stats().bytes_read, c.stats().reads * l.page_stride_bytes());
  EXPECT_TRUE(std::filesystem::is_empty(dir.path()));
}

// A spilled page damaged on flash is Corruption naming the page; the cache stays usable.
TEST(KvPageCacheTest, DamagedSpilledPageIsCorruption) {
  flashlm::testing::ScratchDir dir;
  const layout::VCacheLayout l = SmallLayout();
  auto created = KvPageCache::Create(Options(KvPageCache::MinimumPoolBytes(l), dir));
  ASSERT_TRUE(created.ok());
  KvPageCache& c = **created;
  for (uint32_t seq = 0; seq < l.max_sequences; ++seq) {
    for (uint32_t pos = 0; pos < l.max_tokens; ++pos) {
      WriteAll(c, seq, pos, 0);
      if (HasFatalFailure()) return;
    }
  }
  // Find a V page that is on flash and not resident, and flip one byte of it in the file.
  uint32_t seq = 0, layer = 0;
  uint64_t page = 0;
  bool found = false;
  for (uint32_t s = 0; s < l.max_sequences && !found; ++s) {
    for (uint32_t y = 0; y < l.n_layers && !found; ++y) {
      for (uint64_t p = 0; p < l.pages_per_seq() && !found; ++p) {
        if (c.value_on_flash(s, y, p) && !c.value_resident(s, y, p)) {
          seq = s, layer = y, page = p, found = true;
        }
      }
    }
  }
  ASSERT_TRUE(found);
  ASSERT_NE(c.spill_file(), nullptr);
  // The file is unlinked: reach it through this process's descriptor, without O_DIRECT.
  const std::string fd_path = "/proc/self/fd/" + std::to_string(c.spill_file()->fd());
  const int fd = ::open(fd_path.c_str(), O_RDWR);
  ASSERT_GE(fd, 0);
  const uint64_t offset = l.PageOffset(KvKind::kValue, seq, layer, page) + 5;
  std::byte b;
  ASSERT_EQ(::pread(fd, &b, 1, static_cast<off_t>(offset)), 1);
  b ^= std::byte{0x10};
  ASSERT_EQ(::pwrite(fd, &b, 1, static_cast<off_t>(offset)), 1);
  ASSERT_EQ(::fsync(fd), 0);
  ::close(fd);
  Status st = c.FetchValues(seq, layer, 0, l.pages_per_seq());
  EXPECT_EQ(st.code(), StatusCode::kCorruption) << st.ToString();
  EXPECT_NE(st.ToString().find("V page " + std::to_string(page)), std::string::npos)
      << st.ToString();
  EXPECT_FALSE(c.value_resident(seq, layer, page));  // the bad copy is not kept
  // Other pages still read back.
  const uint32_t other = (seq + 1) % l.max_sequences;
  EXPECT_TRUE(c.FetchValues(other, layer, 0, l.pages_per_seq()).ok());
  c.ReleaseFetched();
}

// Flips one byte of the (unlinked) spill file at `offset`, through this process's descriptor.
void DamageSpill(const KvPageCache& c, uint64_t offset) {
  const std::string fd_path = "/proc/self/fd/" + std::to_string(c.spill_file()->fd());
  const int fd = ::open(fd_path.c_str(), O_RDWR);
  ASSERT_GE(fd, 0);
  std::byte b;
  ASSERT_EQ(::pread(fd, &b, 1, static_cast<off_t>(offset)), 1);
  b ^= std::byte{0x10};
  ASSERT_EQ(::pwrite(fd, &b, 1, static_cast<off_t>(offset)), 1);
  ASSERT_EQ(::fsync(fd), 0);
  ::close(fd);
}

// --kv-fetch rows: a fetch with positions reads only the needed rows of pages on flash (runs of
// adjacent rows as one read, widened to the file's O_DIRECT alignment), counts exactly those
// reads and bytes, returns the rows intact, keeps nothing resident after the release, and checks
// every needed row against its own checksum (a damaged row beside it in the same block is not
// used, so not an error; a damaged needed row is Corruption naming the row).
TEST(KvPageCacheTest, RowFetchReadsOnlyTheNeededRows) {
  for (bool direct : {false, true}) {
    flashlm::testing::ScratchDir dir;
    const layout::VCacheLayout l = SmallLayout();
    KvPageCacheOptions o = Options(KvPageCache::MinimumPoolBytes(l), dir);
    o.fetch_rows = true;
    o.direct = direct;
    auto created = KvPageCache::Create(o);
    ASSERT_TRUE(created.ok()) << created.status().ToString();
    KvPageCache& c = **created;
    for (uint32_t seq = 0; seq < l.max_sequences; ++seq) {
      for (uint32_t pos = 0; pos < l.max_tokens; ++pos) {
        WriteAll(c, seq, pos, 0);
        if (HasFatalFailure()) return;
      }
    }
    // Sequence 1 was written last and holds more V pages than the pool: sequence 0's V pages
    // are all on flash only.
    for (uint64_t p = 0; p < l.pages_per_seq(); ++p) {
      ASSERT_TRUE(c.value_on_flash(0, 0, p) && !c.value_resident(0, 0, p)) << p;
    }
    std::vector<uint8_t> needed(l.max_tokens, 0);
    for (uint32_t p : {1, 2, 5, 9, 10, 11, 20, 23, 36}) needed[p] = 1;
    const uint64_t rb = l.row_bytes(), align = c.read_alignment_bytes();
    uint64_t want_reads = 0, want_bytes = 0;
    if (!direct || align == 1) {
      // Runs: {1,2} {5} {9,10,11} {20} {23} {36}.
      want_reads = 6;
      want_bytes = 9 * rb;
    } else {
      // Every page's needed rows lie in its first 512 bytes: one aligned block per page
      // (pages 0, 1, 2, 5, 9).
      ASSERT_GE(align, 4 * rb);
      want_reads = 5;
      want_bytes = 5 * align;
    }
    const KvPageStats before = c.stats();
    ASSERT_TRUE(c.FetchValues(0, 0, 0, l.pages_per_seq(), needed).ok());
    EXPECT_EQ(c.stats().reads - before.reads, want_reads) << "direct " << direct;
    EXPECT_EQ(c.stats().bytes_read - before.bytes_read, want_bytes) << "direct " << direct;
    EXPECT_EQ(c.stats().page_misses - before.page_misses, 5u);
    std::vector<std::byte> want(rb);
    for (uint32_t pos = 0; pos < l.max_tokens; ++pos) {
      if (!needed[pos]) continue;
      FillRow(want.data(), rb, KvKind::kValue, 0, 0, pos, 0);
      const std::byte* row =
          c.PageData(KvKind::kValue, 0, 0, pos / l.tokens_per_page) + pos % l.tokens_per_page * rb;
      EXPECT_EQ(std::memcmp(row, want.data(), rb), 0) << pos;
    }
    c.ReleaseFetched();
    for (uint64_t p = 0; p < l.pages_per_seq(); ++p) EXPECT_FALSE(c.value_resident(0, 0, p));
    // A damaged row not needed (position 8, beside 9 in its block) is never used.
    DamageSpill(c, l.PageOffset(KvKind::kValue, 0, 0, 2) + 0 * rb + 3);
    if (HasFatalFailure()) return;
    std::vector<uint8_t> nine(l.max_tokens, 0);
    nine[9] = 1;
    EXPECT_TRUE(c.FetchValues(0, 0, 0, l.pages_per_seq(), nine).ok());
    c.ReleaseFetched();
    std::vector<uint8_t> eight(l.max_tokens, 0);
    eight[8] = 1;
    Status st = c.FetchValues(0, 0, 0, l.pages_per_seq(), eight);
    EXPECT_EQ(st.code(), StatusCode::kCorruption) << st.ToString();
    EXPECT_NE(st.ToString().find("V page 2 of sequence 0, layer 0, row 0"), std::string::npos)
        << st.ToString();
    EXPECT_FALSE(c.value_resident(0, 0, 2));
    // Fetching whole pages (exact attention) still works, and still checks the whole page.
    EXPECT_TRUE(c.FetchValues(0, 1, 0, l.pages_per_seq()).ok());
    c.ReleaseFetched();
    EXPECT_EQ(c.FetchValues(0, 0, 2, 3).code(), StatusCode::kCorruption);
  }
}

// --kv-spill kv: writes position `pos` of `seq` in every layer, marking K rows written too.
void WriteAllBothSpill(KvPageCache& c, uint32_t seq, uint32_t pos, uint32_t generation) {
  const layout::VCacheLayout& l = c.layout();
  const uint64_t rb = l.row_bytes();
  const uint64_t page = pos / l.tokens_per_page;
  const uint32_t row = pos % l.tokens_per_page;
  for (uint32_t layer = 0; layer < l.n_layers; ++layer) {
    for (KvKind kind : {KvKind::kKey, KvKind::kValue}) {
      auto p = c.PageForWrite(kind, seq, layer, page);
      ASSERT_TRUE(p.ok()) << p.status().ToString();
      FillRow(p->data() + row * rb, rb, kind, seq, layer, pos, generation);
      ASSERT_TRUE(c.MarkRowWritten(kind, seq, layer, page, row).ok());
    }
  }
}

// K spill: the minimum pool no longer holds every K page; a seeded random workload of writes,
// rewinds, whole-layer fetches (FetchValues + FetchKeys, as exact attention) and fetches of a
// random set of pages of both kinds (FetchPages, as page selection) finds every row of every
// fetched page identical to the reference, K pages having gone to flash and back.
TEST(KvPageCacheTest, SpilledKeyPagesMatchReferenceUnderRandomWorkload) {
  flashlm::testing::ScratchDir dir;
  const layout::VCacheLayout l = SmallLayout();
  // One layer's K and V pages of both sequences and the K and V pages being filled.
  EXPECT_EQ(KvPageCache::MinimumPoolBytes(l, true), 2u * 2 * (10 + 3) * 4096);
  EXPECT_LT(KvPageCache::MinimumPoolBytes(l, true), KvPageCache::MinimumPoolBytes(l));
  KvPageCacheOptions o = Options(KvPageCache::MinimumPoolBytes(l, true), dir);
  o.spill_keys = true;
  auto below = o;
  below.pool_bytes -= 1;
  EXPECT_EQ(KvPageCache::Create(below).status().code(), StatusCode::kInvalidArgument);
  auto created = KvPageCache::Create(o);
  ASSERT_TRUE(created.ok()) << created.status().ToString();
  KvPageCache& c = **created;
  ASSERT_TRUE(c.spills());
  ASSERT_TRUE(c.spill_keys());
  EXPECT_EQ(KvPageCache::ResidentBytes(l, o.pool_bytes, false, true) <
                KvPageCache::ResidentBytes(l, KvPageCache::MinimumPoolBytes(l), false, false),
            true);
  const uint64_t rb = l.row_bytes();
  std::vector<uint32_t> length(l.max_sequences, 0), generation(l.max_sequences, 0);
  std::vector<std::vector<uint32_t>> written(l.max_sequences,
                                             std::vector<uint32_t>(l.max_tokens, 0));
  std::mt19937 rng(17);
  std::vector<std::byte> want(rb);
  std::vector<uint8_t> mask(l.pages_per_seq());
  uint64_t fetches = 0, key_pages_seen_on_flash = 0;
  for (int step = 0; step < 3000; ++step) {
    const uint32_t seq = rng() % l.max_sequences;
    const uint32_t op = rng() % 10;
    if (op < 6 && length[seq] < l.max_tokens) {
      WriteAllBothSpill(c, seq, length[seq], generation[seq]);
      if (HasFatalFailure()) return;
      written[seq][length[seq]] = generation[seq];
      ++length[seq];
    } else if (op < 7 && length[seq] > 0) {
      const uint32_t to = rng() % length[seq];
      c.Truncate(seq, to);
      length[seq] = to;
      ++generation[seq];
    } else if (length[seq] > 0) {
      const uint32_t layer = rng() % l.n_layers;
      const uint64_t pages = CeilDiv(length[seq], l.tokens_per_page);
      for (uint64_t p = 0; p < pages; ++p) {
        key_pages_seen_on_flash +=
            c.on_flash(KvKind::kKey, seq, layer, p) && !c.resident(KvKind::kKey, seq, layer, p);
      }
      const bool some = op == 9;  // a random subset of pages, as page selection asks
      for (uint64_t p = 0; p < pages; ++p) mask[p] = some ? (rng() % 3 == 0) : 1;
      mask[pages - 1] = 1;
      if (some) {
        const std::span<const uint8_t> m(mask.data(), pages);
        ASSERT_TRUE(c.FetchPages(KvKind::kValue, seq, layer, m).ok());
        ASSERT_TRUE(c.FetchPages(KvKind::kKey, seq, layer, m).ok());
      } else {
        ASSERT_TRUE(c.FetchValues(seq, layer, 0, pages).ok());
        ASSERT_TRUE(c.FetchKeys(seq, layer, 0, pages).ok());
      }
      ++fetches;
      for (uint32_t pos = 0; pos < length[seq]; ++pos) {
        if (!mask[pos / l.tokens_per_page]) continue;
        for (KvKind kind : {KvKind::kKey, KvKind::kValue}) {
          const std::byte* got = c.PageData(kind, seq, layer, pos / l.tokens_per_page) +
                                 (pos % l.tokens_per_page) * rb;
          FillRow(want.data(), rb, kind, seq, layer, pos, written[seq][pos]);
          ASSERT_EQ(std::memcmp(got, want.data(), rb), 0)
              << "seq " << seq << " layer " << layer << " pos " << pos << " kind "
              << static_cast<int>(kind);
        }
      }
      c.ReleaseFetched();
    }
  }
  EXPECT_GT(fetches, 100u);
  EXPECT_GT(key_pages_seen_on_flash, 0u);  // K really went to flash and came back
  EXPECT_GT(c.stats().reads, 0u);
  EXPECT_TRUE(std::filesystem::is_empty(dir.path()));
}

// A spilled K page damaged on flash is Corruption naming it as a K page.
TEST(KvPageCacheTest, DamagedSpilledKeyPageIsCorruption) {
  flashlm::testing::ScratchDir dir;
  const layout::VCacheLayout l = SmallLayout();
  KvPageCacheOptions o = Options(KvPageCache::MinimumPoolBytes(l, true), dir);
  o.spill_keys = true;
  auto created = KvPageCache::Create(o);
  ASSERT_TRUE(created.ok());
  KvPageCache& c = **created;
  for (uint32_t seq = 0; seq < l.max_sequences; ++seq) {
    for (uint32_t pos = 0; pos < l.max_tokens; ++pos) {
      WriteAllBothSpill(c, seq, pos, 0);
      if (HasFatalFailure()) return;
    }
  }
  uint32_t seq = 0, layer = 0;
  uint64_t page = 0;
  bool found = false;
  for (uint32_t s = 0; s < l.max_sequences && !found; ++s) {
    for (uint32_t y = 0; y < l.n_layers && !found; ++y) {
      for (uint64_t p = 0; p < l.pages_per_seq() && !found; ++p) {
        if (c.on_flash(KvKind::kKey, s, y, p) && !c.resident(KvKind::kKey, s, y, p)) {
          seq = s, layer = y, page = p, found = true;
        }
      }
    }
  }
  ASSERT_TRUE(found);
  DamageSpill(c, l.PageOffset(KvKind::kKey, seq, layer, page) + 9);
  if (HasFatalFailure()) return;
  std::vector<uint8_t> mask(l.pages_per_seq(), 0);
  mask[page] = 1;
  Status st = c.FetchPages(KvKind::kKey, seq, layer, mask);
  EXPECT_EQ(st.code(), StatusCode::kCorruption) << st.ToString();
  EXPECT_NE(st.ToString().find("K page " + std::to_string(page)), std::string::npos)
      << st.ToString();
  EXPECT_FALSE(c.resident(KvKind::kKey, seq, layer, page));
  // The V page of the same place and the other K pages still read back.
  EXPECT_TRUE(c.FetchPages(KvKind::kValue, seq, layer, mask).ok());
  c.ReleaseFetched();
  mask[page] = 0;
  mask[(page + 1) % l.pages_per_seq()] = 1;
  EXPECT_TRUE(c.FetchPages(KvKind::kKey, seq, layer, mask).ok());
  c.ReleaseFetched();
}

}  // namespace
}  // namespace flashlm::cache
