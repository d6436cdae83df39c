#include "storage/read_probe.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <span>
#include <sstream>

#include "storage/buffer_pool.h"

namespace flashlm::storage {
namespace {


}  // namespace

Result<ProbeResult> ProbeReads(const File& file, const ProbeOptions& o) {
  const uint64_t block = o.block_bytes;
  const uint32_t depth = o.depth;
  if (block == 0 || block % 4096 != 0 || depth == 0 || depth > 4096) {
    return InvalidArgumentError("read probe: block must be a positive multiple of 4 KiB and "
                                "depth in [1, 4096]");
  }
  if (file.size_bytes() < block) {
    return InvalidArgumentError("read probe: file " + file.path() + " is smaller than one " +
                                std::to_string(block) + "-byte read");
  }
  ASSIGN_OR_RETURN(BufferPool pool, BufferPool::Create(depth, block, 4096));
  ReadBackendOptions bo;
  bo.queue_depth_max = depth;
  bo.files_max = 1;
  bo.registered_buffers = o.register_buffers ? &pool : nullptr;
  ASSIGN_OR_RETURN(std::unique_ptr<ReadBackend> backend, MakeReadBackend(o.backend, bo));
  ASSIGN_OR_RETURN(uint32_t file_id, backend->RegisterFile(file));

  const uint64_t blocks_in_file = file.size_bytes() / block;
  uint64_t region_blocks = blocks_in_file;
  uint64_t region_first = 0;
  XorShiftRng rng(o.seed);
  if (o.pattern == ProbePattern::kRegion) {
    region_blocks = std::clamp<uint64_t>(o.region_bytes / block, 1, blocks_in_file);
    region_first = rng.Next() % (blocks_in_file - region_blocks + 1);
  }
  uint64_t sequential_next = 0;
  auto next_offset = [&]() -> uint64_t {
    switch (o.pattern) {
      case ProbePattern::kSequential: {
        const uint64_t b = sequential_next;
        sequential_next = (sequential_next + 1) % blocks_in_file;
        return b * block;
      }
      case ProbePattern::kRegion:
        return (region_first + rng.Next() % region_blocks) * block;
      case ProbePattern::kRandom:
        break;
    }
    return (rng.Next() % blocks_in_file) * block;
  };

  std::vector<ReadRequest> batch(depth);    // [depth] requests to submit next
  std::vector<ReadCompletion> done(depth);  // [depth] reaped completions
  for (uint32_t i = 0; i < depth; ++i) {
    batch[i] = ReadRequest{file_id, next_offset(), pool.buffer(i).first(block), i};
  }
  const uint64_t end_ns = NowNs() + static_cast<uint64_t>(o.seconds * 1e9);
  RETURN_IF_ERROR(backend->Submit(batch));
  bool stopping = false;
  while (backend->in_flight() > 0) {
    ASSIGN_OR_RETURN(size_t n, backend->Reap(1, done));
    size_t resubmit = 0;
    if (!stopping && NowNs() >= end_ns) stopping = true;
    for (size_t i = 0; i < n; ++i) {
      if (!done[i].status.ok()) return done[i].status;
      if (done[i].bytes_read != block) {
        return IoError("short read of " + std::to_string(done[i].bytes_read) + " bytes at EOF");
      }
      if (!stopping) {
        const auto b = static_cast<uint32_t>(done[i].tag);
        batch[resubmit++] = ReadRequest{file_id, next_offset(), pool.buffer(b).first(block), b};
      }
    }
    if (resubmit > 0) {
      RETURN_IF_ERROR(backend->Submit(std::span<const ReadRequest>(batch.data(), resubmit)));
    }
  }
  ProbeResult r;
  r.backend = std::string(backend->name());
  r.stats = backend->stats();
  return r;
}

namespace {

double Interpolate(const std::vector<std::pair<uint64_t, double>>& points, double bytes) {
  if (bytes <= static_cast<double>(points.front().first)) return points.front().second;
  if (bytes >= static_cast<double>(points.back().first)) return points.back().second;
  for (size_t i = 1; i < points.size(); ++i) {
    const double x1 = static_cast<double>(points[i].first);
    if (bytes <= x1) {
      const double x0 = static_cast<double>(points[i - 1].first);
      const double t = std::log(bytes / x0) / std::log(x1 / x0);
      return points[i - 1].second + t * (points[i].second - points[i - 1].second);
    }
  }
  return points.back().second;
}

}  // namespace

double FlashProfile::MiBPerSecondAt(double bytes, bool sequential_reads, double depth) const {
  const auto at = [&](const FlashCurve& c) {
    return Interpolate(sequential_reads && !c.sequential.empty() ? c.sequential : c.random, bytes);
  };
  if (depth <= curves.front().depth) return at(curves.front());
  if (depth >= curves.back().depth) return at(curves.back());
  for (size_t i = 1; i < curves.size(); ++i) {
    if (depth <= curves[i].depth) {
      const double d0 = curves[i - 1].depth, d1 = curves[i].depth;
      const double t = std::log(depth / d0) / std::log(d1 / d0);
      return at(curves[i - 1]) + t * (at(curves[i]) - at(curves[i - 1]));
    }
  }
  return at(curves.back());
}

Result<FlashProfile> FlashProfile::Load(const std::string& path) {
  std::ifstream in(path);
  if (!in) return NotFoundError("cannot open flash profile " + path);
  std::stringstream text;
  text << in.rdbuf();
  const nlohmann::json j = nlohmann::json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
  const std::string what = path + " is not `flashlm iobench --json` output";
  if (j.is_discarded() || !j.is_object() || !j.contains("points") || !j["points"].is_array()) {
    return CorruptionError(what);
  }
  // depth -> pattern -> block -> MiB/s
  std::map<uint32_t, std::map<std::string, std::map<uint64_t, double>>> by;
  for (const nlohmann::json& p : j["points"]) {
    if (!p.is_object() || !p.contains("block_bytes") || !p.contains("queue_depth") ||
        !p.contains("mib_per_s") || !p["block_bytes"].is_number_unsigned() ||
        !p["queue_depth"].is_number_unsigned() || !p["mib_per_s"].is_number()) {
      return CorruptionError(what + " (a point lacks block_bytes, queue_depth or mib_per_s)");
    }
    const std::string pattern = p.value("pattern", std::string());
    if ((pattern != "random" && pattern != "sequential") || !p.value("direct", false)) continue;
    const double mibs = p["mib_per_s"].get<double>();
    const uint64_t block = p["block_bytes"].get<uint64_t>();
    const uint32_t depth = p["queue_depth"].get<uint32_t>();
    if (!(mibs > 0) || !std::isfinite(mibs) || block == 0 || depth == 0) continue;
    by[depth][pattern][block] = mibs;  // the last of repeats
  }
  FlashProfile f;
  f.source = path;
  for (auto& [depth, patterns] : by) {
    if (patterns["random"].empty()) continue;
    FlashCurve c;
    c.depth = depth;
    for (const auto& [block, mibs] : patterns["random"]) c.random.emplace_back(block, mibs);
    for (const auto& [block, mibs] : patterns["sequential"]) c.sequential.emplace_back(block, mibs);
    f.curves.push_back(std::move(c));
  }
  if (f.curves.empty()) return CorruptionError(what + " with direct random-read points");
  return f;
}

Result<FlashProfile> FlashProfile::Measure(const std::string& path,
                                           const std::vector<uint64_t>& sizes,
                                           const std::vector<uint32_t>& depths, double seconds) {
  ASSIGN_OR_RETURN(File file, File::OpenForRead(path));
  FlashProfile f;
  f.source = path + " (measured)";
  for (uint32_t depth : depths) {
    FlashCurve c;
    c.depth = depth;
    for (int seq = 0; seq < 2; ++seq) {
      for (uint64_t size : sizes) {
        if (size > file.size_bytes()) continue;
        ProbeOptions o;
        o.pattern = seq ? ProbePattern::kSequential : ProbePattern::kRandom;
        o.block_bytes = size;
        o.depth = depth;
        o.seconds = seconds;
        ASSIGN_OR_RETURN(ProbeResult r, ProbeReads(file, o));
        (seq ? c.sequential : c.random).emplace_back(size, r.stats.mib_per_s());
      }
    }
    if (!c.random.empty()) f.curves.push_back(std::move(c));
  }
  if (f.curves.empty()) {
    return InvalidArgumentError("cannot measure reads on " + path + ": smaller than one read");
  }
  return f;
}

Status DropPageCache() {
  ::sync();
  std::ofstream f("/proc/sys/vm/drop_caches");
  if (!f) {
    return geteuid() == 0 ? IoError("cannot open /proc/sys/vm/drop_caches")
                          : FailedPreconditionError("dropping the page cache needs root");
  }
  f << "3\n";
  f.close();
  if (!f) return IoError("writing /proc/sys/vm/drop_caches failed");
  return Status::Ok();
}

}  // namespace flashlm::storage
