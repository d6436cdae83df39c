// Read probes: the bandwidth a file gives at one read size and queue depth, measured through a
// ReadBackend (what `flashlm iobench` sweeps), and the profile of such measurements that
// `flashlm plan` predicts flash-bound speed from.
//
// ProbeReads keeps `depth` reads of `block` bytes in flight for `seconds` (random offsets, a
// sequential walk, or random offsets inside one region: the "bundles" pattern) and returns the
// backend's statistics. FlashProfile holds bandwidth against read size at one queue depth, read
// from `iobench --json` output, and interpolates between its points. Plain functions and values;
// thread-compatible.
#ifndef FLASHLM_STORAGE_READ_PROBE_H_
#define FLASHLM_STORAGE_READ_PROBE_H_

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "storage/file.h"
#include "storage/io_stats.h"
#include "storage/read_backend.h"
#include "storage/status.h"

namespace flashlm::storage {

// xorshift64*: fast, seeded, good enough to spread read offsets and fill test files.
struct XorShiftRng {
  uint64_t s;
  explicit XorShiftRng(uint64_t seed) : s(seed * 0x9E3779B97F4A7C15ull + 1) {}
  uint64_t Next() {
    s ^= s >> 12;
    s ^= s << 25;
    s ^= s >> 27;
    return s * 0x2545F4914F6CDD1Dull;
  }
};

enum class ProbePattern { kRandom, kSequential, kRegion };

struct ProbeOptions {
  BackendKind backend = BackendKind::kAuto;
  ProbePattern pattern = ProbePattern::kRandom;
  uint64_t block_bytes = 4096;       // multiple of 4096, at most the file's size
  uint32_t depth = 1;                // reads in flight
  double seconds = 1.0;              // reads are issued until this much time has passed
  uint64_t region_bytes = 256 << 20;  // kRegion: the region's size
  uint64_t seed = 1;
  bool register_buffers = true;  // io_uring fixed buffers
};

struct ProbeResult {
  std::string backend;  // resolved: "uring" or "pread"
  IoStats stats;
};

// Errors: InvalidArgument (block size, depth, a file smaller than one block), IoError (a read
// failed or came back short).
Result<ProbeResult> ProbeReads(const File& file, const ProbeOptions& options);

// Bandwidth against read size and queue depth, for random reads (scattered: what sparse loading
// does) and, where measured, sequential reads (ascending offsets: what streaming a layer or a
// dense FFN chunk after chunk does).
struct FlashCurve {
  uint32_t depth = 0;                                   // reads in flight
  std::vector<std::pair<uint64_t, double>> random;      // (read bytes, MiB/s), increasing bytes
  std::vector<std::pair<uint64_t, double>> sequential;  // the same; may be empty
};

struct FlashProfile {
  std::string source;              // file it came from
  std::vector<FlashCurve> curves;  // increasing depth, each with random points

  // MiB/s for reads of `bytes` with `depth` of them in flight: linear in log(bytes) along a
  // curve, linear in log(depth) between the curves around `depth`, the end values beyond them;
  // sequential reads fall back to a curve's random points when it has none.
  // Precondition: curves not empty.
  double MiBPerSecondAt(double bytes, bool sequential_reads, double depth) const;
  uint32_t depth_max() const { return curves.empty() ? 0 : curves.back().depth; }

  // Reads `iobench --json` output: the direct random and sequential points at every queue depth
  // that has random ones. Errors: NotFound, Corruption (not iobench JSON, or no direct
  // random-read points).
  static Result<FlashProfile> Load(const std::string& path);

  // Measures one on the spot: random and sequential O_DIRECT reads of `path` (an existing file of
  // at least the largest size) at each size and depth for `seconds` each. Errors: ProbeReads'
  // and File's (NotFound, IoError).
  static Result<FlashProfile> Measure(const std::string& path,
                                      const std::vector<uint64_t>& sizes,
                                      const std::vector<uint32_t>& depths, double seconds);
};

// Writes back dirty pages and drops the page cache (sync, then 3 to /proc/sys/vm/drop_caches),
// so that the next reads of a file come from the device. Needs root. Errors: FailedPrecondition
// (not root), IoError.
Status DropPageCache();

}  // namespace flashlm::storage

#endif  // FLASHLM_STORAGE_READ_PROBE_H_
