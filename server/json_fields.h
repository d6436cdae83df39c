// JsonFields: a JSON object's fields checked one by one (type, range, known names); the first
// failure is kept with the name of the field at fault. Never throws: every value is read only
// after its type was checked. For the server's request bodies. Not thread-safe (one per body).
#ifndef FLASHLM_SERVER_JSON_FIELDS_H_
#define FLASHLM_SERVER_JSON_FIELDS_H_

#include <cstdint>
#include <cstdio>
#include <initializer_list>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace flashlm::server {

class Fields {
 public:
  explicit Fields(const nlohmann::json& body) : body_(body) {}
  const std::string& error() const { return error_; }
  const char* error_param() const { return error_param_.c_str(); }
  bool ok() const { return error_.empty(); }
  bool Has(const char* name) const { return body_.contains(name) && !body_[name].is_null(); }

  void Known(std::initializer_list<const char*> names) {
    for (auto it = body_.begin(); it != body_.end() && ok(); ++it) {
      bool known = false;
      for (const char* n : names) known = known || it.key() == n;
      if (!known) Fail(it.key(), "unknown field '" + it.key() + "'");
    }
  }
  void Number(const char* name, double lo, double hi, double* out) {
    if (!ok() || !Has(name)) return;
    const nlohmann::json& v = body_[name];
    if (!v.is_number()) return Fail(name, std::string("'") + name + "' must be a number");
    const double d = v.get<double>();
    if (!(d >= lo && d <= hi)) {
      return Fail(name,
                  std::string("'") + name + "' must be in [" + Num(lo) + ", " + Num(hi) + "]");
    }
    *out = d;
  }
  void Integer(const char* name, int64_t lo, int64_t hi, int64_t* out) {
    if (!ok() || !Has(name)) return;
    const nlohmann::json& v = body_[name];
    if (!v.is_number_integer()) {
      return Fail(name, std::string("'") + name + "' must be an integer");
    }
    const bool out_of_range = v.is_number_unsigned()
                                  ? v.get<uint64_t>() > static_cast<uint64_t>(hi) ||
                                        (lo > 0 && v.get<uint64_t>() < static_cast<uint64_t>(lo))
                                  : (v.get<int64_t>() < lo || v.get<int64_t>() > hi);
    if (out_of_range) {
      return Fail(name, std::string("'") + name + "' must be in [" + std::to_string(lo) + ", " +
                            std::to_string(hi) + "]");
    }
    *out = v.get<int64_t>();
  }
  void Bool(const char* name, bool* out) {
    if (!ok() || !Has(name)) return;
    if (!body_[name].is_boolean())
      return Fail(name, std::string("'") + name + "' must be a boolean");
    *out = body_[name].get<bool>();
  }
  void String(const char* name, std::string* out) {
    if (!ok() || !Has(name)) return;
    if (!body_[name].is_string()) return Fail(name, std::string("'") + name + "' must be a string");
    *out = body_[name].get<std::string>();
  }
  // A string or an array of at most max_count strings of at most max_bytes bytes each.
  void Stops(const char* name, size_t max_count, size_t max_bytes, std::vector<std::string>* out) {
    if (!ok() || !Has(name)) return;
    const nlohmann::json& v = body_[name];
    if (v.is_string()) {
      out->push_back(v.get<std::string>());
    } else if (v.is_array() && v.size() <= max_count) {
      for (const nlohmann::json& s : v) {
        if (!s.is_string()) return Fail(name, "'stop' must be a string or an array of strings");
        out->push_back(s.get<std::string>());
      }
    } else {
      return Fail(name, "'stop' must be a string or an array of at most " +
                            std::to_string(max_count) + " strings");
    }
    for (const std::string& s : *out) {
      if (s.size() > max_bytes) {
        return Fail(name, "a stop string is longer than " + std::to_string(max_bytes) + " bytes");
      }
    }
  }
  void Fail(const std::string& param, const std::string& message) {
    if (!ok()) return;
    error_ = message;
    error_param_ = param;
  }

 private:
  static std::string Num(double d) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%g", d);
    return buf;
  }
  const nlohmann::json& body_;
  std::string error_, error_param_;
};

}  // namespace flashlm::server

#endif  // FLASHLM_SERVER_JSON_FIELDS_H_
