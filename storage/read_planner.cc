#include "storage/read_planner.h"

#include <algorithm>
#include <string>

#include "storage/bytes.h"

namespace flashlm::storage {

Status PlanReads(std::span<const ByteRange> ranges, const PlannerOptions& o, ReadPlan* plan) {
  if (!IsPowerOfTwo(o.alignment_bytes)) {
    return InvalidArgumentError("planner alignment " + std::to_string(o.alignment_bytes) +
                                " is not a power of two");
  }
  if (o.read_max_bytes == 0 || o.read_max_bytes % o.alignment_bytes != 0) {
    return InvalidArgumentError("planner read_max_bytes " + std::to_string(o.read_max_bytes) +
                                " must be a positive multiple of the alignment " +
                                std::to_string(o.alignment_bytes));
  }
  constexpr uint64_t kLimit = uint64_t{1} << 63;
  plan->spans.clear();
  plan->reads.clear();
  plan->locations.assign(ranges.size(), RangeLocation{});
  plan->requested_bytes = 0;
  plan->read_bytes = 0;
  plan->order_scratch.resize(ranges.size());
  for (uint32_t i = 0; i < ranges.size(); ++i) {
    const ByteRange& r = ranges[i];
    if (r.offset_bytes >= kLimit || r.length_bytes >= kLimit - r.offset_bytes) {
      return InvalidArgumentError("range " + std::to_string(i) + " (offset " +
                                  std::to_string(r.offset_bytes) + ", length " +
                                  std::to_string(r.length_bytes) + ") overflows");
    }
    plan->requested_bytes += r.length_bytes;
    plan->order_scratch[i] = i;
  }
  std::sort(plan->order_scratch.begin(), plan->order_scratch.end(), [&](uint32_t a, uint32_t b) {
    return ranges[a].offset_bytes < ranges[b].offset_bytes ||
           (ranges[a].offset_bytes == ranges[b].offset_bytes && a < b);
  });

  // Merge, in offset order, into spans of aligned bytes.
  const uint64_t a = o.alignment_bytes;
  for (uint32_t idx : plan->order_scratch) {
    const ByteRange& r = ranges[idx];
    uint64_t begin = AlignDown(r.offset_bytes, a);
    uint64_t end = AlignUp(r.offset_bytes + r.length_bytes, a);
    if (end == begin && r.length_bytes == 0) end = begin;  // empty: located, no bytes
    bool merge = false;
    if (o.merge && !plan->spans.empty()) {
      PlannedSpan& last = plan->spans.back();
      uint64_t last_end = last.offset_bytes + last.length_bytes;
      merge = begin <= last_end || begin - last_end <= o.gap_max_bytes;
      if (merge && end > last_end) last.length_bytes = end - last.offset_bytes;
    }
    if (!merge) plan->spans.push_back(PlannedSpan{begin, end - begin});
    const PlannedSpan& span = plan->spans.back();
    plan->locations[idx] = RangeLocation{static_cast<uint32_t>(plan->spans.size() - 1),
                                         r.offset_bytes - span.offset_bytes};
  }

  // Split spans into reads of at most read_max_bytes.
  for (uint32_t s = 0; s < plan->spans.size(); ++s) {
    const PlannedSpan& span = plan->spans[s];
    for (uint64_t done = 0; done < span.length_bytes; done += o.read_max_bytes) {
      uint64_t len = std::min(o.read_max_bytes, span.length_bytes - done);
      plan->reads.push_back(PlannedRead{s, span.offset_bytes + done, len, done});
      plan->read_bytes += len;
    }
  }
  return Status::Ok();
}

}  // namespace flashlm::storage
