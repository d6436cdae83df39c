#include "engine/kv_cache.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "engine/kernels.h"
#include "storage/check.h"

namespace flashlm::engine {
namespace {
// The cache on transparent huge pages: it is read position after position at every step, and
// the first touch of each 4 KiB page is costly on virtual machines.
constexpr bool kHugePages = true;

uint64_t FloatsFor(const layout::ModelConfig& c, uint32_t max_positions, uint32_t max_sequences) {
  return 2 * uint64_t{max_sequences} * c.n_layers * max_positions * c.n_kv_heads * c.head_dim;
}

// Value `e` of a q8_0 row: blocks of 32 values, each an f16 scale then 32 int8.
inline float Q8Value(const std::byte* row, uint32_t e) {
  const std::byte* block = row + uint64_t{e / 32} * 34;
  uint16_t d;
  std::memcpy(&d, block, 2);
  return layout::F16ToF32(d) * static_cast<float>(static_cast<int8_t>(block[2 + e % 32]));
}

}  // namespace

float KvDot(const float* q, const KvRows& rows, uint32_t i, uint32_t offset, uint32_t n) {
  const std::byte* row = rows.data + uint64_t{i} * rows.stride_bytes;
  switch (rows.dtype) {
    case layout::DType::kF32:
      return DotF32(q, reinterpret_cast<const float*>(row) + offset, n);
    case layout::DType::kF16: {
      float sum;
      AttentionDotRows(q, row + uint64_t{offset} * 2, rows.stride_bytes, 1, true, n, 1.0f, &sum);
      return sum;
    }
    case layout::DType::kQ8_0: {
      float sum = 0;
      for (uint32_t j = 0; j < n; ++j) sum += q[j] * Q8Value(row, offset + j);
      return sum;
    }
    default:
      CHECK(false && "KV rows in an unsupported dtype");
  }
  return 0;
}

Status FillSyntheticKv(KvCache& kv, uint32_t n_layers, uint32_t seq, uint32_t positions,
                       uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> k(kv.kv_dim()), v(kv.kv_dim());
  for (uint32_t p = 0; p < positions; ++p) {
    for (uint32_t l = 0; l < n_layers; ++l) {
      for (float& x : k) x = nd(rng);
      for (float& x : v) x = nd(rng);
      RETURN_IF_ERROR(kv.Write(l, seq, p, k, v));
    }
  }
  kv.SetLength(seq, positions);
  return Status::Ok();
}

float KeyPageBound(const float* q, const float* lo, const float* hi, uint32_t n) {
  float sum = 0, magnitude = 0;
  for (uint32_t j = 0; j < n; ++j) {
    const float a = q[j] * lo[j], b = q[j] * hi[j];
    sum += std::max(a, b);
    magnitude += std::max(std::fabs(a), std::fabs(b));
  }
  return sum + static_cast<float>(n + 4) * 0x1p-23f * magnitude;
}

void KvAxpy(float a, const KvRows& rows, uint32_t i, uint32_t offset, float* y, uint32_t n) {
  const std::byte* row = rows.data + uint64_t{i} * rows.stride_bytes;
  switch (rows.dtype) {
    case layout::DType::kF32:
      AxpyF32(a, reinterpret_cast<const float*>(row) + offset, y, n);
      return;
    case layout::DType::kF16:
      AttentionAxpyRows(&a, row + uint64_t{offset} * 2, rows.stride_bytes, 1, true, y, n);
      return;
    case layout::DType::kQ8_0:
      for (uint32_t j = 0; j < n; ++j) y[j] += a * Q8Value(row, offset + j);
      return;
    default:
      CHECK(false && "KV rows in an unsupported dtype");
  }
}

void KvDotRun(const float* q, const KvRows& rows, uint32_t offset, uint32_t n, float scale,
              float* scores) {
  const layout::DType dt = rows.dtype;
  if (dt == layout::DType::kF32 || dt == layout::DType::kF16) {
    const uint64_t width = dt == layout::DType::kF32 ? 4 : 2;
    AttentionDotRows(q, rows.data + offset * width, rows.stride_bytes, rows.count,
                     dt == layout::DType::kF16, n, scale, scores);
    return;
  }
  for (uint32_t i = 0; i < rows.count; ++i) scores[i] = KvDot(q, rows, i, offset, n) * scale;
}

void KvAxpyRun(const float* a, const KvRows& rows, uint32_t offset, float* y, uint32_t n) {
  const layout::DType dt = rows.dtype;
  if (dt == layout::DType::kF32 || dt == layout::DType::kF16) {
    const uint64_t width = dt == layout::DType::kF32 ? 4 : 2;
    AttentionAxpyRows(a, rows.data + offset * width, rows.stride_bytes, rows.count,
                      dt == layout::DType::kF16, y, n);
    return;
  }
  for (uint32_t i = 0; i < rows.count; ++i) KvAxpy(a[i], rows, i, offset, y, n);
}

uint64_t FlatKvCache::BytesNeeded(const layout::ModelConfig& c, uint32_t max_positions,
                                  uint32_t max_sequences) {
  return storage::AlignedBuffer::ResidentBytes(
             FloatsFor(c, max_positions, max_sequences) * sizeof(float), 64, kHugePages) +
         uint64_t{max_sequences} * sizeof(uint32_t);
}

Result<std::unique_ptr<FlatKvCache>> FlatKvCache::Create(const layout::ModelConfig& c,
                                                         uint32_t max_positions,
                                                         uint32_t max_sequences) {
  if (max_positions == 0 || max_sequences == 0 || c.n_layers == 0 || c.n_kv_heads == 0 ||
      c.head_dim == 0) {
    return InvalidArgumentError("KV cache: zero size");
  }
  std::unique_ptr<FlatKvCache> kv(new FlatKvCache());
  kv->n_layers_ = c.n_layers;
  kv->kv_dim_ = c.n_kv_heads * c.head_dim;
  kv->max_positions_ = max_positions;
  kv->max_sequences_ = max_sequences;
  ASSIGN_OR_RETURN(kv->memory_,
                   storage::AlignedBuffer::Allocate(
                       FloatsFor(c, max_positions, max_sequences) * sizeof(float), 64, kHugePages));
  // Resident from the start (the plan charges it whole): the first prefill does not fault in
  // and zero a huge page per layer, and a cache the machine cannot give fails here.
  RETURN_IF_ERROR(kv->memory_.Populate());
  kv->lengths_.assign(max_sequences, 0);
  return kv;
}

uint64_t FlatKvCache::Offset(bool value, uint32_t layer, uint32_t seq, uint32_t pos) const {
  const uint64_t per_seq = uint64_t{n_layers_} * max_positions_ * kv_dim_;
  return (uint64_t{value} * max_sequences_ + seq) * per_seq +
         (uint64_t{layer} * max_positions_ + pos) * kv_dim_;
}

void FlatKvCache::SetLength(uint32_t seq, uint32_t length) {
  CHECK_LT(seq, max_sequences_);
  CHECK_LE(length, max_positions_);
  lengths_[seq] = length;
}

Status FlatKvCache::Write(uint32_t layer, uint32_t seq, uint32_t pos, std::span<const float> k,
                          std::span<const float> v) {
  if (layer >= n_layers_ || seq >= max_sequences_ || pos >= max_positions_ ||
      k.size() != kv_dim_ || v.size() != kv_dim_) {
    return InvalidArgumentError("KV cache: write out of range");
  }
  float* base = reinterpret_cast<float*>(memory_.data());
  std::copy(k.begin(), k.end(), base + Offset(false, layer, seq, pos));
  std::copy(v.begin(), v.end(), base + Offset(true, layer, seq, pos));
  return Status::Ok();
}

Status FlatKvCache::WriteEncoded(uint32_t layer, uint32_t seq, uint32_t pos, ConstByteSpan k,
                                 ConstByteSpan v) {
  const uint64_t row_bytes = uint64_t{kv_dim_} * sizeof(float);
  if (layer >= n_layers_ || seq >= max_sequences_ || pos >= max_positions_ ||
      k.size() != row_bytes || v.size() != row_bytes) {
    return InvalidArgumentError("KV cache: write out of range");
  }
  std::memcpy(memory_.data() + Offset(false, layer, seq, pos) * sizeof(float), k.data(), row_bytes);
  std::memcpy(memory_.data() + Offset(true, layer, seq, pos) * sizeof(float), v.data(), row_bytes);
  return Status::Ok();
}

KvRows FlatKvCache::Keys(uint32_t layer, uint32_t seq, uint32_t first, uint32_t count) const {
  CHECK_LE(uint64_t{first} + count, max_positions_);
  return KvRows{memory_.data() + Offset(false, layer, seq, first) * sizeof(float),
                uint64_t{kv_dim_} * sizeof(float), count, layout::DType::kF32};
}

KvRows FlatKvCache::Values(uint32_t layer, uint32_t seq, uint32_t first, uint32_t count) const {
  CHECK_LE(uint64_t{first} + count, max_positions_);
  return KvRows{memory_.data() + Offset(true, layer, seq, first) * sizeof(float),
                uint64_t{kv_dim_} * sizeof(float), count, layout::DType::kF32};
}

}  // namespace flashlm::engine
