// `flashlm iobench`: measures read bandwidth, IOPS and latency of the storage backends over a
// sweep of block size x queue depth x pattern x backend x O_DIRECT, on one test file, optionally
// next to fio on the same file in the same run (--fio), so that the physical limit stands in the
// same table. Creates its test file (random bytes, not sparse) when it is missing.
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "storage/aligned_buffer.h"
#include "storage/buffer_pool.h"
#include "storage/file.h"
#include "storage/logging.h"
#include "storage/read_backend.h"
#include "storage/read_probe.h"
#include "tools/cli_util.h"
#include "tools/commands.h"

namespace flashlm::tools {
namespace {

using storage::BackendKind;
using storage::BufferPool;
using storage::File;
using storage::ReadBackend;
using storage::ReadCompletion;
using storage::ReadRequest;

constexpr char kCommand[] = "iobench";

struct Flags {
  std::string file;
  std::string file_size = "4G";
  std::string sizes = "4K,8K,16K,32K,64K,128K,256K,512K,1M,2M,4M";
  std::string depths = "1,4,16,64";
  std::string patterns = "random";
  std::string backends = "auto";
  std::string region = "256M";
  bool direct = false;
  bool buffered = false;
  double seconds = 2.0;
  std::string csv, json, plot;
  bool fio = false;
  bool quick = false;
  uint64_t seed = 1;
  uint32_t repeat = 1;
  bool no_register_buffers = false;
};

enum class Pattern { kRandom, kSequential, kBundles };

struct Point {
  std::string backend;  // resolved: "uring" or "pread"
  std::string pattern;
  bool direct = true;
  uint64_t block_bytes = 0;
  uint32_t queue_depth = 0;
  double seconds = 0;
  uint64_t reads = 0;
  uint64_t bytes = 0;
  double mib_per_s = 0;
  double iops = 0;
  double p50_us = 0;
  double p99_us = 0;
  std::optional<double> fio_mib_per_s;
  std::optional<double> fio_p99_us;
  std::optional<double> ratio;  // median over repeats of mib_per_s / fio_mib_per_s
  uint32_t runs = 1;            // repeats the medians are taken over
  uint64_t retries = 0;         // resubmissions inside the backend (short reads, EAGAIN)
};


Result<std::vector<uint32_t>> ParseDepths(const std::string& text) {
  std::vector<uint32_t> out;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    char* end = nullptr;
    errno = 0;
    unsigned long v = std::strtoul(item.c_str(), &end, 10);
    if (item.empty() || *end != '\0' || errno != 0 || v == 0 || v > 4096) {
      return InvalidArgumentError("bad queue depth '" + item + "' (expected 1..4096)");
    }
    out.push_back(static_cast<uint32_t>(v));
  }
  if (out.empty()) return InvalidArgumentError("--depths is empty");
  return out;
}

Result<std::vector<std::string>> ParseNames(const std::string& text, const char* what,
                                            std::initializer_list<const char*> allowed) {
  std::vector<std::string> out;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    bool ok = false;
    for (const char* a : allowed) ok = ok || item == a;
    if (!ok) {
      std::string choices;
      for (const char* a : allowed) choices += std::string(choices.empty() ? "" : ", ") + a;
      return InvalidArgumentError("unknown " + std::string(what) + " '" + item + "' (choose " +
                                  choices + ")");
    }
    out.push_back(item);
  }
  if (out.empty()) return InvalidArgumentError(std::string("no ") + what + " given");
  return out;
}

std::string DefaultFile(bool quick) {
  std::string name = quick ? "iobench-quick.dat" : "iobench.dat";
  if (std::filesystem::is_directory("build")) return "build/" + name;
  return "/var/tmp/flashlm-" + name;
}

