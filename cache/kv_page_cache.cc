#include "cache/kv_page_cache.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>

#include "storage/check.h"
#include "storage/checksum.h"

namespace flashlm::cache {
namespace {

using layout::KvKind;
constexpr uint32_t kQueueDepth = 32;
constexpr uint64_t kPageAlignment = 4096;
// The K and V pools on transparent huge pages (from 2 MiB up): attention reads them position
// after position at every step, and spilled V pages are read into the pool with O_DIRECT, which
// needs fewer physical segments on huge pages. ResidentBytes charges the same rounding.
constexpr bool kHugePages = true;

uint64_t NowNs() {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                   std::chrono::steady_clock::now().time_since_epoch())
                                   .count());
}

uint64_t KBytes(const layout::VCacheLayout& l) {
  return l.pages_per_kind() * l.page_stride_bytes();
}

// Slots a pool of `pool_bytes` holds for spillable pages (at most every V page, and every K page
// with spill_keys; the K pages are outside the slots otherwise).
uint64_t VSlots(const layout::VCacheLayout& l, uint64_t pool_bytes, bool spill_keys) {
  const uint64_t k = spill_keys ? 0 : KBytes(l);
  const uint64_t pages = (spill_keys ? 2 : 1) * l.pages_per_kind();
  return pool_bytes <= k ? 0 : std::min(pages, (pool_bytes - k) / l.page_stride_bytes());
}

}  // namespace

uint64_t KvPageCache::FullPoolBytes(const layout::VCacheLayout& l) { return 2 * KBytes(l); }

uint64_t KvPageCache::MinimumPoolBytes(const layout::VCacheLayout& l, bool spill_keys) {
  // Every K page, plus one layer's V pages of every sequence (what attention over a layer pins)
  // and the page being filled of every other (sequence, layer). With spill_keys: one layer's K
  // and V pages of every sequence and the K and V pages being filled.
  const uint64_t v_pages = uint64_t{l.max_sequences} * (l.pages_per_seq() + l.n_layers);
  if (spill_keys) return std::min(FullPoolBytes(l), 2 * v_pages * l.page_stride_bytes());
  return std::min(FullPoolBytes(l), KBytes(l) + v_pages * l.page_stride_bytes());
}

uint64_t KvPageCache::ResidentBytes(const layout::VCacheLayout& l, uint64_t pool_bytes,
                                    bool fetch_rows, bool spill_keys) {
  const uint64_t slots = VSlots(l, pool_bytes, spill_keys);
  const uint64_t kinds = spill_keys ? 2 : 1;
  const uint64_t seq_layers = kinds * l.max_sequences * l.n_layers;
  const uint64_t rows =
      fetch_rows ? l.pages_per_kind() * l.tokens_per_page * sizeof(uint64_t) +
                       (l.pages_per_seq() + uint64_t{l.max_sequences} * l.pages_per_seq()) *
                           sizeof(uint64_t) +
                       l.pages_per_seq() * l.tokens_per_page * sizeof(RowRun)
                 : 0;
  return rows +
         storage::AlignedBuffer::ResidentBytes(spill_keys ? 0 : KBytes(l), kPageAlignment,
                                               kHugePages) +
         storage::AlignedBuffer::ResidentBytes(slots * l.page_stride_bytes(), kPageAlignment,
                                               kHugePages) +
         slots * sizeof(uint32_t) + kinds * l.pages_per_kind() * sizeof(PageState) +
         seq_layers * (sizeof(LruCache::Handle*) + sizeof(uint64_t)) +
         kinds * l.max_sequences * l.pages_per_seq() *
             (sizeof(LruCache::Handle*) + sizeof(uint64_t)) +
         LruCache::ResidentBytes(static_cast<uint32_t>(std::max<uint64_t>(slots, 1)));
}

