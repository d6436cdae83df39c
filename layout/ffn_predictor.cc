#include "layout/ffn_predictor.h"

#include <bit>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstring>

#include "layout/dtype.h"
#include "storage/checksum.h"
#include "storage/file.h"

namespace flashlm::layout {
namespace {

static_assert(std::endian::native == std::endian::little, "the file is written as in memory");

constexpr char kMagic[8] = {'F', 'L', 'M', 'P', 'R', 'E', 'D', '1'};
constexpr uint32_t kVersion = 1;
constexpr uint32_t kFlagRelu = 1;

// The header, as on disk.
struct FileHeader {
  char magic[8];
  uint32_t version;
  uint32_t layers;
  uint64_t store_identity;
  uint32_t dim, hidden, rank, flags;
  float fire_fraction;
  uint32_t reserved0;
  uint64_t tokens;
  uint64_t reserved1;
};
static_assert(sizeof(FileHeader) == 64);

// Per layer, before its matrices.
struct LayerRecord {
  float fire_cut, recall, precision, predicted_fraction;
};
static_assert(sizeof(LayerRecord) == 16);

std::string Hex(uint64_t v) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "%016" PRIx64, v);
  return buf;
}

bool Finite(const std::vector<float>& v) {
  for (float x : v) {
    if (!std::isfinite(x)) return false;
  }
  return true;
}

bool Fraction(float x) { return x >= 0 && x <= 1; }

}  // namespace

uint64_t FfnPredictorFileBytes(uint32_t layers, uint32_t dim, uint32_t hidden, uint32_t rank) {
  const uint64_t values = uint64_t{rank} * dim + uint64_t{hidden} * rank + hidden;
  return sizeof(FileHeader) + uint64_t{layers} * (sizeof(LayerRecord) + values * sizeof(float)) +
         sizeof(uint64_t);
}

Status SaveFfnPredictor(const FfnPredictor& p, const std::string& path) {
  if (p.layers.empty() || p.layers.size() > kFfnPredictorLayersMax || p.dim == 0 || p.hidden == 0 ||
      p.rank == 0 || p.rank > kFfnPredictorRankMax || p.dim > kFfnPredictorWidthMax ||
      p.hidden > kFfnPredictorWidthMax) {
    return InvalidArgumentError("FFN predictor: shape out of range");
  }
  const uint64_t size =
      FfnPredictorFileBytes(static_cast<uint32_t>(p.layers.size()), p.dim, p.hidden, p.rank);
  if (size > kFfnPredictorBytesMax) return InvalidArgumentError("FFN predictor: too large");
  if (!(p.fire_fraction >= 0 && p.fire_fraction < 1)) {
    return InvalidArgumentError("FFN predictor: fire fraction outside [0, 1)");
  }
  std::string out(size, '\0');
  FileHeader h{};
  std::memcpy(h.magic, kMagic, sizeof kMagic);
  h.version = kVersion;
  h.layers = static_cast<uint32_t>(p.layers.size());
  h.store_identity = p.store_identity;
  h.dim = p.dim;
  h.hidden = p.hidden;
  h.rank = p.rank;
  h.flags = p.relu ? kFlagRelu : 0;
  h.fire_fraction = p.fire_fraction;
  h.tokens = p.tokens;
  std::memcpy(out.data(), &h, sizeof h);
  uint64_t at = sizeof h;
  for (const FfnPredictorLayer& l : p.layers) {
    if (l.a.size() != uint64_t{p.rank} * p.dim || l.b.size() != uint64_t{p.hidden} * p.rank ||
        l.bias.size() != p.hidden) {
      return InvalidArgumentError("FFN predictor: a layer's matrices disagree with its shape");
    }
    if (!Finite(l.a) || !Finite(l.b) || !Finite(l.bias) || !std::isfinite(l.fire_cut) ||
        l.fire_cut < 0 || !Fraction(l.recall) || !Fraction(l.precision) ||
        !Fraction(l.predicted_fraction)) {
      return InvalidArgumentError("FFN predictor: a value is not finite or out of range");
    }
    const LayerRecord r{l.fire_cut, l.recall, l.precision, l.predicted_fraction};
    std::memcpy(out.data() + at, &r, sizeof r);
    at += sizeof r;
    for (const std::vector<float>* v : {&l.a, &l.b, &l.bias}) {
      std::memcpy(out.data() + at, v->data(), v->size() * sizeof(float));
      at += v->size() * sizeof(float);
    }
  }
  const uint64_t sum =
      storage::Checksum64(ConstByteSpan(reinterpret_cast<const std::byte*>(out.data()), at));
  std::memcpy(out.data() + at, &sum, sizeof sum);
  return storage::WriteFileAtomically(
      path, ConstByteSpan(reinterpret_cast<const std::byte*>(out.data()), out.size()));
}