// Writes `size_bytes` of random bytes to `path` (via path.tmp and a rename, so that an
// interrupted run leaves no truncated file behind), with O_DIRECT where the filesystem allows.
Status CreateTestFile(const std::string& path, uint64_t size_bytes, uint64_t seed) {
  std::string tmp = path + ".tmp";
  ASSIGN_OR_RETURN(File f, File::Create(tmp));
  constexpr uint64_t kChunk = 8u << 20;
  ASSIGN_OR_RETURN(storage::AlignedBuffer buf, storage::AlignedBuffer::Allocate(kChunk, 4096));
  auto* words = reinterpret_cast<uint64_t*>(buf.data());  // [kChunk / 8] random words
  storage::XorShiftRng rng(seed ^ 0xF11E);
  bool tty = isatty(STDERR_FILENO);
  uint64_t start = storage::NowNs();
  for (uint64_t done = 0; done < size_bytes;) {
    for (uint64_t i = 0; i < kChunk / 8; ++i) words[i] = rng.Next();
    uint64_t n = std::min(kChunk, size_bytes - done);
    if (f.is_direct() && n % f.alignment_bytes() != 0) {
      // The unaligned tail goes through a buffered descriptor.
      FILE* raw = std::fopen(tmp.c_str(), "r+b");
      if (raw == nullptr) return ErrnoError("open " + tmp, errno);
      bool ok = std::fseek(raw, static_cast<long>(done), SEEK_SET) == 0 &&
                std::fwrite(buf.data(), 1, n, raw) == n;
      ok = (std::fclose(raw) == 0) && ok;
      if (!ok) return IoError("write " + tmp + ": short write");
    } else {
      RETURN_IF_ERROR(f.WriteAt(done, buf.span().first(n)));
    }
    done += n;
    if (tty || done == size_bytes) {
      std::fprintf(stderr, "%screating %s: %s of %s", tty ? "\r" : "", path.c_str(),
                   FormatBytes(done).c_str(), FormatBytes(size_bytes).c_str());
    }
  }
  RETURN_IF_ERROR(f.Sync());
  double s = static_cast<double>(storage::NowNs() - start) * 1e-9;
  std::fprintf(stderr, " (%.1f s)\n", s);
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    return ErrnoError("rename " + tmp + " to " + path, errno);
  }
  return Status::Ok();
}

// Runs one point: keeps `depth` reads of `block` bytes in flight for `seconds`, then drains.
Result<Point> RunPoint(const File& file, BackendKind kind, Pattern pattern, uint64_t block,
                       uint32_t depth, double seconds, uint64_t region_bytes, uint64_t seed,
                       bool register_buffers) {
  storage::ProbeOptions o;
  o.backend = kind;
  o.pattern = pattern == Pattern::kSequential ? storage::ProbePattern::kSequential
              : pattern == Pattern::kBundles  ? storage::ProbePattern::kRegion
                                              : storage::ProbePattern::kRandom;
  o.block_bytes = block;
  o.depth = depth;
  o.seconds = seconds;
  o.region_bytes = region_bytes;
  o.seed = seed;
  o.register_buffers = register_buffers;
  ASSIGN_OR_RETURN(storage::ProbeResult r, storage::ProbeReads(file, o));
  const storage::IoStats& st = r.stats;
  Point p;
  p.backend = r.backend;
  p.block_bytes = block;
  p.queue_depth = depth;
  p.direct = file.is_direct();
  p.seconds = st.elapsed_seconds();
  p.reads = st.reads();
  p.retries = st.retries();
  p.bytes = st.bytes();
  p.mib_per_s = st.mib_per_s();
  p.iops = st.reads_per_s();
  p.p50_us = static_cast<double>(st.LatencyQuantileNs(0.5)) * 1e-3;
  p.p99_us = static_cast<double>(st.LatencyQuantileNs(0.99)) * 1e-3;
  return p;
}

