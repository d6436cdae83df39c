#include "engine/speed_bounds.h"

#include <algorithm>
#include <cmath>

namespace flashlm::engine {

double KvValueBytes(layout::DType dtype) {
  switch (dtype) {
    case layout::DType::kF32:
      return 4.0;
    case layout::DType::kF16:
    case layout::DType::kBF16:
      return 2.0;
    case layout::DType::kQ8_0:
      return 34.0 / 32.0;
    case layout::DType::kQ4_0:
      return 18.0 / 32.0;
    default:
      return static_cast<double>(layout::RowBytes(dtype, 256)) / 256.0;
  }
}

double KvCacheBytes(const layout::ModelConfig& c, uint64_t context, double value_bytes,
                    uint64_t sequences) {
  const double kv_width = double(c.n_kv_heads) * double(c.head_dim);
  return 2.0 * value_bytes * double(context) * kv_width * double(c.n_layers) * double(sequences);
}

DecodeCost CostOfToken(const layout::ModelConfig& c, const StoreNeeds& needs,
                       const ResidencyPlan& plan, const CostOptions& o) {
  const ResidencyInputs& in = needs.inputs;
  const layout::BundleGeometry& g = needs.bundles;
  const double f = std::clamp(o.fire_fraction, 1e-6, 1.0);
  const double batch = double(std::max<uint64_t>(o.batch, 1));
  DecodeCost cost;
  double dense = 0;
  for (uint64_t b : in.dense_layer_bytes) dense += double(b);
  // A token touches every attention matrix, the fired share of the FFN, the classifier and one
  // embedding row per sequence.
  const double ffn = double(c.n_layers) * double(c.hidden_dim) * double(g.bundle_bytes) * f;
  const double emb_row = double(layout::RowBytes(layout::DType::kF32, c.dim));
  cost.weight_bytes = dense + ffn +
                      double(in.classifier_bytes ? needs.classifier.tensor_bytes
                                                 : in.embedding_bytes) +
                      emb_row * batch;
  cost.kv_bytes = KvCacheBytes(c, o.context, o.kv_value_bytes, o.batch);

  const double read_max = double(needs.read_max_bytes ? needs.read_max_bytes : 1 << 20);
  auto stream = [](const char* what, bool sequential) {
    FlashStream s;
    s.what = what;
    s.sequential = sequential;
    return s;
  };
  FlashStream att = stream("attention", true);
  att.read_bytes = read_max;
  for (size_t l = 0; l < plan.dense_pinned.size(); ++l) {
    if (!plan.dense_pinned[l]) att.bytes += double(in.dense_layer_bytes[l]);
  }
  uint32_t streamed_layers = 0;
  for (uint8_t pinned : plan.dense_pinned) streamed_layers += pinned ? 0 : 1;
  if (streamed_layers > 0) {
    const double layer = att.bytes / streamed_layers;
    att.read_bytes = std::min(read_max, layer);
    att.depth = std::max(1.0, std::ceil(layer / read_max));
  }
  // Streamed bundles: every one in dense mode, the fired ones in runs otherwise; merged into
  // chunk-sized reads when coalesced, one read per bundle when not.
  FlashStream ffn_stream = stream("FFN bundles", f >= 1.0);
  uint64_t streamed_bundles = 0;
  for (size_t l = 0; l < plan.pinned_bundles.size(); ++l) {
    streamed_bundles += in.layer_bundles[l] - plan.pinned_bundles[l];
  }
  ffn_stream.bytes = double(streamed_bundles) * double(g.stride_bytes) * f;
  const double run = f >= 1.0 ? double(plan.chunk_bundles ? plan.chunk_bundles : 1)
                              : std::min(1.0 / (1.0 - f), double(std::max(plan.chunk_bundles, 1u)));
  ffn_stream.read_bytes =
      needs.coalesced ? std::min(read_max, run * double(g.stride_bytes)) : double(g.stride_bytes);
  const double chunk = double(std::max(plan.chunk_bundles, 1u));
  const double chunk_reads =
      needs.coalesced ? std::max(1.0, std::ceil(chunk * g.stride_bytes * std::min(1.0, f) /
                                                ffn_stream.read_bytes))
                      : chunk;
  ffn_stream.depth = double(std::max(plan.chunk_buffers, 1u)) * chunk_reads;
  ffn_stream.overlapped = f >= 1.0;
  FlashStream cls = stream("classifier", true);
  if (!plan.classifier_resident) {
    cls.bytes = double(needs.classifier.tensor_bytes);
    cls.read_bytes = std::min(read_max, double(needs.classifier.buffer_bytes));
    cls.depth = 2.0 * std::max(1u, needs.classifier.reads_per_block);
  }
  FlashStream emb = stream("embedding rows", false);
  emb.overlapped = false;
  if (!plan.embedding_resident) {
    // One extent per token and sequence (the rows_per_extent rows around the token).
    emb.bytes = double(in.embedding_demand_bytes) * batch;
    emb.read_bytes = std::min(read_max, double(in.embedding_demand_bytes));
  }
  for (FlashStream* s : {&att, &ffn_stream, &cls, &emb}) {
    if (s->bytes > 0) {
      cost.flash_bytes += s->bytes;
      cost.streams.push_back(*s);
    }
  }
  return cost;
}

double BoundTokS(double dram_s, double overlapped_s, double serial_s, bool pipelined,
                 uint64_t batch) {
  const double tokens = double(std::max<uint64_t>(batch, 1));
  const double t = pipelined ? std::max(dram_s, overlapped_s) + serial_s
                             : dram_s + overlapped_s + serial_s;
  return t > 0 ? tokens / t : 0;
}

SpeedBounds BoundSpeed(DecodeCost& cost, double dram_gbps, const storage::FlashProfile* profile,
                       uint64_t batch) {
  SpeedBounds b;
  const double tokens = double(std::max<uint64_t>(batch, 1));
  b.dram_seconds = (cost.weight_bytes + cost.kv_bytes) / (dram_gbps * 1e9);
  b.dram_tok_s = b.dram_seconds > 0 ? tokens / b.dram_seconds : 0;
  if (profile != nullptr && !profile->curves.empty()) {
    for (FlashStream& s : cost.streams) {
      s.mib_per_s = profile->MiBPerSecondAt(s.read_bytes, s.sequential, s.depth);
      const double seconds = s.bytes / (s.mib_per_s * 1048576.0);
      (s.overlapped ? b.flash_overlapped_seconds : b.flash_serial_seconds) += seconds;
    }
  }
  const double flash_s = b.flash_overlapped_seconds + b.flash_serial_seconds;
  b.flash_tok_s = flash_s > 0 ? tokens / flash_s : 0;
  b.tok_s = BoundTokS(b.dram_seconds, b.flash_overlapped_seconds, b.flash_serial_seconds, true,
                      batch);
  b.binding = flash_s > b.dram_seconds ? "flash bandwidth" : "DRAM bandwidth";
  b.serial_tok_s = BoundTokS(b.dram_seconds, b.flash_overlapped_seconds, b.flash_serial_seconds,
                             false, batch);
  return b;
}

}  // namespace flashlm::engine