Result<std::unique_ptr<KvPageCache>> KvPageCache::Create(const KvPageCacheOptions& o) {
  layout::VCacheLayout l = o.layout;
  l.alignment_bytes = kPageAlignment;
  if (!l.valid()) return InvalidArgumentError("KV pages: a zero size in the page layout");
  if (l.pages_per_kind() > UINT32_MAX / 2) {
    return InvalidArgumentError("KV pages: more than 2^31 pages; use larger --kv-page-tokens");
  }
  const uint64_t minimum = MinimumPoolBytes(l, o.spill_keys);
  if (o.pool_bytes < minimum) {
    return InvalidArgumentError("KV cache pool of " + FormatBytes(o.pool_bytes) +
                                " is below its minimum of " + FormatBytes(minimum) +
                                (o.spill_keys ? " (one layer's K and V pages and the pages being "
                                                "filled of each layer)"
                                              : " (every K page, one layer's V pages and the page "
                                                "being filled of each layer)"));
  }
  std::unique_ptr<KvPageCache> c(new KvPageCache());
  c->layout_ = l;
  c->pool_bytes_ = o.pool_bytes;
  const uint64_t stride = l.page_stride_bytes();
  c->kinds_ = o.spill_keys ? 2 : 1;
  c->v_slots_ = static_cast<uint32_t>(VSlots(l, o.pool_bytes, o.spill_keys));
  if (!o.spill_keys) {
    ASSIGN_OR_RETURN(c->k_pool_,
                     storage::AlignedBuffer::Allocate(KBytes(l), kPageAlignment, kHugePages));
  }
  ASSIGN_OR_RETURN(c->v_pool_, storage::AlignedBuffer::Allocate(uint64_t{c->v_slots_} * stride,
                                                                kPageAlignment, kHugePages));
  // Resident from the start (the plan charges them whole): the first prefill does not fault in
  // and zero the pools' huge pages, and a budget the machine cannot give fails here.
  if (!c->k_pool_.empty()) RETURN_IF_ERROR(c->k_pool_.Populate());
  RETURN_IF_ERROR(c->v_pool_.Populate());
  c->free_slots_.reserve(c->v_slots_);
  for (uint32_t s = c->v_slots_; s > 0; --s) c->free_slots_.push_back(s - 1);
  c->v_pages_.assign(c->kinds_ * l.pages_per_kind(), PageState());
  const uint64_t seq_layers = uint64_t{c->kinds_} * l.max_sequences * l.n_layers;
  c->writing_.assign(seq_layers, nullptr);
  c->writing_page_.assign(seq_layers, 0);
  c->fetched_.reserve(uint64_t{c->kinds_} * l.max_sequences * l.pages_per_seq());
  c->misses_.reserve(uint64_t{c->kinds_} * l.max_sequences * l.pages_per_seq());
  c->fetch_rows_ = o.fetch_rows;
  if (o.fetch_rows) {
    c->row_pages_.reserve(l.pages_per_seq());
    c->rows_only_.reserve(uint64_t{l.max_sequences} * l.pages_per_seq());
    c->row_runs_.reserve(l.pages_per_seq() * l.tokens_per_page);
    c->row_checksums_.assign(l.pages_per_kind() * l.tokens_per_page, 0);
  }
  KvPageCache* self = c.get();
  c->lru_ = std::make_unique<LruCache>(uint64_t{std::max<uint32_t>(c->v_slots_, 1)} * stride,
                                       std::max<uint32_t>(c->v_slots_, 1),
                                       [self](uint64_t key, uint64_t value) {
                                         self->v_pages_[key].slot = kNoSlot;
                                         self->free_slots_.push_back(static_cast<uint32_t>(value));
                                       });
  if (c->v_slots_ < c->kinds_ * l.pages_per_kind()) {
    // The spill file: created under a unique name, then unlinked at once, so that it is removed
    // however the process ends.
    std::string dir = o.spill_dir;
    if (dir.empty()) {
      const char* tmp = std::getenv("TMPDIR");
      dir = tmp != nullptr && *tmp != '\0' ? tmp : "/tmp";
    }
    std::string path = dir + "/flashlm-kv-XXXXXX";
    const int fd = mkstemp(path.data());
    if (fd < 0) {
      return IoError("KV spill file in " + dir + ": " + std::strerror(errno));
    }
    ::close(fd);
    storage::FileOptions fo;
    fo.direct = o.direct;
    Result<storage::File> file = storage::File::Create(path, fo);
    ::unlink(path.c_str());
    if (!file.ok()) return file.status();
    c->file_.emplace(std::move(file).value());
    c->spill_path_ = path;
    if (stride % c->file_->required_alignment_bytes() != 0) {
      return NotSupportedError("KV spill file " + path + ": O_DIRECT alignment of " +
                               std::to_string(c->file_->required_alignment_bytes()) +
                               " bytes does not divide the page stride");
    }
    storage::ReadBackendOptions ro;
    ro.queue_depth_max = kQueueDepth;
    ro.files_max = 1;
    ASSIGN_OR_RETURN(c->backend_, storage::MakeReadBackend(o.backend, ro));
    ASSIGN_OR_RETURN(c->file_id_, c->backend_->RegisterFile(*c->file_));
    c->requests_.reserve(kQueueDepth);
    c->completions_.resize(kQueueDepth);
  }
  return c;
}

