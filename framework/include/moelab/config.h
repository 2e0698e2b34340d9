// A validated, read-only view of one config table (a plugin's settings or a host section). Plugins
// read it in one call through their moelab::Options (options.h), which uses these getters; a getter
// fails only on programmer error (a key the table's options do not declare, or the wrong type).
#pragma once

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

namespace moelab {

class Config {
 public:
  struct Impl;
  explicit Config(std::shared_ptr<const Impl> impl);

  // The table's dotted name in the experiment file, for example "train" or "data.eval".
  const std::string& id() const;

  bool has(const std::string& key) const;
  bool get_bool(const std::string& key) const;
  long long get_int(const std::string& key) const;
  double get_real(const std::string& key) const;  // integers are accepted
  std::string get_string(const std::string& key) const;
  std::filesystem::path get_path(const std::string& key) const;  // absolute
  std::vector<long long> get_ints(const std::string& key) const;
  std::vector<double> get_reals(const std::string& key) const;
  std::vector<std::string> get_strings(const std::string& key) const;

  // "file:line" where the key was set, or "default" for a default; for error messages.
  std::string where(const std::string& key) const;

 private:
  std::shared_ptr<const Impl> impl_;
};

}  // namespace moelab
