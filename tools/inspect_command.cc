// flashlm inspect STORE [--json]: the store's config, layout, tensor directory, extents and
// sizes, including what alignment padding costs.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>

#include "layout/store_reader.h"
#include "tools/cli_util.h"
#include "tools/commands.h"

namespace flashlm::tools {
namespace {

using nlohmann::json;

json ParseOr(const std::string& text) {
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  return j.is_discarded() ? json(text) : j;
}

int RunInspect(const std::string& path, bool as_json) {
  Result<std::unique_ptr<layout::StoreReader>> opened = layout::StoreReader::Open(path);
  if (!opened.ok()) return ReportError("inspect", opened.status());
  layout::StoreReader& s = **opened;

  uint64_t stored = 0, raw = 0, zstd = 0;
  for (uint64_t i = 0; i < s.extent_count(); ++i) {
    layout::Extent e = *s.GetExtent(i);
    stored += e.stored_bytes;
    raw += e.raw_bytes;
    zstd += e.codec == layout::Codec::kZstd;
  }
  const uint64_t file = s.data_file_bytes(0);
  const double padding = file ? double(file - stored) / double(file) : 0.0;

  json j;
  j["path"] = s.path();
  j["format_version"] = s.header().format_version;
  j["alignment_bytes"] = s.header().alignment_bytes;
  j["config"] = ParseOr(layout::EncodeConfigJson(s.config()));
  j["layout"] = ParseOr(s.layout_json());
  j["provenance"] = ParseOr(s.provenance_json());
  j["vocab"] = {{"tokens", s.vocab().tokens.size()},
                {"merges", s.vocab().merges.size()},
                {"bos_id", s.vocab().bos_id},
                {"eos_id", s.vocab().eos_id}};
  j["sizes"] = {
      {"extents", s.extent_count()}, {"zstd_extents", zstd},    {"raw_bytes", raw},
      {"stored_bytes", stored},      {"data_file_bytes", file}, {"padding_ratio", padding}};
  json ffn = json::array();
  for (uint32_t l = 0; l < s.ffn_layer_count(); ++l) {
    layout::FfnLayerRecord f = *s.FfnLayer(l);
    ffn.push_back(
        {{"layer", l},
         {"neurons", f.n_neurons},
         {"dim", f.dim},
         {"bundle",
          std::string(layout::BundleKindName(static_cast<layout::BundleKind>(f.bundle_kind)))},
         {"dtype", std::string(layout::DTypeName(static_cast<layout::DType>(f.dtype)))},
         {"bundle_bytes", f.bundle_bytes},
         {"stride_bytes", f.stride_bytes},
         {"padding_ratio", double(f.stride_bytes - f.bundle_bytes) / double(f.stride_bytes)},
         {"hot_first", f.has_permutation != 0},
         {"hot_count", s.HotCount(l)},
         {"first_extent", f.first_extent}});
  }
  j["ffn_layers"] = ffn;
  json tensors = json::array();
  for (const layout::TensorInfo& t : s.tensors()) {
    layout::TensorLocation loc = *s.LocateTensor(t.name);
    const bool dense = loc.record.placement == static_cast<uint8_t>(layout::Placement::kDense);
    json e = {
        {"name", t.name},
        {"dtype", std::string(layout::DTypeName(static_cast<layout::DType>(loc.record.dtype)))},
        {"shape", t.shape},
        {"placement", dense ? "dense" : "bundled"},
        {"bytes", layout::TensorInfo{t.name, static_cast<layout::DType>(loc.record.dtype), t.shape}
                      .size_bytes()}};
    if (dense) {
      e["first_extent"] = loc.record.first_extent;
      e["extents"] = loc.record.extent_count;
      e["rows_per_extent"] = loc.record.rows_per_extent;
    } else {
      e["layer"] = loc.record.layer;
    }
    tensors.push_back(e);
  }
  j["tensors"] = tensors;

  if (as_json) {
    std::printf("%s\n", j.dump(2, ' ', false, json::error_handler_t::replace).c_str());
    return kExitOk;
  }
  const layout::ModelConfig& c = s.config();
  std::printf("store %s (format version %u)\n", s.path().c_str(), s.header().format_version);
  std::printf(
      "model   %s: dim %u, hidden %u, layers %u, heads %u (kv %u, head_dim %u), vocab %u, "
      "ctx %u, rope_theta %g%s\n",
      c.architecture.c_str(), c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim,
      c.vocab_size, c.max_seq_len, c.rope_theta, c.tied_embeddings ? ", tied embeddings" : "");
  std::printf("vocab   %zu tokens, %zu merges\n", s.vocab().tokens.size(), s.vocab().merges.size());
  std::printf("layout  %s\n",
              j["layout"].dump(-1, ' ', false, json::error_handler_t::replace).c_str());
  std::printf("source  %s\n",
              j["provenance"].dump(-1, ' ', false, json::error_handler_t::replace).c_str());
  std::printf("sizes   %llu extents (%llu zstd), raw %s, stored %s, data file %s, padding %.1f%%\n",
              static_cast<unsigned long long>(s.extent_count()),
              static_cast<unsigned long long>(zstd), FormatBytes(raw).c_str(),
              FormatBytes(stored).c_str(), FormatBytes(file).c_str(), 100 * padding);
  if (s.ffn_layer_count() > 0) {
    layout::FfnLayerRecord f = *s.FfnLayer(0);
    std::printf(
        "bundles %u layers x %u neurons, %s, %s: %s per bundle in a %s stride "
        "(padding %.1f%% per bundle)%s\n",
        s.ffn_layer_count(), f.n_neurons,
        std::string(layout::BundleKindName(static_cast<layout::BundleKind>(f.bundle_kind))).c_str(),
        std::string(layout::DTypeName(static_cast<layout::DType>(f.dtype))).c_str(),
        FormatBytes(f.bundle_bytes).c_str(), FormatBytes(f.stride_bytes).c_str(),
        100.0 * double(f.stride_bytes - f.bundle_bytes) / double(f.stride_bytes),
        f.has_permutation ? ", hot-first" : "");
    // Stores repacked before the hot set was recorded have no "hot_threshold": print nothing.
    const json& lay = j["layout"];
    if (lay.is_object() && lay.contains("hot_threshold") && lay["hot_threshold"].is_number()) {
      std::string hot;
      for (uint32_t l = 0; l < s.ffn_layer_count(); ++l) {
        hot += (l ? ", " : "") + std::to_string(s.HotCount(l)) + "/" +
               std::to_string(s.FfnLayer(l)->n_neurons);
      }
      std::printf("hot set %s neurons per layer (frequency >= %g), stored first\n", hot.c_str(),
                  lay["hot_threshold"].get<double>());
    }
  }
  std::printf("tensors\n");
  for (const json& t : tensors) {
    std::string shape;
    for (const json& d : t["shape"]) shape += (shape.empty() ? "" : " x ") + d.dump();
    std::string where = t["placement"] == "dense"
                            ? "extents " + t["first_extent"].dump() + "+" + t["extents"].dump()
                            : "bundles of layer " + t["layer"].dump();
    std::printf("  %-28s %-5s %-14s %10s  %s\n", t["name"].get<std::string>().c_str(),
                t["dtype"].get<std::string>().c_str(), shape.c_str(),
                FormatBytes(t["bytes"].get<uint64_t>()).c_str(), where.c_str());
  }
  return kExitOk;
}

}  // namespace

CommandRunner RegisterInspect(CLI::App& app) {
  auto path = std::make_shared<std::string>();
  auto as_json = std::make_shared<bool>(false);
  CLI::App* cmd = app.add_subcommand("inspect", "Show a store's config, layout, extents, sizes");
  cmd->add_option("STORE", *path, "Store folder")->required();
  cmd->add_flag("--json", *as_json, "Print JSON");
  return [cmd, path, as_json] {
    if (!cmd->parsed()) return -1;
    return RunInspect(*path, *as_json);
  };
}

}  // namespace flashlm::tools