KvPageCache::~KvPageCache() {
  ReleaseFetched();
  for (LruCache::Handle*& h : writing_) {
    if (h != nullptr) lru_->Release(h);
    h = nullptr;
  }
}

std::string_view KvPageCache::backend_name() const {
  return backend_ ? backend_->name() : std::string_view("none");
}

uint64_t KvPageCache::resident_page_bytes() const {
  return k_pool_.size_bytes() + lru_->usage_bytes();
}

Result<uint32_t> KvPageCache::TakeSlot() {
  if (free_slots_.empty() && lru_->usage_bytes() > 0) {
    lru_->ShrinkTo(lru_->usage_bytes() - layout_.page_stride_bytes());
  }
  if (free_slots_.empty()) {
    return ResourceExhaustedError("KV pages: every one of the " + std::to_string(v_slots_) +
                                  " V page slots is pinned");
  }
  const uint32_t slot = free_slots_.back();
  free_slots_.pop_back();
  return slot;
}

Result<LruCache::Handle*> KvPageCache::InsertValue(uint64_t index, uint32_t slot) {
  Result<LruCache::Handle*> h = lru_->Insert(index, slot, layout_.page_stride_bytes());
  if (!h.ok()) {
    free_slots_.push_back(slot);
    return h.status();
  }
  v_pages_[index].slot = slot;
  return h;
}

Result<LruCache::Handle*> KvPageCache::PinForWrite(uint64_t index) {
  if (LruCache::Handle* h = lru_->Lookup(index)) return h;
  ASSIGN_OR_RETURN(const uint32_t slot, TakeSlot());
  ASSIGN_OR_RETURN(LruCache::Handle* const h, InsertValue(index, slot));
  if (v_pages_[index].on_flash) {
    const uint64_t one[] = {index};
    if (Status st = ReadPages(one); !st.ok()) {
      lru_->Release(h);
      lru_->Erase(index);
      return st;
    }
  } else {
    std::memset(VSlot(slot), 0, layout_.page_stride_bytes());
  }
  return h;
}

