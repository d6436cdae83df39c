// KvPageCache: the pages of a paged KV cache in a DRAM pool of fixed size, V pages spilled to a
// file on flash when the pool cannot hold them all.
//
// Pages follow layout/vcache_layout.h: P positions of one (sequence, layer) of K or of V,
// token-major rows of kv_dim values in the layout's dtype. This class knows bytes and pages, not
// attention: engine/paged_kv_cache.h puts rows in and reads them out.
//
// Memory (all of it allocated by Create, nothing later):
//  - K pages for every position of every (sequence, layer): K stays in DRAM (KCache's split:
//    every score needs every K row, so K on flash would be read whole every token);
//  - a pool of V page slots, `pool_bytes` minus the K pages; V pages are entries of a
//    cache::LruCache (pin handles, byte charges) over those slots;
//  - the page table: per V page its slot, whether it is on flash and its XXH3-64 checksum.
// When every V page fits the pool nothing spills and no file exists. Otherwise a spill file
// (FileBytes(1) of the layout, under `spill_dir`, unlinked as soon as it is open so it never
// outlives the process) holds V pages: a V page is written to it (O_DIRECT through
// storage::File, checksummed) the moment its last row is written, so an unpinned resident page
// always has an identical copy on flash and eviction never writes. The page being filled of each
// (sequence, layer) stays pinned until it is full. Pages are read back through a
// storage::ReadBackend (io_uring, falling back to pread, as the store's weights are read) and
// their checksum verified: a mismatch is Corruption, never a silently wrong value.
//
// Residency for attention: FetchValues() makes a range of V pages resident and pins them until
// ReleaseFetched(); between the two, PageData() of those pages may be called from any thread
// (it only reads the page table). The minimum pool holds every K page plus one layer's V pages
// of every sequence plus the page being filled of each (sequence, layer): MinimumPoolBytes().
// Not thread-safe otherwise: one owner thread calls everything but PageData.
//
// Fetch granularity (--kv-fetch): with `fetch_rows`, FetchValues given the positions needed reads
// only those rows of a V page that is not resident — each run of needed rows as one read,
// widened to the spill file's O_DIRECT alignment (one 4 KiB block on the usual filesystems;
// exact rows with buffered I/O) — into a free slot that holds them only until ReleaseFetched (a
// page is kept resident only when it was read whole: writing, exact attention, pages mode). Each
// row's XXH3-64 is recorded when its page spills (8 bytes per row of DRAM) and checked after the
// read. Without it (pages), every page holding a needed position is read whole and stays cached.
//
// K spill (`spill_keys`, --kv-spill kv): K pages are no longer all in DRAM; they take slots of
// the same pool and LRU as V pages, are spilled (checksummed) when their last row is written and
// read back (checksum verified: Corruption otherwise) by FetchPages, exactly as V pages are. Only
// useful when attention does not read every K row each token (page selection from K summaries,
// engine/paged_kv_cache.h). The spill file then holds both kinds (layout/vcache_layout.h), and
// the minimum pool is one layer's K and V pages of every sequence plus the pages being filled.
#ifndef FLASHLM_CACHE_KV_PAGE_CACHE_H_
#define FLASHLM_CACHE_KV_PAGE_CACHE_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "cache/lru_cache.h"
#include "layout/vcache_layout.h"
#include "storage/aligned_buffer.h"
#include "storage/file.h"
#include "storage/read_backend.h"
#include "storage/status.h"

namespace flashlm::cache {

struct KvPageCacheOptions {
  layout::VCacheLayout layout;  // alignment_bytes: 4096 (O_DIRECT on the usual filesystems)
  uint64_t pool_bytes = 0;      // DRAM for K and V pages (>= MinimumPoolBytes)
  std::string spill_dir;        // folder of the spill file; empty: $TMPDIR or /tmp
  storage::BackendKind backend = storage::BackendKind::kAuto;
  bool direct = true;       // O_DIRECT spill file (falls back to buffered where refused, logged)
  bool fetch_rows = false;  // FetchValues with positions reads rows, not pages (header comment)
  // --kv-spill kv: K pages are slots of the pool too and spill like V pages (header comment).
  bool spill_keys = false;
};

// Counters since Create or the last ResetStats.
struct KvPageStats {
  uint64_t pages_written = 0, bytes_written = 0;  // V pages spilled to flash
  uint64_t reads = 0, bytes_read = 0;             // V pages read back from flash
  uint64_t page_hits = 0, page_misses = 0;        // FetchValues: pages found resident / read
  uint64_t io_wait_ns = 0;                        // writing and waiting for reads
};

class KvPageCache {
 public:
  static constexpr uint32_t kNoSlot = UINT32_MAX;

