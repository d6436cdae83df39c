// flashlm repack INPUT OUT: converts a checkpoint (GGUF, safetensors, llama2.c, or a store) into a
// flashlm store. A progress bar goes to stderr; the summary to stdout.
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <filesystem>
#include <string>

#include "layout/checkpoint.h"
#include "layout/repack.h"
#include "storage/file.h"
#include "tools/cli_util.h"
#include "tools/commands.h"

namespace flashlm::tools {
namespace {

struct RepackFlags {
  std::string input, out, dtype, align = "auto", bundle = "gate-up-down", tokenizer, activations;
  std::string compress = "none";
  double zstd_min_saving = 0.10;
  double hot_threshold = 0.5;
  bool hot_threshold_set = false;
  int zstd_level = 3;
  bool no_progress = false;
};

// Draws "[#####.....]  42%  tensor" on stderr, at most ~100 times.
class ProgressBar {
 public:
  explicit ProgressBar(bool enabled) : enabled_(enabled), tty_(isatty(STDERR_FILENO)) {}
  void Update(const layout::RepackProgress& p) {
    if (!enabled_ || p.total_bytes == 0) return;
    const int pct = static_cast<int>(100.0 * double(p.done_bytes) / double(p.total_bytes));
    if (pct == last_pct_) return;
    last_pct_ = pct;
    if (!tty_ && pct % 10 != 0) return;  // logs: one line per 10%
    char bar[41];
    const int fill = pct * 40 / 100;
    for (int i = 0; i < 40; ++i) bar[i] = i < fill ? '#' : '.';
    bar[40] = 0;
    std::fprintf(stderr, "%s[%s] %3d%%  %-40.*s%s", tty_ ? "\r" : "", bar, pct,
                 static_cast<int>(std::min<size_t>(p.tensor.size(), 40)), p.tensor.data(),
                 tty_ ? "" : "\n");
    std::fflush(stderr);
  }
  void Done() {
    if (enabled_ && tty_ && last_pct_ >= 0) std::fprintf(stderr, "\n");
  }

