// Reading config.json: typed values whose errors name the file and key. A null value counts as absent,
// so the caller's fallback (transformers' default) applies. Types are strict (3.5 is no layer count)
// and sizes are range-checked where they are read. Every key asked about is recorded, so the caller can
// refuse the keys nothing read (see read_model_config).
#pragma once

#include "moelab/lib/json_read.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include <initializer_list>
#include <set>
#include <stdexcept>
#include <string>

namespace moelab {

class ConfigKeys {
 public:
  ConfigKeys(const nlohmann::json& j, std::string file) : j_(j), file_(std::move(file)) {}

  bool has(const std::string& key) const {
    read_.insert(key);
    return j_.contains(key) && !j_[key].is_null();
  }

  template <class T>
  T get(const std::string& key) const {
    if (!has(key)) throw error(fmt::format("missing key \"{}\"", key));
    return JsonValue(j_[key], file_, key).get<T>();
  }
  template <class T>
  T get_or(const std::string& key, T fallback) const { return has(key) ? get<T>(key) : fallback; }
  // The first of several spellings that is present (configs rename keys across versions), or "".
  std::string first_present(std::initializer_list<const char*> keys) const {
    for (const char* k : keys)
      if (has(k)) return k;
    return "";
  }
  // An integer of at least `min` (1 for counts and sizes), required or with a fallback.
  int64_t at_least(const std::string& key, int64_t min) const { return checked_min(key, get<int64_t>(key), min); }
  int64_t at_least_or(const std::string& key, int64_t min, int64_t fallback) const {
    return has(key) ? at_least(key, min) : fallback;
  }
  // A number greater than 0 (epsilons, rope theta, scaling factors), or the fallback when absent.
  double positive_or(const std::string& key, double fallback) const {
    if (!has(key)) return fallback;
    const double value = get<double>(key);
    if (!(value > 0)) throw error(fmt::format("{} = {}, expected a number > 0", key, j_[key].dump()));
    return value;
  }
  // A string setting moelab implements only some values of: the value (or fallback), else an error.
  std::string one_of(const std::string& key, const std::string& fallback, std::initializer_list<const char*> supported) const {
    std::string value = get_or<std::string>(key, fallback);
    for (const char* s : supported)
      if (value == s) return value;
    throw error(fmt::format("{} \"{}\" is not supported (supported: {})", key, value, fmt::join(supported, ", ")));
  }
  const nlohmann::json& json() const { return j_; }
  const std::string& file() const { return file_; }
  // The keys asked about so far, present or not.
  const std::set<std::string>& keys_read() const { return read_; }
  // An error about this file.
  std::runtime_error error(const std::string& what) const { return std::runtime_error(fmt::format("{}: {}", file_, what)); }

 private:
  int64_t checked_min(const std::string& key, int64_t value, int64_t min) const {
    if (value < min) throw error(fmt::format("{} = {}, expected an integer >= {}", key, value, min));
    return value;
  }

  const nlohmann::json& j_;
  std::string file_;
  mutable std::set<std::string> read_;
};

}  // namespace moelab