Result<ByteSpan> KvPageCache::PageForWrite(KvKind kind, uint32_t seq, uint32_t layer,
                                           uint64_t page) {
  const uint64_t stride = layout_.page_stride_bytes();
  if (!Spillable(kind)) {
    return ByteSpan(k_pool_.data() + VIndex(seq, layer, page) * stride, stride);
  }
  const uint64_t index = Index(kind, seq, layer, page);
  const uint64_t w = WritingIndex(kind, seq, layer);
  if (writing_[w] != nullptr && writing_page_[w] == page) {
    return ByteSpan(VSlot(v_pages_[index].slot), stride);
  }
  if (writing_[w] != nullptr) {
    // Another page of this (sequence, layer) was being filled (a rewind into an earlier page):
    // it keeps its rows, so it goes to flash before it may be evicted.
    const uint64_t other = Index(kind, seq, layer, writing_page_[w]);
    if (file_ && !v_pages_[other].on_flash) RETURN_IF_ERROR(SpillPage(other));
    lru_->Release(writing_[w]);
    writing_[w] = nullptr;
  }
  ASSIGN_OR_RETURN(LruCache::Handle* const h, PinForWrite(index));
  v_pages_[index].on_flash = false;  // about to change: written again when full
  writing_[w] = h;
  writing_page_[w] = page;
  return ByteSpan(VSlot(v_pages_[index].slot), stride);
}

Status KvPageCache::SpillPage(uint64_t index) {
  PageState& ps = v_pages_[index];
  const uint64_t stride = layout_.page_stride_bytes();
  const ConstByteSpan bytes(VSlot(ps.slot), stride);
  const uint64_t start = NowNs();
  ps.checksum = storage::Checksum64(bytes);
  if (fetch_rows_ && index < layout_.pages_per_kind()) {  // rows are read only of V pages
    const uint64_t rb = layout_.row_bytes(), P = layout_.tokens_per_page;
    for (uint64_t r = 0; r < P; ++r) {
      row_checksums_[index * P + r] = storage::Checksum64(bytes.subspan(r * rb, rb));
    }
  }
  Status st = file_->WriteAt(index * stride, bytes);
  stats_.io_wait_ns += NowNs() - start;
  if (!st.ok()) return st.WithContext("KV spill file " + spill_path_);
  ps.on_flash = true;
  ++stats_.pages_written;
  stats_.bytes_written += stride;
  return Status::Ok();
}

Status KvPageCache::MarkValueRowWritten(uint32_t seq, uint32_t layer, uint64_t page, uint32_t row) {
  return MarkRowWritten(KvKind::kValue, seq, layer, page, row);
}

Status KvPageCache::MarkRowWritten(KvKind kind, uint32_t seq, uint32_t layer, uint64_t page,
                                   uint32_t row) {
  if (!Spillable(kind) || row + 1 < layout_.tokens_per_page) return Status::Ok();
  const uint64_t w = WritingIndex(kind, seq, layer);
  CHECK(writing_[w] != nullptr && writing_page_[w] == page);
  if (file_) RETURN_IF_ERROR(SpillPage(Index(kind, seq, layer, page)));
  lru_->Release(writing_[w]);
  writing_[w] = nullptr;
  return Status::Ok();
}

Result<KvPageCache::FillTarget> KvPageCache::BeginFill(KvKind kind, uint32_t seq, uint32_t layer,
                                                       uint64_t page) {
  const uint64_t stride = layout_.page_stride_bytes();
  FillTarget target;
  if (!Spillable(kind)) {  // a K page in the K pool: always resident, never on flash
    target.page = ByteSpan(k_pool_.data() + VIndex(seq, layer, page) * stride, stride);
    return target;
  }
  const uint64_t index = Index(kind, seq, layer, page);
  const uint64_t w = WritingIndex(kind, seq, layer);
  target.index = index;
  if (writing_[w] != nullptr && writing_page_[w] == page) {
    target.page = ByteSpan(VSlot(v_pages_[index].slot), stride);
    return target;  // spilled when it is full or left, as any row written into it
  }
  ASSIGN_OR_RETURN(LruCache::Handle* const h, PinForWrite(index));
  target.page = ByteSpan(VSlot(v_pages_[index].slot), stride);
  target.pin = h;
  return target;
}

