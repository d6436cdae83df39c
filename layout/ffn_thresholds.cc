#include "layout/ffn_thresholds.h"

#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "layout/json_util.h"
#include "storage/checksum.h"
#include "storage/file.h"

namespace flashlm::layout {
namespace {

constexpr std::string_view kFormat = "flashlm-ffn-thresholds";
constexpr uint64_t kFileBytesMax = uint64_t{1} << 20;  // ~25 bytes a layer: far above 4096 layers

std::string Hex(uint64_t v) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "%016" PRIx64, v);
  return buf;
}

// The checksum covers the compact serialisation of every field but "checksum" itself (nlohmann
// keeps object keys sorted, so the serialisation is canonical).
std::string Checksum(const nlohmann::json& body) {
  const std::string text = body.dump();
  return Hex(storage::Checksum64(
      ConstByteSpan(reinterpret_cast<const std::byte*>(text.data()), text.size())));
}

Status CheckValues(const FfnThresholds& t, const std::string& where) {
  if (t.thresholds.empty() || t.thresholds.size() > kFfnThresholdLayersMax) {
    return CorruptionError(where + ": between 1 and " + std::to_string(kFfnThresholdLayersMax) +
                           " layers expected");
  }
  if (t.calibrated_sparsity.size() != t.thresholds.size()) {
    return CorruptionError(where + ": one calibrated sparsity per layer expected");
  }
  if (!(t.target_sparsity >= 0 && t.target_sparsity < 1) || t.hidden_dim == 0) {
    return CorruptionError(where + ": target sparsity outside [0, 1) or no neurons");
  }
  for (size_t l = 0; l < t.thresholds.size(); ++l) {
    if (!std::isfinite(t.thresholds[l]) || t.thresholds[l] < 0 ||
        !(t.calibrated_sparsity[l] >= 0 && t.calibrated_sparsity[l] <= 1)) {
      return CorruptionError(where + ": layer " + std::to_string(l) + " has a value out of range");
    }
  }
  return Status::Ok();
}

}  // namespace

Status SaveFfnThresholds(const FfnThresholds& t, const std::string& path) {
  if (Status st = CheckValues(t, "FFN thresholds"); !st.ok()) {
    return InvalidArgumentError(std::string(st.message()));
  }
  nlohmann::json j;
  j["format"] = kFormat;
  j["version"] = 1;
  j["store_xxh3"] = Hex(t.store_identity);
  j["hidden_dim"] = t.hidden_dim;
  j["target_sparsity"] = t.target_sparsity;
  j["tokens"] = t.tokens;
  j["thresholds"] = t.thresholds;
  j["calibrated_sparsity"] = t.calibrated_sparsity;
  j["checksum"] = Checksum(j);
  const std::string text = j.dump(1) + "\n";
  return storage::WriteFileAtomically(
      path, ConstByteSpan(reinterpret_cast<const std::byte*>(text.data()), text.size()));
}

Result<FfnThresholds> LoadFfnThresholds(const std::string& path, uint64_t store_identity,
                                        uint32_t layers, uint32_t hidden_dim) {
  const std::string where = "FFN thresholds " + path;
  Result<std::string> text = storage::ReadFileBounded(path, kFileBytesMax);
  if (!text.ok()) {
    if (text.status().code() == StatusCode::kNotFound) {
      return NotFoundError(where +
                           " not found: calibrate them first (flashlm calibrate STORE "
                           "--text FILE --target-sparsity S)");
    }
    return text.status().WithContext(where);
  }
  ASSIGN_OR_RETURN(nlohmann::json j, ParseUntrustedJson(*text, where));
  if (!j.is_object()) return CorruptionError(where + ": not a JSON object");
  auto fmt = j.find("format");
  if (fmt == j.end() || !fmt->is_string() || fmt->get<std::string>() != kFormat) {
    return CorruptionError(where + ": \"format\" must be \"" + std::string(kFormat) + "\"");
  }
  auto sum = j.find("checksum");
  if (sum == j.end() || !sum->is_string()) return CorruptionError(where + ": no checksum");
  const std::string stored = sum->get<std::string>();
  j.erase("checksum");
  if (Checksum(j) != stored) {
    return CorruptionError(where + " fails its checksum: the file is damaged; calibrate again");
  }
  auto ver = j.find("version");
  if (ver == j.end() || !ver->is_number_integer() || ver->get<int64_t>() != 1) {
    return NotSupportedError(where + ": only \"version\": 1 is supported");
  }
  FfnThresholds t;
  auto field = [&](const char* name) -> const nlohmann::json* {
    auto it = j.find(name);
    return it == j.end() ? nullptr : &*it;
  };
  const nlohmann::json* id = field("store_xxh3");
  const nlohmann::json* hd = field("hidden_dim");
  const nlohmann::json* target = field("target_sparsity");
  const nlohmann::json* tokens = field("tokens");
  const nlohmann::json* thr = field("thresholds");
  const nlohmann::json* cal = field("calibrated_sparsity");
  if (!id || !id->is_string() || !hd || !hd->is_number_unsigned() || !target ||
      !target->is_number() || !tokens || !tokens->is_number_unsigned() || !thr ||
      !thr->is_array() || !cal || !cal->is_array()) {
    return CorruptionError(where + ": a field is missing or of the wrong type");
  }
  if (thr->size() > kFfnThresholdLayersMax || cal->size() > kFfnThresholdLayersMax ||
      hd->get<uint64_t>() > UINT32_MAX) {
    return CorruptionError(where + ": sizes out of range");
  }
  const std::string id_text = id->get<std::string>();
  char* end = nullptr;
  t.store_identity = std::strtoull(id_text.c_str(), &end, 16);
  if (id_text.size() != 16 || end != id_text.c_str() + 16) {
    return CorruptionError(where + ": \"store_xxh3\" must be 16 hex digits");
  }
  t.hidden_dim = static_cast<uint32_t>(hd->get<uint64_t>());
  t.target_sparsity = target->get<double>();
  t.tokens = tokens->get<uint64_t>();
  for (const nlohmann::json& v : *thr) {
    if (!v.is_number()) return CorruptionError(where + ": a threshold is not a number");
    t.thresholds.push_back(v.get<float>());
  }
  for (const nlohmann::json& v : *cal) {
    if (!v.is_number()) return CorruptionError(where + ": a sparsity is not a number");
    t.calibrated_sparsity.push_back(v.get<double>());
  }
  RETURN_IF_ERROR(CheckValues(t, where));
  if (t.store_identity != store_identity) {
    return InvalidArgumentError(where + " belongs to another store (catalog " +
                                Hex(t.store_identity) + ", this store's is " + Hex(store_identity) +
                                "); calibrate this store");
  }
  if (t.thresholds.size() != layers || t.hidden_dim != hidden_dim) {
    return InvalidArgumentError(where + " is for " + std::to_string(t.thresholds.size()) +
                                " layers of " + std::to_string(t.hidden_dim) +
                                " neurons; the model has " + std::to_string(layers) + " of " +
                                std::to_string(hidden_dim));
  }
  return t;
}

}  // namespace flashlm::layout
