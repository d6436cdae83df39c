// Helpers shared by the subcommands: size parsing ("64K", "4G"), error reporting, exit codes.
// Only tools/ uses CLI11; library code never sees it.
#ifndef FLASHLM_TOOLS_CLI_UTIL_H_
#define FLASHLM_TOOLS_CLI_UTIL_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "storage/status.h"

namespace flashlm::tools {

// Exit codes: 0 success, 1 runtime failure (I/O, corruption), 2 bad usage or bad input.
inline constexpr int kExitOk = 0;
inline constexpr int kExitFailure = 1;
inline constexpr int kExitUsage = 2;

// The largest text file perplexity and activations read (--text): 64 MiB, millions of tokens.
inline constexpr uint64_t kTextBytesMax = uint64_t{64} << 20;

// Parses "4096", "4K", "64k", "1M", "4G", "1.5G" (binary units). Errors: InvalidArgument.
Result<uint64_t> ParseSize(std::string_view text);
// Parses a comma-separated list of sizes: "4K,64K,1M".
Result<std::vector<uint64_t>> ParseSizeList(std::string_view text);

// The gnuplot terminal for a plot file: "svg ..." for .svg, "pngcairo ..." for .png.
// Errors: InvalidArgument naming --plot for any other extension.
Result<std::string> GnuplotTerminal(const std::string& path);

// The median of `values` (the mean of the middle two for an even count; 0 when empty).
double Median(std::vector<double> values);

// Prints "flashlm <command>: <status message>" to stderr and returns the exit code for it:
// kExitUsage for InvalidArgument / NotFound / NotSupported / Corruption of inputs, else kExitFailure.
int ReportError(std::string_view command, const Status& status);

}  // namespace flashlm::tools

#endif  // FLASHLM_TOOLS_CLI_UTIL_H_