// Runs fio with io_uring on the same file and point, registering the file and (when flashlm
// does) the buffers, so that both sides issue the same kind of request. Errors: Internal (fio
// failed or its output did not parse).
Result<std::pair<double, double>> RunFio(const File& file, Pattern pattern, uint64_t block,
                                         uint32_t depth, bool direct, double seconds,
                                         uint64_t region_bytes, bool fixed_buffers) {
  uint64_t size = file.size_bytes() / block * block;
  uint64_t offset = 0;
  if (pattern == Pattern::kBundles) {
    size = std::clamp<uint64_t>(region_bytes / block, 1, file.size_bytes() / block) * block;
  }
  std::ostringstream cmd;
  cmd << "fio --name=iobench --filename='" << file.path() << "' --readonly"
      << " --rw=" << (pattern == Pattern::kSequential ? "read" : "randread") << " --bs=" << block
      << " --iodepth=" << depth << " --ioengine=io_uring --registerfiles"
      << (fixed_buffers ? " --fixedbufs" : "") << " --direct=" << (direct ? 1 : 0)
      << " --offset=" << offset << " --size=" << size
      << " --runtime=" << std::max(1, static_cast<int>(std::lround(seconds)))
      << " --time_based --norandommap --randrepeat=0 --output-format=json 2>/dev/null";
  FILE* pipe = popen(cmd.str().c_str(), "r");
  if (pipe == nullptr) return InternalError("cannot run fio");
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, pipe)) > 0) out.append(buf, n);
  int rc = pclose(pipe);
  if (rc != 0) return InternalError("fio failed (exit " + std::to_string(rc) + "): " + cmd.str());
  // fio may print warnings before the JSON object.
  size_t brace = out.find('{');
  if (brace == std::string::npos) return InternalError("fio printed no JSON");
  nlohmann::json j = nlohmann::json::parse(out.substr(brace), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.contains("jobs") || j["jobs"].empty()) {
    return InternalError("cannot parse fio's JSON output");
  }
  const auto& read = j["jobs"][0]["read"];
  double mib = read.value("bw_bytes", 0.0) / (1024.0 * 1024.0);
  double p99 = 0;
  if (read.contains("clat_ns") && read["clat_ns"].contains("percentile")) {
    p99 = read["clat_ns"]["percentile"].value("99.000000", 0.0) * 1e-3;
  }
  return std::make_pair(mib, p99);
}

std::string Ratio(const Point& p) {
  if (!p.ratio) return "";
  char b[32];
  std::snprintf(b, sizeof b, "%.3f", *p.ratio);
  return b;
}

void PrintTable(const std::vector<Point>& points, bool with_fio) {
  std::printf("%-7s %-10s %-6s %9s %5s %10s %10s %9s %9s", "backend", "pattern", "direct", "block",
              "QD", "MiB/s", "IOPS", "p50 us", "p99 us");
  if (with_fio) std::printf(" %10s %7s", "fio MiB/s", "ratio");
  std::printf("\n");
  for (const Point& p : points) {
    std::printf("%-7s %-10s %-6s %9s %5u %10.1f %10.0f %9.1f %9.1f", p.backend.c_str(),
                p.pattern.c_str(), p.direct ? "yes" : "no", FormatBytes(p.block_bytes).c_str(),
                p.queue_depth, p.mib_per_s, p.iops, p.p50_us, p.p99_us);
    if (with_fio) {
      if (p.fio_mib_per_s) {
        std::printf(" %10.1f %7s", *p.fio_mib_per_s, Ratio(p).c_str());
      } else {
        std::printf(" %10s %7s", "-", "-");
      }
    }
    std::printf("\n");
  }
  std::fflush(stdout);
}

Status WriteCsv(const std::string& path, const std::vector<Point>& points, bool with_fio) {
  std::ostringstream out;
  out << "backend,pattern,block_bytes,queue_depth,mib_per_s,iops,p50_us,p99_us,direct,seconds,"
         "reads,bytes,runs";
  if (with_fio) out << ",fio_mib_per_s,ratio,fio_p99_us";
  out << "\n";
  for (const Point& p : points) {
    char line[512];
    std::snprintf(
        line, sizeof line, "%s,%s,%llu,%u,%.2f,%.1f,%.2f,%.2f,%d,%.3f,%llu,%llu,%u",
        p.backend.c_str(), p.pattern.c_str(), static_cast<unsigned long long>(p.block_bytes),
        p.queue_depth, p.mib_per_s, p.iops, p.p50_us, p.p99_us, p.direct ? 1 : 0, p.seconds,
        static_cast<unsigned long long>(p.reads), static_cast<unsigned long long>(p.bytes), p.runs);
    out << line;
    if (with_fio) {
      if (p.fio_mib_per_s) {
        std::snprintf(line, sizeof line, ",%.2f,%s,%.2f", *p.fio_mib_per_s, Ratio(p).c_str(),
                      p.fio_p99_us.value_or(0));
        out << line;
      } else {
        out << ",,,";
      }
    }
    out << "\n";
  }
  return storage::WriteFileAtomically(path, AsBytes(out.str()));
}

