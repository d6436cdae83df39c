#include "storage/io_stats.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <ctime>

namespace flashlm::storage {

uint64_t NowNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}

// Values below 2^kSubBucketBits get one bucket each; above, each power of two [2^e, 2^(e+1)) is
// split into 2^kSubBucketBits equal sub-buckets, indexed by the bits below the leading one.
int IoStats::BucketFor(uint64_t v) {
  constexpr uint64_t kSub = 1ull << kSubBucketBits;
  if (v < kSub) return static_cast<int>(v);
  int e = 63 - std::countl_zero(v);  // e >= kSubBucketBits
  uint64_t sub = (v >> (e - kSubBucketBits)) & (kSub - 1);
  return static_cast<int>(((e - kSubBucketBits + 1) << kSubBucketBits) + sub);
}

uint64_t IoStats::BucketLowerBound(int bucket) {
  constexpr int kSub = 1 << kSubBucketBits;
  if (bucket < kSub) return static_cast<uint64_t>(bucket);
  int e = bucket / kSub - 1 + kSubBucketBits;
  uint64_t sub = static_cast<uint64_t>(bucket % kSub);
  return (1ull << e) | (sub << (e - kSubBucketBits));
}

void IoStats::RecordRead(uint64_t bytes, uint64_t latency_ns, uint64_t completed_at_ns) {
  ++reads_;
  bytes_ += bytes;
  latency_min_ns_ = std::min(latency_min_ns_, latency_ns);
  latency_max_ns_ = std::max(latency_max_ns_, latency_ns);
  ++histogram_[BucketFor(latency_ns)];
  last_complete_ns_ = std::max(last_complete_ns_, completed_at_ns);
}

void IoStats::RecordError(uint64_t completed_at_ns) {
  ++errors_;
  last_complete_ns_ = std::max(last_complete_ns_, completed_at_ns);
}

void IoStats::Merge(const IoStats& o) {
  reads_ += o.reads_;
  bytes_ += o.bytes_;
  errors_ += o.errors_;
  retries_ += o.retries_;
  if (o.first_submit_ns_ != 0 && (first_submit_ns_ == 0 || o.first_submit_ns_ < first_submit_ns_)) {
    first_submit_ns_ = o.first_submit_ns_;
  }
  last_complete_ns_ = std::max(last_complete_ns_, o.last_complete_ns_);
  latency_min_ns_ = std::min(latency_min_ns_, o.latency_min_ns_);
  latency_max_ns_ = std::max(latency_max_ns_, o.latency_max_ns_);
  for (int i = 0; i < kBucketCount; ++i) histogram_[i] += o.histogram_[i];
}

uint64_t IoStats::LatencyQuantileNs(double q) const {
  if (reads_ == 0) return 0;
  q = std::clamp(q, 0.0, 1.0);
  // The rank of the wanted sample, 1-based: the smallest r with r >= q * n.
  uint64_t rank = std::max<uint64_t>(1, static_cast<uint64_t>(std::ceil(q * reads_)));
  if (rank >= reads_) return latency_max_ns_;
  uint64_t seen = 0;
  for (int b = 0; b < kBucketCount; ++b) {
    seen += histogram_[b];
    if (seen >= rank) {
      // Report the middle of the bucket, clamped to the observed range.
      uint64_t lo = BucketLowerBound(b);
      uint64_t hi = b + 1 < kBucketCount ? BucketLowerBound(b + 1) : lo;
      uint64_t mid = lo + (hi - lo) / 2;
      return std::clamp(mid, latency_min_ns_, latency_max_ns_);
    }
  }
  return latency_max_ns_;
}

double IoStats::elapsed_seconds() const {
  if (first_submit_ns_ == 0 || last_complete_ns_ <= first_submit_ns_) return 0;
  return static_cast<double>(last_complete_ns_ - first_submit_ns_) * 1e-9;
}

double IoStats::mib_per_s() const {
  double s = elapsed_seconds();
  return s > 0 ? static_cast<double>(bytes_) / (1024.0 * 1024.0) / s : 0;
}

double IoStats::reads_per_s() const {
  double s = elapsed_seconds();
  return s > 0 ? static_cast<double>(reads_) / s : 0;
}

}  // namespace flashlm::storage
