#include "engine/bundle_ffn.h"

#include <algorithm>
#include <cstring>

#include "storage/check.h"

namespace flashlm::engine {
namespace {

// Rows [first, second) of run i of n: `blocks` blocks of `block` rows cut into n runs of whole
// blocks as evenly as they go, none past `limit` (the rows, where the last block is partial).
std::pair<uint32_t, uint32_t> BlockRange(uint32_t blocks, uint64_t i, uint64_t n, uint32_t block,
                                         uint32_t limit) {
  const uint32_t r0 = static_cast<uint32_t>(blocks * i / n) * block;
  const uint32_t r1 = std::min(static_cast<uint32_t>(blocks * (i + 1) / n) * block, limit);
  return {r0, r1};
}

// Asks for bytes [p, p + n) to be brought into the cache ahead of use.
inline void Prefetch(const std::byte* p, uint64_t n) {
  for (uint64_t at = 0; at < n; at += 64) __builtin_prefetch(p + at, 0, 2);
}

// Bundles at most this far apart (a stride's padding, a merged read's small gap) count as one
// stream for the front-to-back read (see Accumulate).
constexpr uintptr_t kAdjacentGap = 4096;

}  // namespace

DownLayout DownLayout::For(const layout::BundleGeometry& g, uint32_t threads) {
  const uint32_t block = AxpyBlockValues(g.dtype);
  const uint32_t blocks = g.dim % block == 0 ? g.dim / block : 0;  // 0: a partial last block
  DownLayout d;
  for (uint32_t p = blocks > 0 ? threads : 1; p > 1; --p) {
    if (blocks % p == 0) {
      d.parts = p;
      break;
    }
  }
  d.part_rows = g.dim / d.parts;
  d.part_bytes = layout::RowBytes(g.dtype, d.part_rows);
  d.group = blocks > 0 && ReadsInterleavedRows(g.dtype) ? 4 : 1;
  d.block_rows = block;
  d.block_bytes = layout::RowBytes(g.dtype, block);
  return d;
}

uint64_t DownLayout::BlockStride(uint32_t count, uint32_t k) const {
  if (group == 1) return 0;
  const uint32_t first = k / group * group;
  return std::min(group, count - first) * block_bytes;
}

uint64_t DownLayout::RowOffset(uint32_t count, uint32_t k, uint32_t r) const {
  const uint64_t stride = BlockStride(count, k);
  return uint64_t{r / block_rows} * (stride == 0 ? block_bytes : stride);
}

const std::byte* DownLayout::Place(std::byte* base, uint32_t count, uint32_t k,
                                   const std::byte* column) const {
  const uint32_t first = k / group * group;
  std::byte* at = base + uint64_t{first} * part_bytes + (k - first) * block_bytes;
  const uint64_t stride = BlockStride(count, k);
  for (uint32_t p = 0; p < parts; ++p) {
    std::byte* to = at + p * PartStride(count);
    const std::byte* from = column + p * part_bytes;
    if (stride == 0) {
      std::memcpy(to, from, part_bytes);
      continue;
    }
    for (uint64_t b = 0; b < part_bytes / block_bytes; ++b) {
      std::memcpy(to + b * stride, from + b * block_bytes, block_bytes);
    }
  }
  return at;
}

RegroupedBundles Regroup(const layout::BundleGeometry& g, uint32_t count, ByteSpan gate,
                         ByteSpan up, std::span<const std::byte* const> down,
                         const DownLayout& down_layout) {
  const uint64_t part = g.part_bytes;
  CHECK_EQ(up.size(), uint64_t{count} * part);
  CHECK_EQ(gate.size(), g.has_gate() ? up.size() : 0);
  CHECK_EQ(down.size(), count);
  CHECK_EQ(uint64_t{down_layout.parts} * down_layout.part_rows, g.dim);
  const uint32_t whole = count / 16 * 16;
  const uint32_t strips = CanInterleaveStrips(g.dtype, whole, g.dim) ? whole : 0;
  const auto view = [&](ByteSpan m, uint32_t row0, uint32_t rows, bool keep) {
    if (m.empty()) return MatrixView{};
    const ByteSpan bytes = m.subspan(uint64_t{row0} * part, uint64_t{rows} * part);
    const MatrixView v{g.dtype, rows, g.dim, bytes};
    return keep ? KeepInStrips(v, bytes) : v;
  };
  RegroupedBundles r;
  r.gate = view(gate, 0, strips, true);
  r.up = view(up, 0, strips, true);
  r.gate_tail = view(gate, strips, count - strips, false);
  r.up_tail = view(up, strips, count - strips, false);
  r.down = down;
  r.down_layout = down_layout;
  return r;
}

uint32_t BundleFfnKernel::GroupRows(layout::DType dtype) {
  const bool strips = dtype == layout::DType::kQ8_0 || dtype == layout::DType::kQ4_0 ||
                      dtype == layout::DType::kQ4_K || dtype == layout::DType::kQ6_K;
  return strips ? kStripGroupRows : kGroupRows;
}

bool BundleFfnKernel::Adjacent(const std::byte* bundle, const std::byte* next) const {
  const uintptr_t end = reinterpret_cast<uintptr_t>(bundle) + g_.bundle_bytes;
  const uintptr_t at = reinterpret_cast<uintptr_t>(next);
  return at >= end && at - end <= kAdjacentGap;
}

bool BundleFfnKernel::Chained(std::span<const std::byte* const> bundles) const {
  for (size_t k = 1; k < bundles.size(); ++k) {
    if (!Adjacent(bundles[k - 1], bundles[k])) return false;
  }
  return true;
}

uint64_t BundleFfnKernel::TileStride(uint32_t max_batch) {
  return AlignUp(2 * uint64_t{kStripGroupRows} * std::max(max_batch, kUnitStrips),
                 64 / sizeof(float));
}

BundleFfnKernel::Layout BundleFfnKernel::MakeLayout(const layout::BundleGeometry& g,
                                                    uint32_t hidden, uint32_t max_batch,
                                                    uint32_t chunk_max, uint32_t threads) {
  Layout l;
  l.h = l.arena.AddFloats(uint64_t{chunk_max} * max_batch);
  if (!g.has_gate()) l.gate_all = l.arena.AddFloats(uint64_t{max_batch} * hidden);
  l.tile = l.arena.AddFloats(threads * TileStride(max_batch));
  l.qx = l.arena.Add(MatMulScratchBytes(g.dim, max_batch));
  return l;
}

uint64_t BundleFfnKernel::ScratchBytes(const layout::BundleGeometry& g, uint32_t hidden,
                                       uint32_t max_batch, uint32_t chunk_max, uint32_t threads) {
  return MakeLayout(g, hidden, max_batch, chunk_max, threads).arena.resident_bytes();
}

Result<std::unique_ptr<BundleFfnKernel>> BundleFfnKernel::Create(const layout::BundleGeometry& g,
                                                                 uint32_t hidden,
                                                                 uint32_t max_batch,
                                                                 uint32_t chunk_max, bool relu,
                                                                 ThreadPool& pool) {
  if (g.dim == 0 || hidden == 0 || max_batch == 0 || chunk_max == 0) {
    return InvalidArgumentError("bundle FFN: zero size");
  }
  if (!MatMulSupports(g.dtype)) {
    return NotSupportedError(std::string("bundle FFN: no kernel for bundles of dtype ") +
                             std::string(layout::DTypeName(g.dtype)));
  }
  std::unique_ptr<BundleFfnKernel> k(new BundleFfnKernel(pool));
  k->g_ = g;
  k->hidden_ = hidden;
  k->max_batch_ = max_batch;
  k->chunk_max_ = chunk_max;
  k->relu_ = relu;
  k->separate_ = !g.has_gate();
  const Layout l = MakeLayout(g, hidden, max_batch, chunk_max, pool.size());
  ASSIGN_OR_RETURN(k->arena_, Arena::Create(l.arena));
  k->h_ = k->arena_.Floats(l.h, uint64_t{chunk_max} * max_batch);
  if (k->separate_) k->gate_all_ = k->arena_.Floats(l.gate_all, uint64_t{max_batch} * hidden);
  k->tile_ = k->arena_.Floats(l.tile, pool.size() * TileStride(max_batch));
  k->qx_span_ = k->arena_.Bytes(l.qx, MatMulScratchBytes(g.dim, max_batch));
  k->predicted_counts_.assign(uint64_t{pool.size()} * 8, 0);
  // At most one unit a group of bundles (at one thread).
  const uint64_t units = CeilDiv(chunk_max, GroupRows(g.dtype) / (k->separate_ ? 1 : 2));
  k->ready_ = std::make_unique<std::atomic<uint32_t>[]>(units);
  k->down_parts_ = std::make_unique<DownPart[]>(pool.size());
  return k;
}

void BundleFfnKernel::set_score_mask(std::span<const float> scores, float cut, float fire_cut) {
  CHECK_GE(scores.size(), uint64_t{n_} * hidden_);
  score_mask_ = scores;
  score_cut_ = cut;
  fire_cut_ = fire_cut;
}

BundleFfnKernel::PredictedStats BundleFfnKernel::predicted_stats() const {
  PredictedStats s;
  for (size_t th = 0; th < predicted_counts_.size(); th += 8) {
    s.computed += predicted_counts_[th];
    s.fired += predicted_counts_[th + 1];
  }
  return s;
}

uint32_t BundleFfnKernel::FiringPositions(std::span<uint32_t> out, float cut) const {
  CHECK(separate_);
  CHECK_GE(out.size(), hidden_);
  uint32_t k = 0;
  for (uint32_t p = 0; p < hidden_; ++p) {
    const uint32_t neuron = perm_.empty() ? p : perm_[p];
    for (uint32_t t = 0; t < n_; ++t) {
      if (ActivationMagnitude(gate_all_[uint64_t{t} * hidden_ + neuron], relu_) > cut) {
        out[k++] = p;
        break;
      }
    }
  }
  return k;
}

void BundleFfnKernel::Begin(std::span<const float> x, uint32_t n, std::span<float> out,
                            const MatrixView* dense_gate, std::span<const uint32_t> permutation,
                            std::span<float> capture, std::span<float> gate_capture) {
  CHECK_LE(n, max_batch_);
  CHECK_GE(x.size(), uint64_t{n} * g_.dim);
  CHECK_GE(out.size(), uint64_t{n} * g_.dim);
  x_ = x;
  n_ = n;
  out_ = out;
  perm_ = permutation;
  capture_ = capture;
  gate_capture_ = gate_capture;
  mask_cut_ = -1.0f;
  score_mask_ = {};
  accumulated_ = false;
  std::fill(out.begin(), out.begin() + uint64_t{n} * g_.dim, 0.0f);
  for (std::span<float> c : {capture, gate_capture}) {
    if (c.empty()) continue;
    CHECK_GE(c.size(), uint64_t{n} * hidden_);
    std::fill(c.begin(), c.begin() + uint64_t{n} * hidden_, 0.0f);
  }
  if (separate_) {
    CHECK(dense_gate != nullptr);
    CHECK_EQ(dense_gate->rows, hidden_);
    CHECK_EQ(dense_gate->cols, g_.dim);
    MatMul(*dense_gate, x, n, gate_all_, qx_span_, pool_);
    if (!gate_capture.empty()) {
      std::copy(gate_all_.begin(), gate_all_.begin() + uint64_t{n} * hidden_, gate_capture.begin());
    }
  }
  QuantizeActivations(x, g_.dim, n, qx_span_);
}

void BundleFfnKernel::ComputeGroup(std::span<const uint32_t> positions,
                                   std::span<const std::byte* const> bundles, uint64_t k0,
                                   uint64_t end, uint32_t th, uint64_t* computed, uint64_t* fired) {
  const uint32_t n = n_, dim = g_.dim;
  const uint32_t per_bundle = separate_ ? 1 : 2;
  const uint32_t group = GroupRows(g_.dtype) / per_bundle;
  const bool q8_token = n == 1 && g_.dtype == layout::DType::kQ8_0;
  constexpr uint64_t kQ8Lead = 512;
  float* tile = tile_.data() + th * TileStride(max_batch_);
  const uint32_t m = static_cast<uint32_t>(std::min<uint64_t>(group, end - k0));
  const std::byte* rows[kStripGroupRows];
  uint32_t row_count = 0;
  // The next group's bundles, when they follow one another (resident bundles, a merged read):
  // asked for in step with this group's gate/up reads (DotRows' `ahead`), so that they arrive
  // while these compute. Not for one q8_0 token, whose strip kernel asks for its rows' next
  // bytes as it reads (kQ8Lead below): asking for the whole next group as well gained nothing
  // at one thread and lost 10% at two.
  ConstByteSpan ahead;
  if (!q8_token && k0 + group < end) {
    const uint64_t next_end = std::min<uint64_t>(k0 + 2 * group, end);
    if (Chained(bundles.subspan(k0 + group, next_end - k0 - group))) {
      ahead = ConstByteSpan(
          bundles[k0 + group],
          static_cast<uint64_t>(bundles[next_end - 1] - bundles[k0 + group]) + g_.bundle_bytes);
    }
  }
  for (uint32_t j = 0; j < m; ++j) {
    const std::byte* bundle = bundles[k0 + j];
    if (!separate_) rows[row_count++] = bundle;
    rows[row_count++] = bundle + g_.up_offset();
    if (ahead.empty() && k0 + group + j < end) {  // the next group's bundles
      const std::byte* next = bundles[k0 + group + j];
      if (q8_token) {
        for (uint32_t r = 0; r < per_bundle; ++r) Prefetch(next + r * g_.part_bytes, kQ8Lead);
      } else {
        Prefetch(next, Adjacent(bundles[k0 + group + j - 1], next) ? g_.bundle_bytes
                                                                   : per_bundle * g_.part_bytes);
      }
    }
  }
  DotRows(g_.dtype, dim, std::span<const std::byte* const>(rows, row_count), x_, n, qx_span_, tile,
          ahead);
  const bool plain = PlainActivation();
  for (uint32_t j = 0; j < m; ++j) {
    const uint64_t k = k0 + j;
    float* h = h_.data() + k * max_batch_;
    float* gate_row = separate_ ? nullptr : tile + uint64_t{2 * j} * n;
    const float* up_row = tile + uint64_t{per_bundle * j + per_bundle - 1} * n;
    if (plain) {  // the bundle's h for every token in one call (in place in the tile)
      SwiGlu(std::span<float>(gate_row, n), std::span<const float>(up_row, n), relu_);
      std::copy_n(gate_row, n, h);
      continue;
    }
    const uint64_t neuron = perm_.empty() ? positions[k] : perm_[positions[k]];
    for (uint32_t t = 0; t < n; ++t) {
      const float gv = separate_ ? gate_all_[uint64_t{t} * hidden_ + neuron] : gate_row[t];
      h[t] = Activation(t, neuron, gv, up_row[t], computed, fired);
    }
    if (!capture_.empty()) {
      for (uint32_t t = 0; t < n; ++t) capture_[uint64_t{t} * hidden_ + neuron] = h[t];
    }
  }
}

bool BundleFfnKernel::PlainActivation() const {
  return !separate_ && gate_capture_.empty() && mask_cut_ < 0 && score_mask_.empty() &&
         capture_.empty();
}

float BundleFfnKernel::Activation(uint32_t t, uint64_t neuron, float gv, float uv,
                                  uint64_t* computed, uint64_t* fired) {
  if (!separate_ && !gate_capture_.empty()) gate_capture_[uint64_t{t} * hidden_ + neuron] = gv;
  const bool masked = mask_cut_ >= 0 && ActivationMagnitude(gv, relu_) <= mask_cut_;
  const bool positive = gv > 0;
  SwiGlu(std::span<float>(&gv, 1), std::span<const float>(&uv, 1), relu_);
  return ScoreMasked(t, neuron, positive, gv, computed, fired) || masked ? 0.0f : gv;
}

void BundleFfnKernel::AccumulateRegrouped(const RegroupedBundles& b) {
  CHECK(!accumulated_);
  accumulated_ = true;
  CHECK_LE(b.count(), hidden_);
  const uint32_t strip_rows = b.up.rows;
  CHECK_LE(strip_rows, b.count());
  CHECK_EQ(b.up_tail.rows, b.count() - strip_rows);
  if (!separate_) CHECK(b.gate.rows == strip_rows && b.gate_tail.rows == b.up_tail.rows);
  // As many positions a chunk as h_ holds with n floats each (one token: chunk_max x max_batch,
  // a whole layer at the engine's sizes, so that the threads meet twice a layer), whole strips.
  const uint64_t fits = uint64_t{chunk_max_} * max_batch_ / n_;
  CHECK(strip_rows == 0 || fits >= kStripGroupRows);
  const uint32_t chunk = static_cast<uint32_t>(std::min<uint64_t>(fits, b.count()));
  const uint32_t strip_chunk = chunk / kStripGroupRows * kStripGroupRows;
  for (uint32_t k0 = 0; k0 < strip_rows; k0 += strip_chunk) {
    RegroupedChunk(b.gate, b.up, k0, std::min(strip_chunk, strip_rows - k0), k0, b);
  }
  for (uint32_t k0 = 0; k0 < b.up_tail.rows; k0 += chunk) {
    RegroupedChunk(b.gate_tail, b.up_tail, k0, std::min(chunk, b.up_tail.rows - k0),
                   strip_rows + k0, b);
  }
}

void BundleFfnKernel::RegroupedChunk(const MatrixView& gate, const MatrixView& up, uint32_t row0,
                                     uint32_t m, uint32_t first, const RegroupedBundles& b) {
  const uint32_t n = n_;
  // Rows [r0, r0 + rows) of `w` (r0 + row0 on a strip boundary where w is in strips).
  const auto slice = [&](const MatrixView& w, uint32_t r0, uint32_t rows) {
    MatrixView v = w;
    v.rows = rows;
    v.bytes = w.bytes.subspan(uint64_t{row0 + r0} * w.row_bytes(), uint64_t{rows} * w.row_bytes());
    return v;
  };
  // A unit of up to kUnitStrips strips (as many as the tile holds for n tokens) at a time over
  // the threads: its gate and up products into the thread's tile (token-major, gate then up),
  // then its rows' h.
  const uint32_t unit_rows =
      kStripGroupRows * std::clamp(std::max(max_batch_, kUnitStrips) / n, 1u, kUnitStrips);
  const uint64_t tile_half = TileStride(max_batch_) / 2;
  const bool plain = PlainActivation();
  pool_.ParallelFor(CeilDiv(m, unit_rows), 1, [&](uint64_t begin, uint64_t end, uint32_t th) {
    float* gate_out = tile_.data() + th * TileStride(max_batch_);
    float* up_out = gate_out + tile_half;
    uint64_t computed = 0, fired = 0;  // under a score mask
    for (uint64_t s = begin; s < end; ++s) {
      const uint32_t r0 = static_cast<uint32_t>(s) * unit_rows;
      const uint32_t rows = std::min(unit_rows, m - r0);
      if (!separate_) {
        MatMulRows(slice(gate, r0, rows), x_, n, qx_span_, 0, rows,
                   std::span<float>(gate_out, uint64_t{n} * rows));
      }
      MatMulRows(slice(up, r0, rows), x_, n, qx_span_, 0, rows,
                 std::span<float>(up_out, uint64_t{n} * rows));
      if (plain) {  // the unit's h a token at a time, then into h_ position by position
        for (uint32_t t = 0; t < n; ++t) {
          float* g = gate_out + uint64_t{t} * rows;
          SwiGlu(std::span<float>(g, rows),
                 std::span<const float>(up_out + uint64_t{t} * rows, rows), relu_);
          for (uint32_t i = 0; i < rows; ++i) h_[uint64_t{r0 + i} * n + t] = g[i];
        }
        continue;
      }
      for (uint32_t i = 0; i < rows; ++i) {
        const uint32_t j = r0 + i;
        const uint64_t neuron = perm_.empty() ? first + j : perm_[first + j];
        float* h = h_.data() + uint64_t{j} * n;  // n floats a position here
        for (uint32_t t = 0; t < n; ++t) {
          const float gv = separate_ ? gate_all_[uint64_t{t} * hidden_ + neuron]
                                     : gate_out[uint64_t{t} * rows + i];
          h[t] = Activation(t, neuron, gv, up_out[uint64_t{t} * rows + i], &computed, &fired);
        }
        if (!capture_.empty()) {
          for (uint32_t t = 0; t < n; ++t) capture_[uint64_t{t} * hidden_ + neuron] = h[t];
        }
      }
    }
    predicted_counts_[uint64_t{th} * 8] += computed;
    predicted_counts_[uint64_t{th} * 8 + 1] += fired;
  });
  // out += h * down, positions in order, the outputs cut into one piece a thread: each part of
  // the layout into pool / parts pieces of whole blocks (one piece, the part itself, where the
  // parts are as many as the threads; where the output's blocks do not divide evenly the layout
  // has one part, and each thread reads its piece of every column). Each piece's columns are
  // read front to back in one call.
  const DownLayout& d = b.down_layout;
  const std::span<const std::byte* const> down = b.down.subspan(first, m);
  const uint32_t block = AxpyBlockValues(g_.dtype);
  const uint32_t part_blocks = static_cast<uint32_t>(CeilDiv(d.part_rows, block));
  const uint32_t pieces = std::clamp<uint32_t>(pool_.size() / d.parts, 1, part_blocks);
  // Positions before `whole_end` are in whole groups (one block stride), the rest in the last.
  const uint32_t whole_end = b.count() / d.group * d.group;
  pool_.ParallelFor(uint64_t{d.parts} * pieces, 1, [&](uint64_t begin, uint64_t end, uint32_t) {
    for (uint64_t u = begin; u < end; ++u) {
      const uint64_t p = u / pieces, q = u % pieces;
      const auto [r0, r1] = BlockRange(part_blocks, q, pieces, block, d.part_rows);
      for (uint32_t k0 = 0; k0 < m;) {  // runs of positions of one block stride
        const uint32_t k1 = first + k0 < whole_end ? std::min(m, whole_end - first) : m;
        AxpyRows(g_.dtype, down.subspan(k0, k1 - k0),
                 p * d.PartStride(b.count()) + d.RowOffset(b.count(), first + k0, r0), r1 - r0,
                 h_.data() + uint64_t{k0} * n, n, n, out_.data() + p * d.part_rows + r0, g_.dim,
                 d.BlockStride(b.count(), first + k0));
        k0 = k1;
      }
    }
  });
}

void BundleFfnKernel::AccumulateDown(std::span<const std::byte* const> bundles, uint64_t k0,
                                     uint32_t m, uint32_t r0, uint32_t r1) {
  const uint64_t src_offset = g_.down_offset() + layout::RowBytes(g_.dtype, r0);
  AxpyRows(g_.dtype, bundles.subspan(k0, m), src_offset, r1 - r0, h_.data() + k0 * max_batch_,
           max_batch_, n_, out_.data() + r0, g_.dim);
}

void BundleFfnKernel::Accumulate(std::span<const uint32_t> positions,
                                 std::span<const std::byte* const> bundles) {
  const uint32_t count = static_cast<uint32_t>(positions.size());
  CHECK_LE(count, chunk_max_);
  accumulated_ = true;
  CHECK_EQ(bundles.size(), positions.size());
  if (count == 0) return;
  CHECK_LT(positions[count - 1], hidden_);
  const uint32_t n = n_, dim = g_.dim;
  // Gate and up rows go GroupRows(dtype) at a time through DotRows (one 16-row strip for the
  // block dtypes), and the next group's bundles are prefetched meanwhile (ComputeGroup): the
  // whole bundle where the next one starts right after it (within kAdjacentGap bytes: resident
  // bundles, a merged read), so that the bundles' memory is read front to back, else only its
  // [gate |] up rows (reading down columns ahead of scattered bundles costs more than it gains:
  // docs/benchmarks.md, "Resident bundle FFN"). One token of q8_0 is the exception: its strip
  // kernel prefetches each row a few block pairs ahead as it reads, so only the first kQ8Lead
  // bytes of the next group's gate and up rows are asked for (whole next bundles, as the other
  // dtypes take them, ran 17% slower on the 1b model with resident bundles, 1 thread; whole gate
  // and up rows, 14%).
  const uint32_t per_bundle = separate_ ? 1 : 2;
  const uint32_t group = GroupRows(g_.dtype) / per_bundle;
  const uint32_t down_block = AxpyBlockValues(g_.dtype);
  const uint32_t blocks = static_cast<uint32_t>(CeilDiv(dim, down_block));
  const bool q4_threads =
      n == 1 && g_.dtype == layout::DType::kQ4_0 && pool_.size() > 1 && Chained(bundles);
  if (n == 1 && (g_.dtype == layout::DType::kQ8_0 || q4_threads)) {
    // One token of q8_0, or of q4_0 at several threads with every bundle of the call right after
    // the one before (resident, a merged read): bundles go in units (q8_0 at one thread a
    // group of bundles, else 1/T of the call's groups each at T threads, so that each thread
    // reads one contiguous run), and a unit's down columns are added soon after its gate/up rows
    // were read. The outputs are cut into one part per thread; a part takes the units in
    // position order, so every out value sums its terms in position order, as the batch path
    // below does (bit-identical to it, whatever the threads). Any thread computes any unit's h
    // (claimed from a counter) and, between units, adds every unit whose h is ready to whichever
    // part it can lock: no thread waits on a chunk that another thread must run, so this
    // finishes even if the pool runs every chunk on one thread.
    // Measured (bench/engine/ffn_bench.cc, 1b, ms a pass): q8_0 at 2 threads, a group a unit
    // 47-57, 4 groups 46, 8 45, half the call 43-45, the two phases below 49-52; q4_0 at 2
    // threads, half the call 29.5-29.8 against 32.6-32.8; at one thread a group a unit 65 against
    // 54, so q4_0 takes the two phases there, and on scattered bundles (a sparse set), where this
    // schedule was slower. Not for q4_K: no faster at 2 threads (34.1-35.0 against 34.4-35.0)
    // and slower at one (61-62 against 56).
    const uint32_t parts = std::min<uint32_t>(pool_.size(), blocks);
    const uint64_t groups = CeilDiv(count, group);
    const uint64_t unit = group * (parts == 1 ? 1 : CeilDiv(groups, parts));
    const uint32_t units = static_cast<uint32_t>(CeilDiv(count, unit));
    next_unit_.store(0, std::memory_order_relaxed);
    for (uint32_t u = 0; u < units; ++u) ready_[u].store(0, std::memory_order_relaxed);
    for (uint32_t p = 0; p < parts; ++p) {
      down_parts_[p].next.store(0, std::memory_order_relaxed);
      down_parts_[p].busy.store(false, std::memory_order_relaxed);
    }
    pool_.ParallelFor(parts, 1, [&](uint64_t, uint64_t, uint32_t th) {
      uint64_t computed = 0, fired = 0;  // under a score mask
      for (;;) {
        bool done = true;
        for (uint32_t i = 0; i < parts; ++i) {
          const uint32_t p = (i + th) % parts;
          DownPart& part = down_parts_[p];
          if (part.next.load(std::memory_order_acquire) == units) continue;
          done = false;
          if (part.busy.exchange(true, std::memory_order_acquire)) continue;
          uint32_t next = part.next.load(std::memory_order_relaxed);
          const auto [r0, r1] = BlockRange(blocks, p, parts, down_block, dim);
          for (; next < units && ready_[next].load(std::memory_order_acquire) != 0; ++next) {
            const uint64_t end = std::min<uint64_t>((next + 1) * unit, count);
            for (uint64_t k0 = next * unit; k0 < end; k0 += group) {
              AccumulateDown(bundles, k0,
                             static_cast<uint32_t>(std::min<uint64_t>(group, end - k0)), r0, r1);
            }
          }
          part.next.store(next, std::memory_order_release);
          part.busy.store(false, std::memory_order_release);
        }
        if (done) break;
        if (next_unit_.load(std::memory_order_relaxed) < units) {
          const uint32_t u = next_unit_.fetch_add(1, std::memory_order_relaxed);
          if (u < units) {
            const uint64_t end = std::min<uint64_t>((u + 1) * unit, count);
            for (uint64_t k0 = u * unit; k0 < end; k0 += group) {
              ComputeGroup(positions, bundles, k0, end, th, &computed, &fired);
            }
            ready_[u].store(1, std::memory_order_release);
            continue;
          }
        }
        __builtin_ia32_pause();  // every unit is claimed: wait for a part to come free or a unit to land
      }
      predicted_counts_[uint64_t{th} * 8] += computed;
      predicted_counts_[uint64_t{th} * 8 + 1] += fired;
    });
    return;
  }
  // A batch. Phase 1: h for every bundle and every token, split over bundles.
  pool_.ParallelFor(count, 1, [&](uint64_t begin, uint64_t end, uint32_t th) {
    uint64_t computed = 0, fired = 0;  // under a score mask
    for (uint64_t k0 = begin; k0 < end; k0 += group) {
      ComputeGroup(positions, bundles, k0, end, th, &computed, &fired);
    }
    predicted_counts_[uint64_t{th} * 8] += computed;
    predicted_counts_[uint64_t{th} * 8 + 1] += fired;
  });
  // Phase 2: out += h * down, split over blocks of output rows; bundles in the given order.
  pool_.ParallelFor(blocks, 1, [&](uint64_t begin, uint64_t end, uint32_t) {
    const uint32_t r0 = static_cast<uint32_t>(begin) * down_block;
    const uint32_t r1 = std::min<uint32_t>(static_cast<uint32_t>(end) * down_block, dim);
    // Every bundle in one call: AxpyRows keeps a block of out in registers across the bundles
    // where it can, and for one token reads each down column front to back, asking for the next
    // columns as it goes.
    AccumulateDown(bundles, 0, count, r0, r1);
  });
}

}  // namespace flashlm::engine