Status WriteJson(const std::string& path, const std::string& file, uint64_t file_bytes,
                 const std::vector<Point>& points) {
  nlohmann::json j;
  j["file"] = file;
  j["file_bytes"] = file_bytes;
  j["points"] = nlohmann::json::array();
  for (const Point& p : points) {
    nlohmann::json o = {{"backend", p.backend},
                        {"pattern", p.pattern},
                        {"direct", p.direct},
                        {"block_bytes", p.block_bytes},
                        {"queue_depth", p.queue_depth},
                        {"seconds", p.seconds},
                        {"reads", p.reads},
                        {"bytes", p.bytes},
                        {"mib_per_s", p.mib_per_s},
                        {"iops", p.iops},
                        {"p50_us", p.p50_us},
                        {"p99_us", p.p99_us},
                        {"runs", p.runs},
                        {"retries", p.retries}};
    if (p.fio_mib_per_s) {
      o["fio_mib_per_s"] = *p.fio_mib_per_s;
      if (p.ratio) o["ratio"] = *p.ratio;
    }
    j["points"].push_back(o);
  }
  return storage::WriteFileAtomically(path, AsBytes(j.dump(2) + "\n"));
}

// Bandwidth against block size, one line per (backend, pattern, direct, queue depth), plus
// fio's lines when measured.
Status WritePlot(const std::string& path, const std::vector<Point>& points) {
  ASSIGN_OR_RETURN(const std::string terminal, GnuplotTerminal(path));
  std::map<std::string, std::vector<std::pair<uint64_t, double>>> series;
  for (const Point& p : points) {
    std::string key = p.backend + " " + p.pattern + (p.direct ? "" : " buffered") + " QD" +
                      std::to_string(p.queue_depth);
    series[key].emplace_back(p.block_bytes, p.mib_per_s);
    if (p.fio_mib_per_s) {
      series["fio " + p.pattern + (p.direct ? "" : " buffered") + " QD" +
             std::to_string(p.queue_depth)]
          .emplace_back(p.block_bytes, *p.fio_mib_per_s);
    }
  }
  std::string data_path = path + ".dat";
  std::string script_path = path + ".gp";
  {
    std::ostringstream data;
    for (auto& [name, pts] : series) {
      std::sort(pts.begin(), pts.end());
      pts.erase(
          std::unique(pts.begin(), pts.end(), [](auto& a, auto& b) { return a.first == b.first; }),
          pts.end());
      data << "# " << name << "\n";
      for (auto& [x, y] : pts) data << x / 1024.0 << " " << y << "\n";
      data << "\n\n";
    }
    std::ostringstream gp;
    gp << "set terminal " << terminal << "\nset output '" << path << "'\n"
       << "set title 'flashlm iobench: read bandwidth'\n"
       << "set xlabel 'block size (KiB)'\nset ylabel 'MiB/s'\nset logscale x 2\n"
       << "set key left top\nset grid\n";
    gp << "plot ";
    int i = 0;
    for (auto& [name, pts] : series) {
      gp << (i ? ", " : "") << "'" << data_path << "' index " << i << " using 1:2 with linespoints "
         << (name.rfind("fio", 0) == 0 ? "dt 2 " : "") << "title '" << name << "'";
      ++i;
    }
    gp << "\n";
    RETURN_IF_ERROR(storage::WriteFileAtomically(data_path, AsBytes(data.str())));
    RETURN_IF_ERROR(storage::WriteFileAtomically(script_path, AsBytes(gp.str())));
  }
  std::string cmd = "gnuplot '" + script_path + "'";
  int rc = std::system(cmd.c_str());
  std::filesystem::remove(data_path);
  std::filesystem::remove(script_path);
  if (rc != 0) return InternalError("gnuplot failed (is gnuplot installed?) writing " + path);
  return Status::Ok();
}

