#include "moelab/options.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

namespace moelab {

bool Range::contains(double value) const {
  if (min && (min_exclusive ? value <= *min : value < *min)) return false;
  return !max || value <= *max;
}

std::string Range::text() const {
  if (min && max) return fmt::format("within {}{}, {}]", min_exclusive ? "(" : "[", *min, *max);
  if (min) return fmt::format("{} {}", min_exclusive ? "greater than" : "at least", *min);
  if (max) return fmt::format("at most {}", *max);
  return "";
}

namespace detail {

std::string toml_literal(bool value) { return value ? "true" : "false"; }

std::string toml_literal(long long value) { return std::to_string(value); }

std::string toml_literal(double value) {
  std::string s = fmt::format("{}", value);
  if (s.find_first_of(".eEn") == std::string::npos) s += ".0";  // keep it a TOML float
  return s;
}

// A TOML basic string with the escapes TOML requires.
std::string toml_literal(const std::string& value) {
  std::string out = "\"";
  for (char c : value) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\t': out += "\\t"; break;
      case '\r': out += "\\r"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) out += fmt::format("\\u{:04x}", c);
        else out += c;
    }
  }
  return out + "\"";
}

namespace {
template <class V>
std::string toml_array(const std::vector<V>& values) {
  std::vector<std::string> items;
  for (const auto& v : values) items.push_back(toml_literal(v));
  return fmt::format("[{}]", fmt::join(items, ", "));
}
}  // namespace

std::string toml_literal(const std::vector<long long>& value) { return toml_array(value); }
std::string toml_literal(const std::vector<double>& value) { return toml_array(value); }
std::string toml_literal(const std::vector<std::string>& value) { return toml_array(value); }

void add_key(std::vector<ConfigKey>& keys, ConfigKey key, const std::string& owner) {
  for (const auto& k : keys)
    if (k.name == key.name) throw std::logic_error(owner + " declares key '" + key.name + "' twice");
  if (key.name == "plugin") throw std::logic_error(owner + ": 'plugin' is reserved");
  keys.push_back(std::move(key));
}

}  // namespace detail

}  // namespace moelab
