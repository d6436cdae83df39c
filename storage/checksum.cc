#include "storage/checksum.h"

#include <fcntl.h>
#include <unistd.h>

// libxxhash's functions compiled into this file: with -march=native XXH3 takes the widest SIMD
// path the machine has (AVX-512 here), where the shared library is built for baseline x86-64
// (SSE2) and hashed at about half the rate (docs/benchmarks.md, "Checksums inline"). The values
// are the same: XXH3 is defined independently of the instruction set.
#define XXH_INLINE_ALL
#include <xxhash.h>

#include <cerrno>
#include <vector>

#include "storage/file.h"

namespace flashlm::storage {

uint64_t Checksum64(ConstByteSpan bytes) {
  return static_cast<uint64_t>(XXH3_64bits(bytes.data(), bytes.size()));
}

Checksum64Stream::Checksum64Stream() : state_(XXH3_createState()) {
  XXH3_64bits_reset(static_cast<XXH3_state_t*>(state_));
}
Checksum64Stream::~Checksum64Stream() { XXH3_freeState(static_cast<XXH3_state_t*>(state_)); }
void Checksum64Stream::Update(ConstByteSpan bytes) {
  XXH3_64bits_update(static_cast<XXH3_state_t*>(state_), bytes.data(), bytes.size());
}
void Checksum64Stream::Reset() { XXH3_64bits_reset(static_cast<XXH3_state_t*>(state_)); }
uint64_t Checksum64Stream::Digest() const {
  return static_cast<uint64_t>(XXH3_64bits_digest(static_cast<XXH3_state_t*>(state_)));
}

Result<uint64_t> ChecksumFile64(const std::string& path) {
  ASSIGN_OR_RETURN(const int fd, OpenRegularFile(path));  // never blocks on a FIFO
  Checksum64Stream hash;
  std::vector<std::byte> buf(1 << 20);  // bytes of the file, in order
  for (;;) {
    ssize_t n = ::read(fd, buf.data(), buf.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      int e = errno;
      ::close(fd);
      return ErrnoError("read " + path, e);
    }
    if (n == 0) break;
    hash.Update(ConstByteSpan(buf.data(), static_cast<size_t>(n)));
  }
  ::close(fd);
  return hash.Digest();
}

}  // namespace flashlm::storage
