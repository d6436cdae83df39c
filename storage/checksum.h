// Extent checksums: XXH3-64 (libxxhash) over the bytes exactly as stored on flash. Stateless and
// thread-safe. The value is part of the store format: changing the function is a format change.
#ifndef FLASHLM_STORAGE_CHECKSUM_H_
#define FLASHLM_STORAGE_CHECKSUM_H_

#include <cstdint>
#include <string>

#include "storage/bytes.h"
#include "storage/status.h"

namespace flashlm::storage {

// XXH3-64 with seed 0 of `bytes`.
uint64_t Checksum64(ConstByteSpan bytes);

// Streaming XXH3-64 (seed 0): Update() any number of times, then Digest(). Equal to Checksum64 of
// the concatenated input. Owns its hash state; not thread-safe.
class Checksum64Stream {
 public:
  Checksum64Stream();
  ~Checksum64Stream();
  Checksum64Stream(const Checksum64Stream&) = delete;
  Checksum64Stream& operator=(const Checksum64Stream&) = delete;
  void Update(ConstByteSpan bytes);
  uint64_t Digest() const;
  // Starts over (as if just constructed); allocates nothing.
  void Reset();

 private:
  void* state_;  // XXH3_state_t*
};

// Hashes the whole file at `path` with XXH3-64, reading it sequentially in 1 MiB pieces.
// Only regular files (a FIFO is refused, never waited on). Errors: IoError / NotFound /
// InvalidArgument (not a regular file) naming the path.
Result<uint64_t> ChecksumFile64(const std::string& path);

}  // namespace flashlm::storage

#endif  // FLASHLM_STORAGE_CHECKSUM_H_
