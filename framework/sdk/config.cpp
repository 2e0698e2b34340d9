#include "config_impl.h"

#include <fmt/format.h>

#include <stdexcept>

namespace moelab {

namespace {
[[noreturn]] void undeclared(const std::string& id, const std::string& key) {
  throw std::logic_error(fmt::format("[{}] reads key '{}' that its descriptor does not declare", id, key));
}

template <class T>
T scalar(const Config::Impl& impl, const std::string& key) {
  const toml::node* node = impl.table.get(key);
  if (!node) undeclared(impl.id, key);
  if constexpr (std::is_same_v<T, double>) {
    if (auto i = node->value<long long>(); i && node->is_integer()) return static_cast<double>(*i);
  }
  auto v = node->value<T>();
  if (!v) throw std::logic_error(fmt::format("[{}] key '{}' read with the wrong type", impl.id, key));
  return *v;
}

template <class T>
std::vector<T> list(const Config::Impl& impl, const std::string& key) {
  const toml::node* node = impl.table.get(key);
  if (!node) undeclared(impl.id, key);
  const toml::array* array = node->as_array();
  if (!array) throw std::logic_error(fmt::format("[{}] key '{}' is not an array", impl.id, key));
  std::vector<T> out;
  for (const auto& item : *array) {
    if constexpr (std::is_same_v<T, double>) {
      if (item.is_integer()) {
        out.push_back(static_cast<double>(*item.value<long long>()));
        continue;
      }
    }
    out.push_back(*item.value<T>());
  }
  return out;
}
}  // namespace

Config::Config(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}

const std::string& Config::id() const { return impl_->id; }
bool Config::has(const std::string& key) const { return impl_->table.contains(key); }
bool Config::get_bool(const std::string& key) const { return scalar<bool>(*impl_, key); }
long long Config::get_int(const std::string& key) const { return scalar<long long>(*impl_, key); }
double Config::get_real(const std::string& key) const { return scalar<double>(*impl_, key); }
std::string Config::get_string(const std::string& key) const { return scalar<std::string>(*impl_, key); }
std::filesystem::path Config::get_path(const std::string& key) const { return scalar<std::string>(*impl_, key); }
std::vector<long long> Config::get_ints(const std::string& key) const { return list<long long>(*impl_, key); }
std::vector<double> Config::get_reals(const std::string& key) const { return list<double>(*impl_, key); }
std::vector<std::string> Config::get_strings(const std::string& key) const { return list<std::string>(*impl_, key); }

std::string Config::where(const std::string& key) const {
  auto it = impl_->where.find(key);
  return it == impl_->where.end() ? "default" : it->second;
}

}  // namespace moelab
