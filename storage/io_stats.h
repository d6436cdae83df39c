// IoStats: counters and a latency histogram for one ReadBackend (or one benchmark point).
//
// Records completed reads (bytes, submit-to-completion latency), errors and internal retries
// (short-read resubmissions, EAGAIN/EINTR). Latencies go into a fixed log-linear histogram
// (16 sub-buckets per power of two, so a percentile is within ~6% of the true value); nothing
// allocates after construction. Throughput is bytes over the wall time from the first submit to
// the last completion since construction or Reset(). Not thread-safe: the backend's owning thread
// records, and readers call the accessors from that same thread.
#ifndef FLASHLM_STORAGE_IO_STATS_H_
#define FLASHLM_STORAGE_IO_STATS_H_

#include <array>
#include <cstdint>

namespace flashlm::storage {

// Monotonic clock in nanoseconds (CLOCK_MONOTONIC).
uint64_t NowNs();

class IoStats {
 public:
  IoStats() = default;

  // A read finished successfully (bytes may be short of the request only at EOF).
  void RecordRead(uint64_t bytes, uint64_t latency_ns, uint64_t completed_at_ns);
  // A request finished with an error status.
  void RecordError(uint64_t completed_at_ns);
  // The backend resubmitted part of a request (short read, EAGAIN, EINTR).
  void RecordRetry() { ++retries_; }
  // A request was submitted at `now_ns`: opens the throughput window if it is not open yet.
  void RecordSubmit(uint64_t now_ns) {
    if (first_submit_ns_ == 0) first_submit_ns_ = now_ns;
  }
  // Adds every counter of `other` into this one (the time window becomes the union).
  void Merge(const IoStats& other);
  void Reset() { *this = IoStats(); }

  uint64_t reads() const { return reads_; }
  uint64_t bytes() const { return bytes_; }
  uint64_t errors() const { return errors_; }
  uint64_t retries() const { return retries_; }

  // Latency at quantile q in [0, 1] (0.5 = median, 0.99 = p99) in nanoseconds; 0 with no reads.
  uint64_t LatencyQuantileNs(double q) const;
  uint64_t latency_max_ns() const { return latency_max_ns_; }
  uint64_t latency_min_ns() const { return reads_ ? latency_min_ns_ : 0; }
  // Wall time from the first submit to the last completion, in seconds (0 before any).
  double elapsed_seconds() const;
  // bytes() / elapsed_seconds() in MiB/s; 0 when no time has passed.
  double mib_per_s() const;
  // reads() / elapsed_seconds().
  double reads_per_s() const;

  // Histogram geometry, public for tests.
  static constexpr int kSubBucketBits = 4;
  static constexpr int kBucketCount = 64 << kSubBucketBits;
  static int BucketFor(uint64_t value_ns);
  // Smallest value that maps to `bucket`.
  static uint64_t BucketLowerBound(int bucket);

 private:
  uint64_t reads_ = 0;
  uint64_t bytes_ = 0;
  uint64_t errors_ = 0;
  uint64_t retries_ = 0;
  uint64_t first_submit_ns_ = 0;
  uint64_t last_complete_ns_ = 0;
  uint64_t latency_min_ns_ = UINT64_MAX;
  uint64_t latency_max_ns_ = 0;
  std::array<uint64_t, kBucketCount> histogram_{};  // [bucket] read count
};

}  // namespace flashlm::storage

#endif  // FLASHLM_STORAGE_IO_STATS_H_