Result<FfnPredictor> LoadFfnPredictor(const std::string& path, uint64_t store_identity,
                                      uint32_t layers, uint32_t dim, uint32_t hidden) {
  const std::string where = "FFN predictor " + path;
  Result<std::string> text = storage::ReadFileBounded(path, kFfnPredictorBytesMax);
  if (!text.ok()) {
    if (text.status().code() == StatusCode::kNotFound) {
      return NotFoundError(where +
                           " not found: train one first (flashlm train-predictor STORE --text "
                           "FILE --rank R)");
    }
    return text.status().WithContext(where);
  }
  const std::string& f = *text;
  FileHeader h{};
  if (f.size() < sizeof h + sizeof(uint64_t)) return CorruptionError(where + ": truncated");
  std::memcpy(&h, f.data(), sizeof h);
  if (std::memcmp(h.magic, kMagic, sizeof kMagic) != 0) {
    return CorruptionError(where + ": not an FFN predictor file (bad magic)");
  }
  const uint64_t body = f.size() - sizeof(uint64_t);
  uint64_t stored = 0;
  std::memcpy(&stored, f.data() + body, sizeof stored);
  if (storage::Checksum64(ConstByteSpan(reinterpret_cast<const std::byte*>(f.data()), body)) !=
      stored) {
    return CorruptionError(where + " fails its checksum: the file is damaged; train it again");
  }
  if (h.version != kVersion) {
    return NotSupportedError(where + ": version " + std::to_string(h.version) +
                             " (only 1 is supported)");
  }
  if (h.layers == 0 || h.layers > kFfnPredictorLayersMax || h.dim == 0 ||
      h.dim > kFfnPredictorWidthMax || h.hidden == 0 || h.hidden > kFfnPredictorWidthMax ||
      h.rank == 0 || h.rank > kFfnPredictorRankMax || (h.flags & ~kFlagRelu) != 0 ||
      !(h.fire_fraction >= 0 && h.fire_fraction < 1)) {
    return CorruptionError(where + ": header values out of range");
  }
  if (FfnPredictorFileBytes(h.layers, h.dim, h.hidden, h.rank) != f.size()) {
    return CorruptionError(where + ": its size disagrees with the shape it declares");
  }
  if (h.store_identity != store_identity) {
    return InvalidArgumentError(where + " belongs to another store (catalog " +
                                Hex(h.store_identity) + ", this store's is " + Hex(store_identity) +
                                "); train one for this store");
  }
  if (h.layers != layers || h.dim != dim || h.hidden != hidden) {
    return InvalidArgumentError(where + " is for " + std::to_string(h.layers) + " layers of " +
                                std::to_string(h.dim) + " x " + std::to_string(h.hidden) +
                                "; the model has " + std::to_string(layers) + " of " +
                                std::to_string(dim) + " x " + std::to_string(hidden));
  }
  FfnPredictor p;
  p.store_identity = h.store_identity;
  p.dim = h.dim;
  p.hidden = h.hidden;
  p.rank = h.rank;
  p.relu = (h.flags & kFlagRelu) != 0;
  p.fire_fraction = h.fire_fraction;
  p.tokens = h.tokens;
  p.layers.resize(h.layers);
  uint64_t at = sizeof h;
  for (FfnPredictorLayer& l : p.layers) {
    LayerRecord r;
    std::memcpy(&r, f.data() + at, sizeof r);
    at += sizeof r;
    l.fire_cut = r.fire_cut;
    l.recall = r.recall;
    l.precision = r.precision;
    l.predicted_fraction = r.predicted_fraction;
    l.a.resize(uint64_t{p.rank} * p.dim);
    l.b.resize(uint64_t{p.hidden} * p.rank);
    l.bias.resize(p.hidden);
    for (std::vector<float>* v : {&l.a, &l.b, &l.bias}) {
      std::memcpy(v->data(), f.data() + at, v->size() * sizeof(float));
      at += v->size() * sizeof(float);
    }
    if (!Finite(l.a) || !Finite(l.b) || !Finite(l.bias) || !std::isfinite(l.fire_cut) ||
        l.fire_cut < 0 || !Fraction(l.recall) || !Fraction(l.precision) ||
        !Fraction(l.predicted_fraction)) {
      return CorruptionError(where + ": layer " + std::to_string(&l - p.layers.data()) +
                             " has a value out of range");
    }
  }
  return p;
}

bool HoldAsF16(FfnPredictor* p) {
  constexpr float kF16Max = 65504.0f;
  for (const FfnPredictorLayer& l : p->layers) {
    for (const std::vector<float>* m : {&l.a, &l.b}) {
      for (float v : *m) {
        if (!(std::fabs(v) <= kF16Max)) return false;
      }
    }
  }
  for (FfnPredictorLayer& l : p->layers) {
    l.a_f16.resize(l.a.size());
    l.b_f16.resize(l.b.size());
    for (size_t i = 0; i < l.a.size(); ++i) l.a_f16[i] = F32ToF16(l.a[i]);
    for (size_t i = 0; i < l.b.size(); ++i) l.b_f16[i] = F32ToF16(l.b[i]);
    std::vector<float>().swap(l.a);
    std::vector<float>().swap(l.b);
  }
  return true;
}

}  // namespace flashlm::layout
