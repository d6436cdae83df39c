// ReadPlanner: turns the byte ranges a caller needs into the reads to issue.
//
// Given ranges (any order, may overlap), it (1) widens each to the file's O_DIRECT alignment,
// (2) sorts them and merges neighbours whose gap is at most gap_max_bytes (reading a small gap
// is cheaper than another request: see the read-size curve in DESIGN.md), and (3) splits any
// merged span longer than read_max_bytes into aligned reads of at most that size. The result
// says, for every input range, where its bytes sit: in merged span `span_index`, at
// `offset_in_span_bytes`. A caller reads each span into one contiguous buffer of
// span.length_bytes (its reads land at read.offset_in_span_bytes) and finds each range there.
// It also reports read amplification: bytes read / bytes requested.
// With merge off, step (2) keeps every range in a span of its own.
// PlanReads reuses the vectors of the ReadPlan it is given, so a caller that keeps one plan
// allocates only until the capacities settle. Not thread-safe per ReadPlan.
#ifndef FLASHLM_STORAGE_READ_PLANNER_H_
#define FLASHLM_STORAGE_READ_PLANNER_H_

#include <cstdint>
#include <span>
#include <vector>

#include "storage/status.h"

namespace flashlm::storage {

struct ByteRange {
  uint64_t offset_bytes = 0;
  uint64_t length_bytes = 0;
};

struct PlannerOptions {
  uint64_t alignment_bytes = 4096;     // power of two; 1 = no alignment
  uint64_t gap_max_bytes = 0;          // merge when the aligned gap is <= this
  uint64_t read_max_bytes = 1u << 20;  // multiple of alignment_bytes
  // false: every range is a span of its own (one read per range, however close its neighbours;
  // the small-read case that the read-granularity measurements compare against).
  bool merge = true;
};

// A contiguous, aligned stretch of the file that covers one or more input ranges.
struct PlannedSpan {
  uint64_t offset_bytes = 0;
  uint64_t length_bytes = 0;
};

// One read to issue: part of a span.
struct PlannedRead {
  uint32_t span_index = 0;
  uint64_t offset_bytes = 0;          // in the file
  uint64_t length_bytes = 0;          // <= read_max_bytes, aligned
  uint64_t offset_in_span_bytes = 0;  // where it lands in the span's buffer
};

// Where input range i is found.
struct RangeLocation {
  uint32_t span_index = 0;
  uint64_t offset_in_span_bytes = 0;
};

struct ReadPlan {
  std::vector<PlannedSpan> spans;
  std::vector<PlannedRead> reads;
  std::vector<RangeLocation> locations;  // [input range] in input order
  uint64_t requested_bytes = 0;          // sum of input lengths (overlaps counted twice)
  uint64_t read_bytes = 0;               // sum of read lengths
  // read_bytes / requested_bytes (1 when nothing was requested).
  double amplification() const {
    return requested_bytes == 0
               ? 1.0
               : static_cast<double>(read_bytes) / static_cast<double>(requested_bytes);
  }
  std::vector<uint32_t> order_scratch;  // internal: range indices sorted by offset
};

// Fills `plan` (cleared first). Empty ranges are located at their span but add no read.
// Errors: InvalidArgument (alignment not a power of two, read_max_bytes zero or not a multiple
// of the alignment, a range whose end overflows 2^63).
Status PlanReads(std::span<const ByteRange> ranges, const PlannerOptions& options, ReadPlan* plan);

}  // namespace flashlm::storage

#endif  // FLASHLM_STORAGE_READ_PLANNER_H_