bool FioAvailable() { return std::system("fio --version >/dev/null 2>&1") == 0; }

int Run(Flags flags, bool file_size_given, bool sizes_given, bool depths_given,
        bool seconds_given) {
  if (flags.quick) {
    if (!file_size_given) flags.file_size = "1G";
    if (!sizes_given) flags.sizes = "4K,64K,1M";
    if (!depths_given) flags.depths = "1,32";
    if (!seconds_given) flags.seconds = 1.0;
  }
  if (flags.file.empty()) flags.file = DefaultFile(flags.quick);
  auto file_size = ParseSize(flags.file_size);
  if (!file_size.ok()) return ReportError(kCommand, file_size.status().WithContext("--file-size"));
  auto sizes = ParseSizeList(flags.sizes);
  if (!sizes.ok()) return ReportError(kCommand, sizes.status().WithContext("--sizes"));
  auto depths = ParseDepths(flags.depths);
  if (!depths.ok()) return ReportError(kCommand, depths.status().WithContext("--depths"));
  auto patterns = ParseNames(flags.patterns, "pattern", {"random", "sequential", "bundles"});
  if (!patterns.ok()) return ReportError(kCommand, patterns.status());
  auto backends = ParseNames(flags.backends, "backend", {"auto", "uring", "pread"});
  if (!backends.ok()) return ReportError(kCommand, backends.status());
  auto region = ParseSize(flags.region);
  if (!region.ok()) return ReportError(kCommand, region.status().WithContext("--region"));
  if (!(flags.seconds > 0 && flags.seconds <= 3600)) {
    return ReportError(kCommand, InvalidArgumentError("--seconds must be in (0, 3600]"));
  }
  for (uint64_t s : *sizes) {
    if (s == 0 || s % 4096 != 0 || s > (256u << 20)) {
      return ReportError(kCommand,
                         InvalidArgumentError("--sizes: block size " + std::to_string(s) +
                                              " must be a multiple of 4 KiB, at most 256 MiB"));
    }
  }
  uint64_t size_max = *std::max_element(sizes->begin(), sizes->end());
  for (uint32_t d : *depths) {
    if (static_cast<uint64_t>(d) * size_max > (4ull << 30)) {
      return ReportError(kCommand, InvalidArgumentError("--depths x --sizes needs over 4 GiB "
                                                        "of buffers"));
    }
  }
  if (!flags.plot.empty()) {
    std::string ext = std::filesystem::path(flags.plot).extension().string();
    if (ext != ".svg" && ext != ".png") {
      return ReportError(
          kCommand, InvalidArgumentError("--plot " + flags.plot + ": use a .svg or .png name"));
    }
  }
  bool with_fio = flags.fio;
  if (with_fio && !FioAvailable()) {
    std::fprintf(stderr, "flashlm iobench: --fio given but fio is not installed; skipping fio\n");
    with_fio = false;
  }
  std::vector<bool> directs;
  if (flags.direct || !flags.buffered) directs.push_back(true);
  if (flags.buffered) directs.push_back(false);

  // The test file: created when missing (never overwritten when it exists).
  std::error_code ec;
  if (!std::filesystem::exists(flags.file, ec)) {
    if (*file_size == 0) {
      return ReportError(kCommand, InvalidArgumentError("--file-size must be positive"));
    }
    auto parent = std::filesystem::path(flags.file).parent_path();
    if (!parent.empty() && !std::filesystem::is_directory(parent, ec)) {
      return ReportError(
          kCommand, NotFoundError("directory " + parent.string() + " does not exist (for --file " +
                                  flags.file + ")"));
    }
    Status s = CreateTestFile(flags.file, *file_size, flags.seed);
    if (!s.ok()) return ReportError(kCommand, s);
  }

  std::vector<Point> points;
  size_t total =
      directs.size() * backends->size() * patterns->size() * sizes->size() * depths->size();
  size_t index = 0;
  bool tty = isatty(STDERR_FILENO);
  for (bool direct : directs) {
    auto opened = File::OpenForRead(flags.file, {.direct = direct});
    if (!opened.ok()) return ReportError(kCommand, opened.status());
    File file = std::move(opened).value();
    if (direct && !file.is_direct()) {
      std::fprintf(stderr, "flashlm iobench: %s: O_DIRECT refused; measuring buffered reads\n",
                   flags.file.c_str());
    }
    if (file.size_bytes() != *file_size && file_size_given) {
      std::fprintf(stderr, "flashlm iobench: using existing %s of %s (not --file-size %s)\n",
                   flags.file.c_str(), FormatBytes(file.size_bytes()).c_str(),
                   FormatBytes(*file_size).c_str());
    }
    for (uint64_t s : *sizes) {
      if (s > file.size_bytes()) {
        return ReportError(
            kCommand, InvalidArgumentError(flags.file + " (" + FormatBytes(file.size_bytes()) +
                                           ") is smaller than the block size " + FormatBytes(s)));
      }
    }
    for (const std::string& backend_name : *backends) {
      BackendKind kind = *storage::ParseBackendKind(backend_name);
      for (const std::string& pattern_name : *patterns) {
        Pattern pattern = pattern_name == "random"       ? Pattern::kRandom
                          : pattern_name == "sequential" ? Pattern::kSequential
                                                         : Pattern::kBundles;
        for (uint64_t block : *sizes) {
          for (uint32_t depth : *depths) {
            ++index;
            std::fprintf(stderr, "%s[%zu/%zu] %s %s %s QD%u ...", tty ? "\r\033[K" : "", index,
                         total, backend_name.c_str(), pattern_name.c_str(),
                         FormatBytes(block).c_str(), depth);
            std::fflush(stderr);
            // Each repeat runs flashlm, then fio, back to back, so that both see the same
            // background load; the point reports medians over the repeats.
            std::vector<Point> runs;
            std::vector<double> fio_mib, fio_p99, ratios;
            for (uint32_t rep = 0; rep < flags.repeat; ++rep) {
              auto p = RunPoint(file, kind, pattern, block, depth, flags.seconds, *region,
                                flags.seed + index * 1000 + rep, !flags.no_register_buffers);
              if (!p.ok()) {
                std::fprintf(stderr, "\n");
                return ReportError(kCommand, p.status());
              }
              std::fprintf(stderr, " %.1f", p->mib_per_s);
              if (with_fio) {
                auto f = RunFio(file, pattern, block, depth, file.is_direct(), flags.seconds,
                                *region, !flags.no_register_buffers);
                if (!f.ok()) {
                  std::fprintf(stderr, "\n");
                  return ReportError(kCommand, f.status());
                }
                fio_mib.push_back(f->first);
                fio_p99.push_back(f->second);
                if (f->first > 0) ratios.push_back(p->mib_per_s / f->first);
                std::fprintf(stderr, "/fio %.1f", f->first);
              }
              std::fflush(stderr);
              runs.push_back(std::move(p).value());
            }
            Point p = runs.back();
            p.pattern = pattern_name;
            p.runs = flags.repeat;
            auto field = [&](double Point::*m) {
              std::vector<double> v;
              for (const Point& r : runs) v.push_back(r.*m);
              return Median(std::move(v));
            };
            p.mib_per_s = field(&Point::mib_per_s);
            p.iops = field(&Point::iops);
            p.p50_us = field(&Point::p50_us);
            p.p99_us = field(&Point::p99_us);
            p.seconds = field(&Point::seconds);
            p.reads = 0;
            p.bytes = 0;
            for (const Point& r : runs) {  // totals over all repeats
              p.reads += r.reads;
              p.bytes += r.bytes;
              p.retries += r.retries;
            }
            if (with_fio) {
              p.fio_mib_per_s = Median(fio_mib);
              p.fio_p99_us = Median(fio_p99);
              p.ratio = Median(ratios);
            }
            std::fprintf(stderr, " MiB/s");
            std::fprintf(stderr, tty ? "" : "\n");
            points.push_back(std::move(p));
          }
        }
      }
    }
  }
  if (tty) std::fprintf(stderr, "\r\033[K");
  std::printf("file %s (%s)\n", flags.file.c_str(),
              FormatBytes(std::filesystem::file_size(flags.file, ec)).c_str());
  PrintTable(points, with_fio);
  if (!flags.csv.empty()) {
    Status s = WriteCsv(flags.csv, points, with_fio);
    if (!s.ok()) return ReportError(kCommand, s);
  }
  if (!flags.json.empty()) {
    Status s =
        WriteJson(flags.json, flags.file, std::filesystem::file_size(flags.file, ec), points);
    if (!s.ok()) return ReportError(kCommand, s);
  }
  if (!flags.plot.empty()) {
    Status s = WritePlot(flags.plot, points);
    if (!s.ok()) return ReportError(kCommand, s);
  }
  return kExitOk;
}

}  // namespace

