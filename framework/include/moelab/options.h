// Typed config options: each key of a table is bound once to a field of a plain struct, with its type,
// default, help, allowed values (names mapped to an enum) and numeric range. The host validates the
// table against the keys (descriptor() for a plugin); read(config) then fills the struct in one call.
//
//   struct Settings { std::string dataset; long long k; Scoring scoring; };
//   const moelab::Options<Settings>& options() {
//     static const auto o = moelab::Options<Settings>("neighbours", moelab::Kind::stage, "0.1.0", "...")
//         .component("dataset", &Settings::dataset, moelab::Kind::dataset, "the samples")
//         .integer("k", &Settings::k, 5, "neighbours per sample").at_least(1)
//         .choice("scoring", &Settings::scoring, Scoring::letter, {{"letter", Scoring::letter}, {"loglik", Scoring::loglik}}, "...");
//     return o;
//   }
//   MOELAB_PLUGIN(options, MyStage)  // MyStage(const Config& config, RunContext&) : settings_(options().read(config))
#pragma once

#include "moelab/config.h"
#include "moelab/plugin.h"

#include <filesystem>
#include <functional>
#include <optional>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace moelab {

// In place of a default: the user must set the key. .path("input", &S::input, moelab::required, "...")
struct Required {
  struct Token {};
  constexpr explicit Required(Token) {}  // not from {}: lists take {} as an empty default
};
inline constexpr Required required{Required::Token{}};

namespace detail {
// TOML literals of defaults, as ConfigKey::default_toml holds them.
std::string toml_literal(bool value);
std::string toml_literal(long long value);
std::string toml_literal(double value);
std::string toml_literal(const std::string& value);
std::string toml_literal(const std::vector<long long>& value);
std::string toml_literal(const std::vector<double>& value);
std::string toml_literal(const std::vector<std::string>& value);
// Appends `key`; logic_error naming `owner` when the name is taken or is "plugin".
void add_key(std::vector<ConfigKey>& keys, ConfigKey key, const std::string& owner);
}  // namespace detail

template <class T>
class Options {
 public:
  // A plugin's options: MOELAB_PLUGIN exports descriptor() (name, kind, version, description, keys).
  Options(std::string name, Kind kind, std::string version, std::string description)
      : identity_(Descriptor(std::move(name), kind, std::move(version), std::move(description))) {}
  // Options of a table no plugin owns (the host's top level and [model]) or of a group included in
  // other options (prompt_options()): keys only.
  Options() = default;

  // Scalar binders take a default or moelab::required.
  template <class D>
  Options& flag(const std::string& key, bool T::*field, D default_value, const std::string& help) {
    return bind(key, KeyType::boolean, field, literal<bool>(default_value), help, &Config::get_bool);
  }
  // Any integer field; an unsigned one also gets the range "at least 0".
  template <class F, class D>
  Options& integer(const std::string& key, F T::*field, D default_value, const std::string& help) {
    static_assert(std::is_integral_v<F> && !std::is_same_v<F, bool>, "integer() binds an integer field");
    bind(key, KeyType::integer, field, literal<long long>(default_value), help, &Config::get_int);
    if constexpr (std::is_unsigned_v<F>) at_least(0);
    return *this;
  }
  template <class D>
  Options& real(const std::string& key, double T::*field, D default_value, const std::string& help) {
    return bind(key, KeyType::real, field, literal<double>(default_value), help, &Config::get_real);
  }
  template <class D>
  Options& string(const std::string& key, std::string T::*field, D default_value, const std::string& help) {
    return bind(key, KeyType::string, field, literal<std::string>(default_value), help, &Config::get_string);
  }
  // Absolute after validation (relative to the file that set it); "" and "@stage/file" stay as written.
  template <class D>
  Options& path(const std::string& key, std::filesystem::path T::*field, D default_value, const std::string& help) {
    return bind(key, KeyType::path, field, literal<std::string>(default_value), help, &Config::get_path);
  }
  // Lists take a default (often {}) or moelab::required.
  Options& integers(const std::string& key, std::vector<long long> T::*field, std::vector<long long> default_value, const std::string& help) {
    return bind(key, KeyType::integer_list, field, detail::toml_literal(default_value), help, &Config::get_ints);
  }
  Options& integers(const std::string& key, std::vector<long long> T::*field, Required, const std::string& help) {
    return bind(key, KeyType::integer_list, field, "", help, &Config::get_ints);
  }
  Options& reals(const std::string& key, std::vector<double> T::*field, std::vector<double> default_value, const std::string& help) {
    return bind(key, KeyType::real_list, field, detail::toml_literal(default_value), help, &Config::get_reals);
  }
  Options& reals(const std::string& key, std::vector<double> T::*field, Required, const std::string& help) {
    return bind(key, KeyType::real_list, field, "", help, &Config::get_reals);
  }
  Options& strings(const std::string& key, std::vector<std::string> T::*field, std::vector<std::string> default_value,
                   const std::string& help) {
    return bind(key, KeyType::string_list, field, detail::toml_literal(default_value), help, &Config::get_strings);
  }
  Options& strings(const std::string& key, std::vector<std::string> T::*field, Required, const std::string& help) {
    return bind(key, KeyType::string_list, field, "", help, &Config::get_strings);
  }

