// flashlm verify STORE: reads every extent and checks its checksum. Exit 0 when all match; on the
// first bad extent, names it (index, file, offset, what it holds) and exits non-zero.
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <string>

#include "layout/store_reader.h"
#include "tools/cli_util.h"
#include "tools/commands.h"

namespace flashlm::tools {

CommandRunner RegisterVerify(CLI::App& app) {
  auto path = std::make_shared<std::string>();
  CLI::App* cmd = app.add_subcommand("verify", "Check every extent checksum of a store");
  cmd->add_option("STORE", *path, "Store folder")->required();
  return [cmd, path] {
    if (!cmd->parsed()) return -1;
    Result<std::unique_ptr<layout::StoreReader>> store = layout::StoreReader::Open(*path);
    if (!store.ok()) return ReportError("verify", store.status());
    const bool tty = isatty(STDERR_FILENO);
    int last = -1;
    Status s = (*store)->VerifyAll([&](uint64_t done, uint64_t total) {
      int pct = static_cast<int>(100 * done / total);
      if (tty && pct != last) {
        std::fprintf(stderr, "\rverifying %3d%%", pct);
        last = pct;
      }
    });
    if (tty && last >= 0) std::fprintf(stderr, "\n");
    if (!s.ok()) return ReportError("verify", s);
    uint64_t bytes = 0;
    for (uint64_t i = 0; i < (*store)->extent_count(); ++i) {
      bytes += (*store)->GetExtent(i)->stored_bytes;
    }
    std::printf("ok: %llu extents, %s verified\n",
                static_cast<unsigned long long>((*store)->extent_count()),
                FormatBytes(bytes).c_str());
    return kExitOk;
  };
}

}  // namespace flashlm::tools
