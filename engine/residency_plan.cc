#include "engine/residency_plan.h"

#include <algorithm>
#include <cstdio>

#include "storage/bytes.h"

namespace flashlm::engine {

namespace {

// The largest level p such that sum over layers of max(floor[l], min(p, cap[l])) <= units
// (floor[l] <= cap[l]; 0 when even the floors exceed units).
uint32_t WaterLevel(const std::vector<uint32_t>& floor, const std::vector<uint32_t>& cap,
                    uint64_t units) {
  auto used = [&](uint64_t level) {
    uint64_t sum = 0;
    for (size_t l = 0; l < cap.size(); ++l) {
      sum += std::max<uint64_t>(floor[l], std::min<uint64_t>(level, cap[l]));
    }
    return sum;
  };
  uint64_t lo = 0, hi = 0;
  for (uint32_t c : cap) hi = std::max<uint64_t>(hi, c);
  if (used(lo) > units) return 0;
  while (lo < hi) {  // invariant: used(lo) <= units
    const uint64_t mid = lo + (hi - lo + 1) / 2;
    if (used(mid) <= units) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  return static_cast<uint32_t>(lo);
}

}  // namespace

Result<ResidencyPlan> PlanResidency(const ResidencyInputs& in) {
  const size_t layers = in.dense_layer_bytes.size();
  if (in.layer_bundles.size() != layers) {
    return InvalidArgumentError("residency plan: layer counts differ");
  }
  if (in.bundle_spacing_bytes == 0 || in.chunk_bundles == 0) {
    return InvalidArgumentError("residency plan: zero bundle spacing or chunk size");
  }
  if (!(in.cache_fraction >= 0 && in.cache_fraction <= 1)) {
    return InvalidArgumentError("residency plan: cache fraction outside [0, 1]");
  }
  ResidencyPlan p;
  p.budget_bytes = in.budget_bytes;
  p.fixed_parts = in.fixed_parts;
  // On demand / streamed only where that needs less DRAM than keeping the tensor resident.
  const bool demand =
      in.embedding_demand_bytes != 0 && in.embedding_demand_bytes < in.embedding_bytes;
  const bool cls_demand =
      in.classifier_demand_bytes != 0 && in.classifier_demand_bytes < in.classifier_bytes;
  const uint64_t base = in.fixed_bytes + (demand ? in.embedding_demand_bytes : in.embedding_bytes);
  p.fixed_bytes = base + (cls_demand ? in.classifier_demand_bytes : in.classifier_bytes);
  p.dense_pinned.assign(layers, 0);
  p.pinned_bundles.assign(layers, 0);
  uint64_t dense_total = 0, dense_max = 0, bundle_total = 0;
  uint32_t bundles_max = 0;
  for (size_t l = 0; l < layers; ++l) {
    dense_total += in.dense_layer_bytes[l];
    dense_max = std::max(dense_max, in.dense_layer_bytes[l]);
    bundle_total += uint64_t{in.layer_bundles[l]} * in.bundle_spacing_bytes;
    bundles_max = std::max(bundles_max, in.layer_bundles[l]);
  }
  p.model_bytes = dense_total + bundle_total;
  const uint64_t dense_stream = std::max(dense_max, in.dense_stream_bytes_max);
  const uint32_t chunk = std::min(in.chunk_bundles, std::max<uint32_t>(bundles_max, 1));
  const uint64_t one_chunk =
      in.chunk_buffer_bytes ? in.chunk_buffer_bytes : uint64_t{chunk} * in.bundle_spacing_bytes;
  const uint32_t buffers_min = std::max<uint32_t>(in.chunk_buffers_min, 1);
  // One allocation of `bytes` as its huge pages make it (storage::AlignedBuffer::ResidentBytes).
  auto on_huge_pages = [&](uint64_t bytes) {
    return in.huge_page_bytes && bytes >= in.huge_page_bytes ? AlignUp(bytes, in.huge_page_bytes)
                                                             : bytes;
  };
  // n chunk buffers as one allocation.
  auto ring = [&](uint64_t n) { return on_huge_pages(n * one_chunk); };
  const uint64_t chunk_bytes = ring(buffers_min);
  // The pinned attention layers as AttentionStream::Open allocates them: one buffer, the layers
  // back to back.
  auto pinned_dense = [&](const std::vector<uint8_t>& pinned) {
    uint64_t bytes = 0;
    for (size_t l = 0; l < layers; ++l) bytes += pinned[l] ? in.dense_layer_bytes[l] : 0;
    return on_huge_pages(bytes);
  };
  const std::vector<uint8_t> every_layer(layers, 1);
  const uint64_t dense_all = pinned_dense(every_layer);
  p.minimum_bytes = p.fixed_bytes + dense_stream + chunk_bytes;
  const uint64_t all =
      in.fixed_bytes + in.embedding_bytes + in.classifier_bytes + dense_all + bundle_total;
  if (in.budget_bytes == 0 || all <= in.budget_bytes) {  // 1. everything resident
    p.fixed_bytes = in.fixed_bytes + in.embedding_bytes + in.classifier_bytes;
    p.dense_pinned = every_layer;
    p.pinned_bundles = in.layer_bundles;
    p.pinned_dense_bytes = dense_all;
    p.pinned_bundle_bytes = bundle_total;
    p.minimum_bytes = std::min(p.minimum_bytes, all);
    return p;
  }
  p.embedding_resident = !demand;
  // The classifier streams only when the budget cannot hold it next to the least buffers.
  if (base + in.classifier_bytes + dense_stream + chunk_bytes <= in.budget_bytes) {
    p.fixed_bytes = base + in.classifier_bytes;
  } else {
    p.classifier_resident = !cls_demand;
  }
  if (in.budget_bytes < p.minimum_bytes) {
    return InvalidArgumentError(
        "memory budget " + FormatBytes(in.budget_bytes) + " is below the minimum of " +
        std::to_string(p.minimum_bytes) + " bytes (" + FormatBytes(p.minimum_bytes) + ": " +
        FormatBytes(p.fixed_bytes) + " always resident (KV cache, activations, " +
        "embedding, classifier, norms) + " + FormatBytes(dense_stream) +
        " for one streamed layer's attention + " + FormatBytes(chunk_bytes) +
        " for one FFN chunk)");
  }
  // 2. Stream FFN chunks: deeper read-ahead first (it raises the read rate more than the same
  // bytes pinned lower the bytes read), keeping room for one streamed dense layer; then pin dense
  // layers in order as far as they fit.
  p.chunk_bundles = chunk;
  p.chunk_stream_bytes = chunk_bytes;
  p.chunk_buffers = buffers_min;
  uint64_t avail = in.budget_bytes - p.fixed_bytes - chunk_bytes;  // >= dense_stream
  while (p.chunk_buffers < in.chunk_buffers &&
         ring(p.chunk_buffers + 1) - p.chunk_stream_bytes + dense_stream <= avail) {
    avail -= ring(p.chunk_buffers + 1) - p.chunk_stream_bytes;
    ++p.chunk_buffers;
    p.chunk_stream_bytes = ring(p.chunk_buffers);
  }
  if (dense_all <= avail) {
    p.dense_pinned = every_layer;
    p.pinned_dense_bytes = dense_all;
  } else {
    p.dense_stream_bytes = dense_stream;
    avail -= dense_stream;
    // As many layers as fit in layer order...
    size_t fit = 0;
    uint64_t fit_bytes = 0;
    std::vector<uint8_t> in_order(layers, 0);
    while (fit < layers) {
      in_order[fit] = 1;
      const uint64_t bytes = pinned_dense(in_order);
      if (bytes > avail) {
        in_order[fit] = 0;
        break;
      }
      fit_bytes = bytes;
      ++fit;
    }
    // ...but the streamed ones spread evenly over the pass (the i-th of s at layer
    // floor((2i + 1) L / 2s)): AttentionStream reads the next streamed layer as soon as the
    // previous one is released, so each read then has the resident layers before it to hide
    // behind, where streamed layers bunched at the end of the pass would each wait for their
    // own. In layer order when the spread set does not fit (layers of unequal sizes).
    const size_t streamed = layers - fit;
    std::vector<uint8_t> spread(layers, 1);
    for (size_t i = 0; i < streamed; ++i) spread[(2 * i + 1) * layers / (2 * streamed)] = 0;
    const uint64_t spread_bytes = pinned_dense(spread);
    if (spread_bytes <= avail) {
      p.dense_pinned = spread;
      p.pinned_dense_bytes = spread_bytes;
    } else {
      p.dense_pinned = in_order;
      p.pinned_dense_bytes = fit_bytes;
    }
  }
  avail -= p.pinned_dense_bytes;
  // 3. The rest pins the first bundles of every layer: the hot sets first, evenly as far as
  // they go, then evenly across layers.
  uint64_t units = avail / in.bundle_spacing_bytes;
  std::vector<uint32_t> hot(layers, 0);
  for (size_t l = 0; l < layers && l < in.layer_hot.size(); ++l) {
    hot[l] = std::min(in.layer_hot[l], in.layer_bundles[l]);
  }
  const std::vector<uint32_t> none(layers, 0);
  const uint32_t hot_level = WaterLevel(none, hot, units);
  std::vector<uint32_t> hot_pinned(layers);
  uint64_t hot_units = 0, unpinned_units = 0;
  for (size_t l = 0; l < layers; ++l) {
    hot_pinned[l] = std::min(hot_level, hot[l]);
    hot_units += hot_pinned[l];
    unpinned_units += in.layer_bundles[l] - hot_pinned[l];
  }
  // The LRU's share of what the hot sets leave (never more slots than bundles left unpinned).
  if (in.cache_fraction > 0 && units > hot_units) {
    const uint64_t cache_units = std::min<uint64_t>(
        static_cast<uint64_t>(in.cache_fraction * static_cast<double>(units - hot_units)),
        std::min<uint64_t>(unpinned_units, UINT32_MAX / 4));
    p.cache_bundles = static_cast<uint32_t>(cache_units);
    p.cache_bytes = cache_units * in.bundle_spacing_bytes;
    units -= cache_units;
  }
  const uint32_t level = WaterLevel(hot_pinned, in.layer_bundles, units);
  for (size_t l = 0; l < layers; ++l) {
    p.pinned_bundles[l] = std::max(hot_pinned[l], std::min(level, in.layer_bundles[l]));
    p.pinned_bundle_bytes += uint64_t{p.pinned_bundles[l]} * in.bundle_spacing_bytes;
    p.pinned_hot += hot_pinned[l];
    p.hot_total += hot[l];
  }
  bool all_bundles = true;
  for (size_t l = 0; l < layers; ++l) all_bundles &= p.pinned_bundles[l] == in.layer_bundles[l];
  if (all_bundles) {
    p.cache_bundles = 0;
    p.cache_bytes = 0;
    p.chunk_stream_bytes = 0;
    p.chunk_bundles = 0;
    p.chunk_buffers = 0;
  }
  return p;
}

std::string ResidencyPlan::Describe() const {
  const size_t layers = dense_pinned.size();
  size_t dense_resident = 0;
  uint64_t bundles = 0;
  for (size_t l = 0; l < layers; ++l) {
    dense_resident += dense_pinned[l];
    bundles += pinned_bundles[l];
  }
  std::string s = "residency plan: budget " +
                  (budget_bytes ? FormatBytes(budget_bytes) : std::string("unlimited")) +
                  ", planned " + FormatBytes(total_bytes()) + " (minimum " +
                  FormatBytes(minimum_bytes) + ")\n";
  s += "  always resident: " + FormatBytes(fixed_bytes) + " (";
  if (fixed_parts.empty()) {
    s += "KV cache, activations, scratch, norms, catalog";
  }
  for (size_t i = 0; i < fixed_parts.size(); ++i) {
    s += (i ? ", " : "") + fixed_parts[i].first + " " + FormatBytes(fixed_parts[i].second);
  }
  s += std::string(embedding_resident ? ", the embedding"
                                      : ", a buffer for embedding rows read on demand") +
       (classifier_resident ? ", the classifier" : ", buffers for the streamed classifier") + ")\n";
  s += "  attention layers resident: " + std::to_string(dense_resident) + "/" +
       std::to_string(layers) + " (" + FormatBytes(pinned_dense_bytes) + ")";
  if (dense_stream_bytes) s += ", streaming buffer " + FormatBytes(dense_stream_bytes);
  uint32_t lo = layers ? pinned_bundles[0] : 0, hi = lo;
  for (size_t l = 0; l < layers; ++l) {
    lo = std::min(lo, pinned_bundles[l]);
    hi = std::max(hi, pinned_bundles[l]);
  }
  s += "\n  FFN bundles resident: " + std::to_string(bundles) + " (" +
       FormatBytes(pinned_bundle_bytes) + ", first " + std::to_string(lo) +
       (hi != lo ? "-" + std::to_string(hi) : std::string()) + " per layer";
  if (hot_total) {
    s += ", " + std::to_string(pinned_hot) + " of the " + std::to_string(hot_total) +
         " hot-set neurons";
  }
  s += ")";
  if (cache_bundles) {
    s += "\n  FFN bundle cache (LRU over streamed bundles): " + std::to_string(cache_bundles) +
         " slots (" + FormatBytes(cache_bytes) + ")";
  }
  if (chunk_stream_bytes) {
    s += ", streaming the rest in chunks of " + std::to_string(chunk_bundles) + " bundles (" +
         std::to_string(chunk_buffers) + " buffers, " + FormatBytes(chunk_stream_bytes) + ")";
  }
  s += "\n  model (layers): " + FormatBytes(model_bytes) + "\n";
  return s;
}

}  // namespace flashlm::engine