  // Pool bytes that hold every page of the layout (nothing spills).
  static uint64_t FullPoolBytes(const layout::VCacheLayout& layout);
  // The smallest pool Create accepts (see the header comment).
  static uint64_t MinimumPoolBytes(const layout::VCacheLayout& layout, bool spill_keys = false);
  // DRAM Create allocates for a pool of `pool_bytes` (the pool, the page table, the LRU).
  static uint64_t ResidentBytes(const layout::VCacheLayout& layout, uint64_t pool_bytes,
                                bool fetch_rows = false, bool spill_keys = false);

  // Errors: InvalidArgument (an invalid layout, a pool below the minimum, naming it),
  // ResourceExhausted (allocation), IoError / NotFound (the spill file cannot be created),
  // NotSupported (a filesystem whose O_DIRECT alignment does not divide the page stride).
  static Result<std::unique_ptr<KvPageCache>> Create(const KvPageCacheOptions& options);
  ~KvPageCache();

  const layout::VCacheLayout& layout() const { return layout_; }
  bool spills() const { return file_.has_value(); }
  // The spill file's path (unlinked already; for messages), empty when nothing spills.
  const std::string& spill_path() const { return spill_path_; }
  bool fetch_rows() const { return fetch_rows_; }
  bool spill_keys() const { return kinds_ == 2; }
  // The bytes one read of the spill file is widened to (1: buffered; 0 when nothing spills).
  uint64_t read_alignment_bytes() const { return file_ ? file_->required_alignment_bytes() : 0; }
  std::string_view backend_name() const;
  uint64_t pool_bytes() const { return pool_bytes_; }
  // Bytes of K and V pages resident now.
  uint64_t resident_page_bytes() const;

  // The page where rows of (kind, seq, layer, page) are written: resident (read back from
  // flash when it was evicted) and, for V, pinned until MarkRowWritten reports it full or
  // Truncate drops it. Rows already written below the sequence's length are kept. The view
  // lives until the page is truncated (K) or unpinned (V). Errors: Corruption (a bad checksum
  // reading it back), IoError, ResourceExhausted (every slot pinned: the pool is below the
  // minimum for this use).
  Result<ByteSpan> PageForWrite(layout::KvKind kind, uint32_t seq, uint32_t layer, uint64_t page);
  // Row `row` of V page (seq, layer, page) was written; when it is the page's last row the page
  // is spilled (when spilling) and unpinned. Errors: IoError (the write).
  Status MarkValueRowWritten(uint32_t seq, uint32_t layer, uint64_t page, uint32_t row);
  // Writes row `row` of page (kind, seq, layer, page) through `put` (given the whole page), for a
  // row filled in after the page was left (LazyLLM revival: a position that layer had not
  // computed). A K page that never spills (no spill_keys) is written in place. The page being
  // filled of (kind, seq, layer) is written in place and stays as it is; any other spillable page
  // is made resident (read back from flash, or zeroed when it never held a row), written, spilled
  // again at once when spilling (so an unpinned resident page keeps an identical copy on flash)
  // and unpinned. Errors: as PageForWrite, the spill's IoError, put's (the page is then dropped
  // from DRAM and forgotten on flash: the caller cuts its sequence back below it).
  template <typename Put>
  Status FillRow(layout::KvKind kind, uint32_t seq, uint32_t layer, uint64_t page, uint32_t row,
                 const Put& put) {
    (void)row;
    ASSIGN_OR_RETURN(FillTarget target, BeginFill(kind, seq, layer, page));
    Status st = put(target.page);
    return EndFill(target, st);
  }
  // FillRow of a V page.
  template <typename Put>
  Status FillValueRow(uint32_t seq, uint32_t layer, uint64_t page, uint32_t row, const Put& put) {
    return FillRow(layout::KvKind::kValue, seq, layer, page, row, put);
  }
  // As MarkValueRowWritten for either kind (K: nothing to do unless spill_keys).
  Status MarkRowWritten(layout::KvKind kind, uint32_t seq, uint32_t layer, uint64_t page,
                        uint32_t row);
  // Drops the pages of (seq) beyond `length` positions (every layer, both kinds): their slots are
  // freed and their flash copies forgotten; the page holding position length-1 stays resident
  // or on flash with its rows below `length` intact.
  void Truncate(uint32_t seq, uint32_t length);
  // Makes V pages [first_page, end_page) of (seq, layer) resident and pins them until
  // ReleaseFetched; with `positions_needed` (position p of the sequence at index p), only the
  // pages holding a position marked non-zero. Errors: Corruption (checksum), IoError,
  // ResourceExhausted (more pages than unpinned slots).
  Status FetchValues(uint32_t seq, uint32_t layer, uint64_t first_page, uint64_t end_page,
                     std::span<const uint8_t> positions_needed = {});
  // Makes the pages i < pages_needed.size() of (kind, seq, layer) with pages_needed[i] != 0
  // resident and pins them until ReleaseFetched (whole pages; K pages are always resident unless
  // spill_keys). Errors: as FetchValues.
  Status FetchPages(layout::KvKind kind, uint32_t seq, uint32_t layer,
                    std::span<const uint8_t> pages_needed);
  // Makes K pages [first_page, end_page) of (seq, layer) resident and pins them until
  // ReleaseFetched (nothing to do unless spill_keys). Errors: as FetchValues.
  Status FetchKeys(uint32_t seq, uint32_t layer, uint64_t first_page, uint64_t end_page);
  void ReleaseFetched();
  // Page data of a resident page (K: written; V: pinned by write or fetch), page_stride bytes.
  // Callable from any thread while the owner is not mutating the cache.
  const std::byte* PageData(layout::KvKind kind, uint32_t seq, uint32_t layer, uint64_t page) const;