Status KvPageCache::EndFill(const FillTarget& target, Status put_status) {
  if (target.pin == nullptr) return put_status;
  Status st = put_status;
  if (st.ok() && file_) st = SpillPage(target.index);
  if (!st.ok()) {
    // The slot's bytes no longer match the flash copy (or were never written): dropped. The
    // caller's pass fails and cuts its sequence back to before every row it filled
    // (engine/transformer.cc), which truncates this page.
    v_pages_[target.index].on_flash = false;
    lru_->Release(target.pin);
    lru_->Erase(target.index);
    return st;
  }
  lru_->Release(target.pin);
  return Status::Ok();
}

void KvPageCache::Truncate(uint32_t seq, uint32_t length) {
  const uint64_t keep = CeilDiv(length, layout_.tokens_per_page);
  for (uint32_t k = 0; k < kinds_; ++k) {
    const KvKind kind = k == 0 ? KvKind::kValue : KvKind::kKey;
    for (uint32_t layer = 0; layer < layout_.n_layers; ++layer) {
      const uint64_t w = WritingIndex(kind, seq, layer);
      if (writing_[w] != nullptr && writing_page_[w] >= keep) {
        lru_->Release(writing_[w]);
        writing_[w] = nullptr;
      }
      for (uint64_t page = keep; page < layout_.pages_per_seq(); ++page) {
        const uint64_t index = Index(kind, seq, layer, page);
        if (v_pages_[index].slot != kNoSlot) CHECK(lru_->Erase(index));
        v_pages_[index].on_flash = false;
      }
    }
  }
}

Status KvPageCache::ReadPages(std::span<const uint64_t> indices) {
  const uint64_t stride = layout_.page_stride_bytes();
  const uint64_t start = NowNs();
  Status result;
  // Batches of at most the queue depth: submit, then reap every completion of the batch (even
  // after a failure, so no read still lands in a slot once this returns).
  for (size_t first = 0; first < indices.size(); first += kQueueDepth) {
    const size_t n = std::min<size_t>(kQueueDepth, indices.size() - first);
    requests_.clear();
    for (size_t i = 0; i < n; ++i) {
      const uint64_t index = indices[first + i];
      requests_.push_back(storage::ReadRequest{
          file_id_, index * stride, ByteSpan(VSlot(v_pages_[index].slot), stride), index});
    }
    RETURN_IF_ERROR(backend_->Submit(requests_));
    size_t done = 0;
    while (done < n) {
      Result<size_t> got = backend_->Reap(n - done, completions_);
      if (!got.ok()) return got.status();  // the backend is unusable; nothing more lands
      for (size_t i = 0; i < *got; ++i) {
        const storage::ReadCompletion& rc = completions_[i];
        const PageState& ps = v_pages_[rc.tag];
        // The message is built only for a failure (nothing allocates on the way that works).
        auto where = [&] {
          const uint64_t pps = layout_.pages_per_seq();
          const bool key = rc.tag >= layout_.pages_per_kind();
          return "KV spill file " + spill_path_ + (key ? ": K page " : ": V page ") +
                 std::to_string(rc.tag % pps) + " of sequence " +
                 std::to_string(rc.tag % layout_.pages_per_kind() / pps / layout_.n_layers) +
                 ", layer " + std::to_string(rc.tag / pps % layout_.n_layers);
        };
        if (!result.ok()) continue;  // the first failure is the one reported
        if (!rc.status.ok()) {
          result = rc.status.WithContext(where());
        } else if (rc.bytes_read != stride) {
          result = IoError(where() + ": short read at end of file");
        } else if (storage::Checksum64(ConstByteSpan(VSlot(ps.slot), stride)) != ps.checksum) {
          result = CorruptionError(where() + " fails its checksum");
        }
      }
      done += *got;
    }
    stats_.reads += n;
    stats_.bytes_read += n * stride;
  }
  stats_.io_wait_ns += NowNs() - start;
  return result;
}

