// FaultInjector: a seeded source of I/O faults for tests and for the fault-injecting backend.
//
// Backends consult it after each read system call (or its io_uring completion) through
// FilterResult(), which may turn a successful result into a short read, -EAGAIN, -EINTR or -EIO,
// or sleep first (a slow device). After a request completes successfully the backend calls
// MaybeFlipBit(), which may flip one bit of the destination (media corruption, which only a
// checksum above the backend can catch). Every fault is counted. Rates are probabilities per
// call; faults_max bounds the total so that a test can inject exactly N faults.
// Thread-safe (the pread backend's workers call it concurrently); must outlive the backends
// that use it.
#ifndef FLASHLM_STORAGE_FAULT_INJECTOR_H_
#define FLASHLM_STORAGE_FAULT_INJECTOR_H_

#include <cstdint>
#include <mutex>
#include <random>

#include "storage/bytes.h"

namespace flashlm::storage {

struct FaultConfig {
  uint64_t seed = 1;
  double short_read_rate = 0;  // a successful syscall reports fewer bytes than it read
  double eagain_rate = 0;      // ... reports -EAGAIN instead
  double eintr_rate = 0;       // ... reports -EINTR instead
  double eio_rate = 0;         // ... reports -EIO instead: the request fails
  double delay_rate = 0;       // sleep delay_us before reporting
  uint32_t delay_us = 0;
  double bit_flip_rate = 0;          // per successful request: flip one random bit of the data
  uint64_t faults_max = UINT64_MAX;  // total faults of all kinds (delays excluded)
};

struct FaultCounts {
  uint64_t short_reads = 0;
  uint64_t eagains = 0;
  uint64_t eintrs = 0;
  uint64_t eios = 0;
  uint64_t delays = 0;
  uint64_t bit_flips = 0;
  uint64_t total() const { return short_reads + eagains + eintrs + eios + bit_flips; }
};

class FaultInjector {
 public:
  explicit FaultInjector(const FaultConfig& config);

  // `result` is what a read syscall of `length_bytes` returned (bytes, or -errno). Returns the
  // result the backend must act on. A short read keeps the result a positive multiple of
  // `granularity_bytes` (the O_DIRECT alignment, 1 for buffered files) so that the remainder is
  // still a valid request; reads of one granule are never shortened.
  int64_t FilterResult(uint64_t length_bytes, uint64_t granularity_bytes, int64_t result);
  // For a request that completed OK: sleeps (delay_rate) and returns true when it must fail
  // instead (eio_rate). Used by FaultBackend, which has no system call to filter.
  bool MaybeFailRequest();
  // May flip one bit of data; returns whether it did.
  bool MaybeFlipBit(ByteSpan data);

  FaultCounts counts() const;

 private:
  bool Roll(double rate);  // caller holds mu_

  FaultConfig config_;
  mutable std::mutex mu_;
  std::mt19937_64 rng_;
  FaultCounts counts_;
};

}  // namespace flashlm::storage

#endif  // FLASHLM_STORAGE_FAULT_INJECTOR_H_