  // A string key whose allowed values are `names`, read as the enum value each name maps to.
  template <class E>
  Options& choice(const std::string& key, E T::*field, E default_value, std::vector<std::pair<std::string, E>> names,
                  const std::string& help) {
    ConfigKey k{key, KeyType::string, "", help, {}, {}};
    for (const auto& [name, value] : names) {
      k.choices.push_back(name);
      if (value == default_value && k.default_toml.empty()) k.default_toml = detail::toml_literal(name);
    }
    if (k.default_toml.empty()) throw std::logic_error(owner() + ": the default of choice key '" + key + "' has no name");
    detail::add_key(keys_, std::move(k), owner());
    readers_.push_back([key, field, names](T& out, const Config& config) {
      const std::string value = config.get_string(key);
      for (const auto& [name, mapped] : names)
        if (name == value) {
          out.*field = mapped;
          return;
        }
      throw std::logic_error("[" + config.id() + "] " + key + " = \"" + value + "\" was not validated against its choices");
    });
    return *this;
  }

  // A string key whose allowed values are `names`, read as the name itself (for APIs that take names).
  Options& choice(const std::string& key, std::string T::*field, const std::string& default_value, std::vector<std::string> names,
                  const std::string& help) {
    bind(key, KeyType::string, field, detail::toml_literal(default_value), help, &Config::get_string);
    keys_.back().choices = std::move(names);
    return *this;
  }

  // The id of another table of the experiment, whose plugin has kind `kind` (required).
  Options& component(const std::string& key, std::string T::*field, Kind kind, const std::string& help) {
    return bind_component(key, KeyType::component, field, "", kind, help, &Config::get_string);
  }
  // A component key that may stay "": the component is then not used.
  Options& optional_component(const std::string& key, std::string T::*field, Kind kind, const std::string& help) {
    return bind_component(key, KeyType::component, field, detail::toml_literal(std::string()), kind, help, &Config::get_string);
  }
  // Ids of other tables of kind `kind` (default: none).
  Options& components(const std::string& key, std::vector<std::string> T::*field, Kind kind, const std::string& help) {
    return bind_component(key, KeyType::component_list, field, detail::toml_literal(std::vector<std::string>()), kind, help,
                          &Config::get_strings);
  }

  // The keys of `group` (for example prompt_options()), read into the field `field` of T.
  template <class G>
  Options& include(G T::*field, const Options<G>& group) {
    for (const auto& key : group.keys()) detail::add_key(keys_, key, owner());
    readers_.push_back([field, group](T& out, const Config& config) { out.*field = group.read(config); });
    return *this;
  }

  // The range of the key bound last (of each item, for a number list); the host rejects values outside it.
  Options& at_least(double min) {
    return limit([&](Range& r) {
      r.min = min;
      r.min_exclusive = false;
    });
  }
  Options& positive() {
    return limit([](Range& r) {
      r.min = 0.0;
      r.min_exclusive = true;
    });
  }
  Options& at_most(double max) { return limit([&](Range& r) { r.max = max; }); }
  Options& within(double min, double max) { return at_least(min).at_most(max); }

  const std::vector<ConfigKey>& keys() const { return keys_; }
  // The plugin's descriptor; logic_error for options made without a plugin identity.
  Descriptor descriptor() const {
    if (!identity_) throw std::logic_error("options without a plugin name have no descriptor");
    Descriptor d = *identity_;
    d.keys = keys_;
    return d;
  }

  // Every bound field from a table the host validated against keys().
  T read(const Config& config) const {
    T out{};
    for (const auto& reader : readers_) reader(out, config);
    return out;
  }

 private:
  template <class V, class D>
  static std::string literal(const D& default_value) {
    if constexpr (std::is_same_v<D, Required>) return "";
    else return detail::toml_literal(static_cast<V>(default_value));
  }

  std::string owner() const { return identity_ ? "plugin " + identity_->name : "options"; }

  template <class F, class Value>
  Options& bind(const std::string& key, KeyType type, F T::*field, std::string default_toml, const std::string& help,
                Value (Config::*get)(const std::string&) const) {
    detail::add_key(keys_, {key, type, std::move(default_toml), help, {}, {}}, owner());
    readers_.push_back([key, field, get](T& out, const Config& config) { out.*field = static_cast<F>((config.*get)(key)); });
    return *this;
  }

  template <class F, class Value>
  Options& bind_component(const std::string& key, KeyType type, F T::*field, std::string default_toml, Kind kind,
                          const std::string& help, Value (Config::*get)(const std::string&) const) {
    bind(key, type, field, std::move(default_toml), help, get);
    keys_.back().choices = {std::string(kind_name(kind))};
    return *this;
  }

  template <class Change>
  Options& limit(Change change) {
    if (keys_.empty()) throw std::logic_error(owner() + ": a range needs a number key bound before it");
    ConfigKey& key = keys_.back();
    if (key.type != KeyType::integer && key.type != KeyType::real && key.type != KeyType::integer_list && key.type != KeyType::real_list)
      throw std::logic_error(owner() + ": key '" + key.name + "' is not a number, so it takes no range");
    change(key.range);
    return *this;
  }

  std::optional<Descriptor> identity_;
  std::vector<ConfigKey> keys_;
  std::vector<std::function<void(T&, const Config&)>> readers_;
};

// The name of `value` in a choice's table (as given to Options::choice), for reports and logs.
template <class E>
const std::string& choice_name(E value, const std::vector<std::pair<std::string, E>>& names) {
  for (const auto& [name, v] : names)
    if (v == value) return name;
  throw std::logic_error("choice_name: the value is not in the table");
}

template <class T>
Descriptor descriptor_of(const Options<T>& options) {
  return options.descriptor();
}

}  // namespace moelab