Status KvPageCache::FetchValues(uint32_t seq, uint32_t layer, uint64_t first_page,
                                uint64_t end_page, std::span<const uint8_t> positions_needed) {
  const uint64_t P = layout_.tokens_per_page;
  return Fetch(KvKind::kValue, seq, layer, first_page, end_page, positions_needed,
               [&](uint64_t page) {
                 if (positions_needed.empty()) return true;
                 const uint64_t begin = page * P,
                                end = std::min<uint64_t>(begin + P, positions_needed.size());
                 for (uint64_t p = begin; p < end; ++p) {
                   if (positions_needed[p] != 0) return true;
                 }
                 return false;
               });
}

Status KvPageCache::FetchPages(KvKind kind, uint32_t seq, uint32_t layer,
                               std::span<const uint8_t> pages_needed) {
  CHECK_LE(pages_needed.size(), layout_.pages_per_seq());
  if (!Spillable(kind)) return Status::Ok();  // every K page is in DRAM
  return Fetch(kind, seq, layer, 0, pages_needed.size(), {},
               [&](uint64_t page) { return pages_needed[page] != 0; });
}

Status KvPageCache::FetchKeys(uint32_t seq, uint32_t layer, uint64_t first_page,
                              uint64_t end_page) {
  if (!Spillable(KvKind::kKey)) return Status::Ok();
  return Fetch(KvKind::kKey, seq, layer, first_page, end_page, {}, [](uint64_t) { return true; });
}

template <typename Want>
Status KvPageCache::Fetch(KvKind kind, uint32_t seq, uint32_t layer, uint64_t first_page,
                          uint64_t end_page, std::span<const uint8_t> positions_needed,
                          const Want& want) {
  misses_.clear();
  row_pages_.clear();
  const bool rows = fetch_rows_ && !positions_needed.empty() && kind == KvKind::kValue;
  for (uint64_t page = first_page; page < end_page; ++page) {
    if (!want(page)) continue;
    const uint64_t index = Index(kind, seq, layer, page);
    CHECK(!v_pages_[index].rows_only);  // fetched twice before ReleaseFetched
    LruCache::Handle* h = lru_->Lookup(index);
    if (h != nullptr) {
      ++stats_.page_hits;
      fetched_.push_back(h);
      continue;
    }
    // Not resident: only a full page leaves DRAM, and only after it was written to flash.
    CHECK(v_pages_[index].on_flash);
    Result<uint32_t> slot = TakeSlot();
    if (slot.ok() && rows) {
      // Only the needed rows, into a slot that is free again at ReleaseFetched.
      v_pages_[index].slot = *slot;
      v_pages_[index].rows_only = true;
      rows_only_.push_back(index);
      row_pages_.push_back(index);
      ++stats_.page_misses;
      continue;
    }
    Result<LruCache::Handle*> inserted =
        slot.ok() ? InsertValue(index, *slot) : Result<LruCache::Handle*>(slot.status());
    if (!inserted.ok()) {
      misses_.clear();
      ReleaseFetched();
      return inserted.status();
    }
    ++stats_.page_misses;
    fetched_.push_back(*inserted);
    misses_.push_back(index);
  }
  Status st;
  if (!misses_.empty()) st = ReadPages(misses_);
  if (st.ok() && !row_pages_.empty()) st = ReadRows(row_pages_, positions_needed);
  if (!st.ok()) {
    ReleaseFetched();
    for (uint64_t index : misses_) lru_->Erase(index);  // their slots hold no valid page
  }
  return st;
}

void KvPageCache::ReleaseFetched() {
  for (LruCache::Handle* h : fetched_) lru_->Release(h);
  fetched_.clear();
  for (uint64_t index : rows_only_) {
    free_slots_.push_back(v_pages_[index].slot);
    v_pages_[index].slot = kNoSlot;
    v_pages_[index].rows_only = false;
  }
  rows_only_.clear();
}