CommandRunner RegisterIobench(CLI::App& app) {
  CLI::App* cmd = app.add_subcommand(
      "iobench",
      "Measure read bandwidth/IOPS/latency: block size x queue depth x pattern x "
      "backend, optionally against fio on the same file");
  auto flags = std::make_shared<Flags>();
  cmd->add_option("--file", flags->file,
                  "Test file; created with random bytes when missing (default build/iobench.dat "
                  "or /var/tmp)");
  auto* file_size = cmd->add_option("--file-size", flags->file_size,
                                    "Size of the test file when it is created (default 4G)");
  auto* sizes = cmd->add_option("--sizes", flags->sizes,
                                "Block sizes, comma-separated, K/M/G suffixes (default 4K..4M)");
  auto* depths = cmd->add_option("--depths", flags->depths, "Queue depths (default 1,4,16,64)");
  cmd->add_option("--pattern", flags->patterns, "random, sequential, bundles (comma list)");
  cmd->add_option("--backend", flags->backends,
                  "uring, pread or auto (uring, else pread); comma list");
  cmd->add_option("--region", flags->region,
                  "bundles pattern: size of the region the bundles are read from (default 256M)");
  cmd->add_flag("--direct", flags->direct, "Read with O_DIRECT (the default)");
  cmd->add_flag("--buffered", flags->buffered,
                "Read through the page cache (with --direct: measure both)");
  auto* seconds = cmd->add_option("--seconds", flags->seconds, "Run time per point (default 2)");
  cmd->add_option("--csv", flags->csv, "Write the results as CSV");
  cmd->add_option("--json", flags->json, "Write the results as JSON");
  cmd->add_option("--plot", flags->plot, "Draw bandwidth vs block size (.svg or .png; gnuplot)");
  cmd->add_flag("--fio", flags->fio, "Also run fio (io_uring) on each point; adds ratio columns");
  cmd->add_flag("--quick", flags->quick,
                "Short sweep: 1 GiB file, sizes 4K,64K,1M, depths 1,32, 1 s per point");
  cmd->add_option("--seed", flags->seed, "Seed for offsets and file contents");
  cmd->add_flag("--no-register-buffers", flags->no_register_buffers,
                "uring: do not register the buffers (plain READ instead of READ_FIXED)");
  cmd->add_option("--repeat", flags->repeat,
                  "Measure each point N times (alternating with fio) and report medians")
      ->check(CLI::Range(1, 100));
  return [cmd, flags, file_size, sizes, depths, seconds] {
    if (!cmd->parsed()) return -1;
    return Run(*flags, file_size->count() > 0, sizes->count() > 0, depths->count() > 0,
               seconds->count() > 0);
  };
}

}  // namespace flashlm::tools
