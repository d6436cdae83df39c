#include "storage/system_memory.h"

#include <charconv>
#include <filesystem>
#include <sstream>
#include <utility>

#include "storage/file.h"

namespace flashlm::storage {
namespace {

// The file's text, at most 1 MiB (these are small kernel files); false when unreadable.
bool ReadSmallFile(const std::filesystem::path& path, std::string* out) {
  Result<std::string> text = ReadFileBounded(path.string(), uint64_t{1} << 20);
  if (!text.ok()) return false;
  *out = std::move(*text);
  return true;
}

bool ParseU64(std::string_view s, uint64_t* v) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.remove_suffix(1);
  while (!s.empty() && s.front() == ' ') s.remove_prefix(1);
  if (s.empty()) return false;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), *v);
  return ec == std::errc() && p == s.data() + s.size();
}

// A one-number cgroup file ("max" in v2 means no limit); kNoLimit when absent or malformed.
uint64_t ReadLimit(const std::filesystem::path& path) {
  std::string text;
  uint64_t v = 0;
  if (!ReadSmallFile(path, &text) || !ParseU64(text, &v)) return kNoLimit;
  // cgroup v1 writes "no limit" as the largest page-aligned signed 64-bit value.
  return v >= (uint64_t{1} << 62) ? kNoLimit : v;
}

// Sum of the named keys of a memory.stat ("key value" lines); 0 for keys not found.
uint64_t StatSum(const std::filesystem::path& path, std::initializer_list<std::string_view> keys) {
  std::string text;
  if (!ReadSmallFile(path, &text)) return 0;
  uint64_t sum = 0;
  std::istringstream lines(text);
  std::string line;
  while (std::getline(lines, line)) {
    const size_t sp = line.find(' ');
    if (sp == std::string::npos) continue;
    const std::string_view key(line.data(), sp);
    for (std::string_view k : keys) {
      uint64_t v = 0;
      if (key == k && ParseU64(std::string_view(line).substr(sp + 1), &v)) sum += v;
    }
  }
  return sum;
}

struct Group {
  uint64_t limit = kNoLimit, room = kNoLimit;
  std::string path;
};

// The tightest group from the process's group (`cg_path` under `mount`) up to the mount's root,
// for one cgroup version.
void Tightest(const std::filesystem::path& mount, const std::string& cg_path, bool v2,
              Group* best) {
  if (!std::filesystem::is_directory(mount)) return;
  std::filesystem::path rel = std::filesystem::path(cg_path).relative_path();
  if (!std::filesystem::is_directory(mount / rel)) {
    rel.clear();  // a cgroup namespace: the mount's root is this process's group
  }
  for (;;) {
    const std::filesystem::path dir = mount / rel;
    uint64_t limit, usage, file;
    if (v2) {
      limit = std::min(ReadLimit(dir / "memory.max"), ReadLimit(dir / "memory.high"));
      usage = ReadLimit(dir / "memory.current");
      file = StatSum(dir / "memory.stat", {"active_file", "inactive_file"});
    } else {
      limit = ReadLimit(dir / "memory.limit_in_bytes");
      usage = ReadLimit(dir / "memory.usage_in_bytes");
      file = StatSum(dir / "memory.stat", {"total_active_file", "total_inactive_file"});
    }
    if (limit != kNoLimit) {
      const uint64_t used = usage == kNoLimit ? 0 : usage - std::min(usage, file);
      const uint64_t room = limit > used ? limit - used : 0;
      if (room < best->room) {
        best->limit = limit;
        best->room = room;
        best->path = (std::filesystem::path("/") / rel).generic_string();
      }
    }
    if (rel.empty()) break;
    rel = rel.parent_path();
  }
}

}  // namespace

Result<uint64_t> ParseMemAvailable(std::string_view meminfo) {
  const size_t at = meminfo.find("MemAvailable:");
  if (at == std::string_view::npos || (at != 0 && meminfo[at - 1] != '\n')) {
    return CorruptionError("/proc/meminfo has no MemAvailable line");
  }
  std::string_view rest = meminfo.substr(at + 13);
  rest = rest.substr(0, rest.find('\n'));
  const size_t kb = rest.rfind("kB");
  if (kb == std::string_view::npos) return CorruptionError("/proc/meminfo: MemAvailable not in kB");
  uint64_t v = 0;
  if (!ParseU64(rest.substr(0, kb), &v) || v > (kNoLimit >> 10)) {
    return CorruptionError("/proc/meminfo: malformed MemAvailable line");
  }
  return v << 10;
}

Result<SystemMemory> ReadSystemMemory(const std::string& root) {
  const std::filesystem::path r(root);
  std::string text;
  if (!ReadSmallFile(r / "proc/meminfo", &text)) {
    return NotFoundError("cannot read " + (r / "proc/meminfo").string());
  }
  SystemMemory m;
  ASSIGN_OR_RETURN(m.mem_available, ParseMemAvailable(text));
  // /proc/self/cgroup: "ID:controllers:path" per hierarchy; v2 is "0::path".
  Group best;
  if (ReadSmallFile(r / "proc/self/cgroup", &text)) {
    std::istringstream lines(text);
    std::string line;
    while (std::getline(lines, line)) {
      const size_t a = line.find(':');
      const size_t b = a == std::string::npos ? a : line.find(':', a + 1);
      if (b == std::string::npos) continue;
      const std::string controllers = line.substr(a + 1, b - a - 1);
      const std::string path = line.substr(b + 1);
      if (path.empty() || path[0] != '/') continue;
      if (controllers.empty()) {
        Tightest(r / "sys/fs/cgroup", path, /*v2=*/true, &best);
      } else {
        std::istringstream names(controllers);
        std::string name;
        while (std::getline(names, name, ',')) {
          if (name == "memory") Tightest(r / "sys/fs/cgroup/memory", path, /*v2=*/false, &best);
        }
      }
    }
  }
  m.cgroup_limit = best.limit;
  m.cgroup_room = best.room;
  m.cgroup = best.path;
  return m;
}

}  // namespace flashlm::storage