Status KvPageCache::ReadRows(std::span<const uint64_t> indices,
                             std::span<const uint8_t> positions_needed) {
  const uint64_t stride = layout_.page_stride_bytes(), rb = layout_.row_bytes();
  const uint64_t P = layout_.tokens_per_page, pps = layout_.pages_per_seq();
  const uint64_t align = file_->required_alignment_bytes();
  const uint64_t start = NowNs();
  // The runs of needed rows, widened to the alignment; runs that touch are merged.
  row_runs_.clear();
  for (uint64_t index : indices) {
    const uint64_t first_pos = index % pps * P;
    for (uint64_t r = 0; r < P && first_pos + r < positions_needed.size(); ++r) {
      if (positions_needed[first_pos + r] == 0) continue;
      const uint64_t b = AlignDown(r * rb, align),
                     e = std::min(AlignUp((r + 1) * rb, align), stride);
      if (!row_runs_.empty() && row_runs_.back().index == index && b <= row_runs_.back().end) {
        row_runs_.back().end = std::max(row_runs_.back().end, e);
      } else {
        row_runs_.push_back(RowRun{index, b, e});
      }
    }
  }
  auto where = [&](uint64_t index) {
    return "KV spill file " + spill_path_ + ": V page " + std::to_string(index % pps) +
           " of sequence " + std::to_string(index / pps / layout_.n_layers) + ", layer " +
           std::to_string(index / pps % layout_.n_layers);
  };
  Status result;
  for (size_t first = 0; first < row_runs_.size(); first += kQueueDepth) {
    const size_t n = std::min<size_t>(kQueueDepth, row_runs_.size() - first);
    requests_.clear();
    for (size_t i = 0; i < n; ++i) {
      const RowRun& run = row_runs_[first + i];
      requests_.push_back(storage::ReadRequest{
          file_id_, run.index * stride + run.begin,
          ByteSpan(VSlot(v_pages_[run.index].slot) + run.begin, run.end - run.begin), first + i});
    }
    RETURN_IF_ERROR(backend_->Submit(requests_));
    size_t done = 0;
    while (done < n) {
      Result<size_t> got = backend_->Reap(n - done, completions_);
      if (!got.ok()) return got.status();  // the backend is unusable; nothing more lands
      for (size_t i = 0; i < *got; ++i) {
        const storage::ReadCompletion& rc = completions_[i];
        const RowRun& run = row_runs_[rc.tag];
        if (!result.ok()) continue;  // the first failure is the one reported
        if (!rc.status.ok()) {
          result = rc.status.WithContext(where(run.index));
        } else if (rc.bytes_read != run.end - run.begin) {
          result = IoError(where(run.index) + ": short read at end of file");
        }
        stats_.bytes_read += run.end - run.begin;
      }
      done += *got;
    }
    stats_.reads += n;
  }
  stats_.io_wait_ns += NowNs() - start;
  if (!result.ok()) return result;
  // Every needed row against its checksum (bytes read beside it are never used).
  for (uint64_t index : indices) {
    const uint64_t first_pos = index % pps * P;
    const std::byte* page = VSlot(v_pages_[index].slot);
    for (uint64_t r = 0; r < P && first_pos + r < positions_needed.size(); ++r) {
      if (positions_needed[first_pos + r] == 0) continue;
      if (storage::Checksum64(ConstByteSpan(page + r * rb, rb)) != row_checksums_[index * P + r]) {
        return CorruptionError(where(index) + ", row " + std::to_string(r) + " fails its checksum");
      }
    }
  }
  return Status::Ok();
}

const std::byte* KvPageCache::PageData(KvKind kind, uint32_t seq, uint32_t layer,
                                       uint64_t page) const {
  if (!Spillable(kind)) {
    return k_pool_.data() + VIndex(seq, layer, page) * layout_.page_stride_bytes();
  }
  const uint32_t slot = v_pages_[Index(kind, seq, layer, page)].slot;
  CHECK_NE(slot, kNoSlot);
  return VSlot(slot);
}

}  // namespace flashlm::cache