  // Whether V page (seq, layer, page) is in DRAM now / has a copy on flash (tests, statistics).
  bool value_resident(uint32_t seq, uint32_t layer, uint64_t page) const {
    return v_pages_[VIndex(seq, layer, page)].slot != kNoSlot;
  }
  bool value_on_flash(uint32_t seq, uint32_t layer, uint64_t page) const {
    return v_pages_[VIndex(seq, layer, page)].on_flash;
  }
  // The same for a page of either kind (a K page is always resident unless spill_keys).
  bool resident(layout::KvKind kind, uint32_t seq, uint32_t layer, uint64_t page) const {
    return Spillable(kind) ? v_pages_[Index(kind, seq, layer, page)].slot != kNoSlot : true;
  }
  bool on_flash(layout::KvKind kind, uint32_t seq, uint32_t layer, uint64_t page) const {
    return Spillable(kind) && v_pages_[Index(kind, seq, layer, page)].on_flash;
  }
  // The open spill file (nullptr when nothing spills): for tests that damage it.
  const storage::File* spill_file() const { return file_ ? &*file_ : nullptr; }

  const KvPageStats& stats() const { return stats_; }
  void ResetStats() { stats_ = KvPageStats(); }

 private:
  struct PageState {
    uint64_t checksum = 0;
    uint32_t slot = kNoSlot;  // V: index into the V slots while resident
    bool on_flash = false;    // the spill file holds this page (checksum valid)
    bool rows_only = false;   // slot holds only fetched rows, until ReleaseFetched (fetch_rows)
  };
  // A run of rows of one page to read (fetch_rows): bytes [begin, end) of the page.
  struct RowRun {
    uint64_t index = 0, begin = 0, end = 0;
  };
  KvPageCache() = default;
  // FillRow's page: its bytes and the pin taken for it (null: the page being filled, or a K page
  // that never spills).
  struct FillTarget {
    ByteSpan page;
    uint64_t index = 0;
    LruCache::Handle* pin = nullptr;
  };
  Result<FillTarget> BeginFill(layout::KvKind kind, uint32_t seq, uint32_t layer, uint64_t page);
  Status EndFill(const FillTarget& target, Status put_status);
  uint64_t VIndex(uint32_t seq, uint32_t layer, uint64_t page) const {
    return layout_.PageIndex(layout::KvKind::kValue, seq, layer, page);
  }
  // Index into v_pages_ (V pages first, then K pages when spill_keys) = the page's place in the
  // spill file.
  uint64_t Index(layout::KvKind kind, uint32_t seq, uint32_t layer, uint64_t page) const {
    return layout_.PageIndex(kind, seq, layer, page);
  }
  bool Spillable(layout::KvKind kind) const {
    return kind == layout::KvKind::kValue || kinds_ == 2;
  }
  // writing_ index of (kind, seq, layer).
  uint64_t WritingIndex(layout::KvKind kind, uint32_t seq, uint32_t layer) const {
    return (uint64_t{static_cast<uint8_t>(kind)} * layout_.max_sequences + seq) * layout_.n_layers +
           layer;
  }
  // FetchValues and FetchPages: the pages [first_page, end_page) of (kind, seq, layer) for which
  // `want(page)` holds.
  template <typename Want>
  Status Fetch(layout::KvKind kind, uint32_t seq, uint32_t layer, uint64_t first_page,
               uint64_t end_page, std::span<const uint8_t> positions_needed, const Want& want);
  std::byte* VSlot(uint32_t slot) const {
    return v_pool_.data() + uint64_t{slot} * layout_.page_stride_bytes();
  }
  // A free V slot, evicting the least recently used unpinned page when none is free.
  // Errors: ResourceExhausted (every slot pinned).
  Result<uint32_t> TakeSlot();
  // Inserts V page `index` (not resident) into `slot`, pinned.
  Result<LruCache::Handle*> InsertValue(uint64_t index, uint32_t slot);
  // Page `index` pinned for writing: the resident one, else a new slot holding its flash copy
  // (read and verified) or zeros when it never held a row (the padding is checksummed).
  // Errors: as TakeSlot, ReadPages.
  Result<LruCache::Handle*> PinForWrite(uint64_t index);
  // Reads the V pages `indices` (resident slots, on flash) from the spill file and verifies them.
  Status ReadPages(std::span<const uint64_t> indices);
  // Reads the needed rows (positions_needed, as FetchValues) of the V pages `indices` (in
  // rows_only slots, on flash) and verifies each needed row's checksum.
  Status ReadRows(std::span<const uint64_t> indices, std::span<const uint8_t> positions_needed);
  // Writes V page `index` (resident) to the spill file and records its checksum (and its rows').
  Status SpillPage(uint64_t index);

