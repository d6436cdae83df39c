// SystemMemory: the DRAM the machine can give this process now, for `--mem-budget auto`.
//
// Two ceilings, the smaller wins:
//  - MemAvailable from /proc/meminfo (the kernel's estimate of memory usable without swapping,
//    reclaimable page cache included);
//  - the process's memory cgroup (v1 `memory` controller or v2 unified) and each of its ancestors
//    that sets a limit (v1 memory.limit_in_bytes; v2 the smaller of memory.max and memory.high):
//    the limit less the group's usage that is not file cache (usage - active_file -
//    inactive_file, as the kernel would reclaim that cache under the limit). The tightest group
//    is the one reported.
// Read once, at start-up; nothing here is cached or thread-affine. The files are read under
// `root` ("/" on a real machine; a directory laid out like one in tests): root/proc/meminfo,
// root/proc/self/cgroup, root/sys/fs/cgroup/memory/... (v1) and root/sys/fs/cgroup/... (v2). A
// cgroup path that does not exist under the mount (a cgroup namespace) is read from the mount's
// root instead.
#ifndef FLASHLM_STORAGE_SYSTEM_MEMORY_H_
#define FLASHLM_STORAGE_SYSTEM_MEMORY_H_

#include <cstdint>
#include <limits>
#include <string>
#include <string_view>

#include "storage/status.h"

namespace flashlm::storage {

inline constexpr uint64_t kNoLimit = std::numeric_limits<uint64_t>::max();

struct SystemMemory {
  uint64_t mem_available = 0;        // /proc/meminfo MemAvailable, bytes
  uint64_t cgroup_limit = kNoLimit;  // the tightest group's limit; kNoLimit: none sets one
  uint64_t cgroup_room = kNoLimit;   // that group's limit less its non-file usage
  std::string cgroup;                // that group's path under its mount ("" when none)
  uint64_t available() const { return mem_available < cgroup_room ? mem_available : cgroup_room; }
};

// Errors: NotFound when /proc/meminfo cannot be read; Corruption when it has no MemAvailable
// line. Unreadable or malformed cgroup files are taken as "no limit" (the cgroup is optional).
Result<SystemMemory> ReadSystemMemory(const std::string& root = "/");

// MemAvailable of a /proc/meminfo text, in bytes. Corruption when absent or malformed.
Result<uint64_t> ParseMemAvailable(std::string_view meminfo);

}  // namespace flashlm::storage

#endif  // FLASHLM_STORAGE_SYSTEM_MEMORY_H_