 private:
  bool enabled_;
  bool tty_;
  int last_pct_ = -1;
};

int RunRepack(const RepackFlags& f) {
  layout::RepackOptions o;
  if (!f.dtype.empty()) {
    Result<layout::DType> dt = layout::ParseDType(f.dtype);
    if (!dt.ok()) return ReportError("repack", dt.status());
    o.dtype = *dt;
  }
  bool align_reported = false;
  if (f.align == "auto") {
    // Where the store is written: the folder that will hold OUT.
    std::filesystem::path parent = std::filesystem::path(f.out).parent_path();
    o.alignment_bytes =
        storage::DirectIoAlignmentIn(parent.empty() ? "." : parent.string(), &align_reported);
  } else {
    Result<uint64_t> align = ParseSize(f.align);
    if (!align.ok()) return ReportError("repack", align.status().WithContext("--align"));
    o.alignment_bytes = *align;
  }
  if (f.bundle == "gate-up-down") {
    o.bundle_kind = layout::BundleKind::kGateUpDown;
  } else if (f.bundle == "gate+up-down") {
    o.bundle_kind = layout::BundleKind::kGateSeparate;
  } else {
    return ReportError("repack", InvalidArgumentError("--bundle must be gate-up-down or "
                                                      "gate+up-down, not '" +
                                                      f.bundle + "'"));
  }
  if (f.compress == "zstd") {
    o.codec = layout::Codec::kZstd;
  } else if (f.compress != "none") {
    return ReportError("repack", InvalidArgumentError("--compress must be none or zstd"));
  }
  o.zstd_level = f.zstd_level;
  o.zstd_min_saving = f.zstd_min_saving;
  o.activations_path = f.activations;
  if (f.hot_threshold_set && f.activations.empty()) {
    return ReportError("repack", InvalidArgumentError("--hot-threshold needs --activations"));
  }
  if (!(f.hot_threshold >= 0.0 && f.hot_threshold <= 1.0)) {
    return ReportError("repack", InvalidArgumentError("--hot-threshold must be in [0, 1]"));
  }
  o.hot_threshold = f.hot_threshold;
  o.source_path = f.input;

  layout::OpenOptions open;
  open.tokenizer_path = f.tokenizer;
  Result<std::unique_ptr<layout::Checkpoint>> src = layout::OpenCheckpoint(f.input, open);
  if (!src.ok()) return ReportError("repack", src.status());

  ProgressBar bar(!f.no_progress);
  o.progress = [&bar](const layout::RepackProgress& p) { bar.Update(p); };
  Result<layout::RepackSummary> r = layout::Repack(**src, f.out, o);
  bar.Done();
  if (!r.ok()) return ReportError("repack", r.status());
  const layout::RepackSummary& s = *r;
  const double mb_s = s.seconds > 0 ? double(s.source_bytes) / 1e6 / s.seconds : 0;
  std::printf("repacked %s (%s) -> %s\n", f.input.c_str(), std::string((*src)->format()).c_str(),
              f.out.c_str());
  std::printf("  tensors        %llu\n", static_cast<unsigned long long>(s.tensors));
  std::printf("  extents        %llu (%llu zstd)\n", static_cast<unsigned long long>(s.extents),
              static_cast<unsigned long long>(s.compressed_extents));
  std::printf("  source bytes   %s\n", FormatBytes(s.source_bytes).c_str());
  std::printf("  stored bytes   %s (data file %s)\n", FormatBytes(s.stored_bytes).c_str(),
              FormatBytes(s.file_bytes).c_str());
  if (s.bundle_bytes) {
    std::printf(
        "  bundle         %s in a %s stride (%.1f%% padding per bundle)\n",
        FormatBytes(s.bundle_bytes).c_str(), FormatBytes(s.bundle_stride_bytes).c_str(),
        100.0 * double(s.bundle_stride_bytes - s.bundle_bytes) / double(s.bundle_stride_bytes));
  }
  if (!s.hot_counts.empty()) {
    std::string counts;
    for (uint32_t h : s.hot_counts) counts += (counts.empty() ? "" : " ") + std::to_string(h);
    std::printf("  hot set        %s neurons per layer (frequency >= %g), stored first\n",
                counts.c_str(), f.hot_threshold);
  }
  const char* why = f.align != "auto" ? ""
                    : align_reported
                        ? ", the filesystem's direct-I/O alignment"
                        : ", as the filesystem does not report its direct-I/O alignment";
  std::printf("  padding        %.1f%% of the data file (extents aligned to %s%s)\n",
              100.0 * s.padding_ratio(), FormatBytes(o.alignment_bytes).c_str(), why);
  std::printf("  time           %.2f s (%.1f MB/s of source)\n", s.seconds, mb_s);
  return kExitOk;
}

}  // namespace

CommandRunner RegisterRepack(CLI::App& app) {
  auto flags = std::make_shared<RepackFlags>();
  CLI::App* cmd = app.add_subcommand("repack", "Convert a checkpoint into a flashlm store");
  cmd->add_option("INPUT", flags->input, "GGUF file, HF folder / .safetensors, llama2.c .bin")
      ->required();
  cmd->add_option("OUT", flags->out, "Store folder to create (must not exist)")->required();
  cmd->add_option(
      "--dtype", flags->dtype,
      "Weights dtype: f32, f16, bf16, q8_0, q4_0, q4_K, q6_K (default: the source's; norms "
      "stay f32)");
  cmd->add_option("--align", flags->align,
                  "Extent alignment, power of two, 512..16M, or auto: the direct-I/O alignment "
                  "of the filesystem OUT is written to (its logical block size, e.g. 512 or "
                  "4096), so that every extent is one O_DIRECT read with the least padding")
      ->capture_default_str();
  cmd->add_option("--bundle", flags->bundle, "gate-up-down or gate+up-down")->capture_default_str();
  cmd->add_option("--tokenizer", flags->tokenizer, "Tokenizer file (llama2.c tokenizer.bin)");
  cmd->add_option("--activations", flags->activations,
                  "Activation statistics JSON (flashlm activations): store neurons hot-first "
                  "(see docs/format.md)");
  CLI::Option* hot =
      cmd->add_option("--hot-threshold", flags->hot_threshold,
                      "With --activations: neurons firing on at least this fraction of tokens form "
                      "the hot set, recorded per layer")
          ->capture_default_str();
  cmd->add_option("--compress", flags->compress, "Per-extent codec: none or zstd")
      ->capture_default_str();
  cmd->add_option("--zstd-level", flags->zstd_level, "zstd level")->capture_default_str();
  cmd->add_option("--zstd-min-saving", flags->zstd_min_saving,
                  "Keep zstd for an extent only if it saves this fraction of aligned space")
      ->capture_default_str();
  cmd->add_flag("--no-progress", flags->no_progress, "No progress bar");
  return [cmd, flags, hot] {
    if (!cmd->parsed()) return -1;
    flags->hot_threshold_set = hot->count() > 0;
    return RunRepack(*flags);
  };
}

}  // namespace flashlm::tools