  layout::VCacheLayout layout_;
  uint64_t pool_bytes_ = 0;
  storage::AlignedBuffer k_pool_;  // pages_per_kind x page_stride: every K page
  storage::AlignedBuffer v_pool_;  // v_slots x page_stride: V page slots
  uint32_t v_slots_ = 0;
  std::vector<uint32_t> free_slots_;        // [v_slots] stack of free V slots
  uint32_t kinds_ = 1;                      // kinds of spillable page: 1 (V), 2 (V and K)
  std::vector<PageState> v_pages_;          // [kinds x pages_per_kind] (V, then K with spill_keys)
  std::vector<LruCache::Handle*> writing_;  // [kinds x seq x layer] pinned page being filled
  std::vector<uint64_t> writing_page_;      // [kinds x seq x layer] its page index in the seq
  std::vector<LruCache::Handle*> fetched_;  // pins of FetchValues, capacity fixed at Create
  std::vector<uint64_t> misses_;            // FetchValues scratch, capacity fixed at Create
  bool fetch_rows_ = false;
  std::vector<uint64_t> row_pages_;      // FetchValues scratch (fetch_rows): pages read as rows
  std::vector<uint64_t> rows_only_;      // pages in rows_only slots until ReleaseFetched
  std::vector<RowRun> row_runs_;         // ReadRows scratch, capacity max_tokens
  std::vector<uint64_t> row_checksums_;  // [pages_per_kind x P] XXH3-64 of spilled V rows
  std::unique_ptr<LruCache> lru_;        // V pages: key page index, value slot
  // Spill file and its reader (declared in this order: the backend goes first).
  std::optional<storage::File> file_;
  std::string spill_path_;
  std::unique_ptr<storage::ReadBackend> backend_;
  uint32_t file_id_ = 0;
  std::vector<storage::ReadRequest> requests_;        // capacity queue_depth
  std::vector<storage::ReadCompletion> completions_;  // capacity queue_depth
  KvPageStats stats_;
};

}  // namespace flashlm::cache

#endif  // FLASHLM_CACHE_KV_PAGE_CACHE_H_
