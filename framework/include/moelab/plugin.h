// The plugin contract: what a plugin library exports and what the host checks before using it.
// A plugin is one .cpp that describes itself (name, kind, config keys; moelab/options.h binds the keys
// to a struct) and registers a class with MOELAB_PLUGIN; the host refuses libraries built against
// another kPluginAbiVersion.
#pragma once

#include <boost/dll/alias.hpp>

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace moelab {

class Config;
class RunContext;

constexpr int kPluginAbiVersion = 5;  // 5: RunContext::record_histogram, record_image (TensorBoard)

enum class Kind { objective, dataset, sampler, analyzer, transform, embedder, stage };

std::string_view kind_name(Kind kind);
// Throws with the list of kinds when `name` is not one of them.
Kind kind_from_name(std::string_view name);

// The type of a config value; `path` is a string resolved against the folder of the file that set it.
// `component` names another table of the experiment whose plugin has a given kind; `component_list`
// names several.
enum class KeyType { boolean, integer, real, string, path, integer_list, real_list, string_list, component, component_list };
std::string_view key_type_name(KeyType type);

// The allowed values of a number key (of each item of a number list); the host checks them.
struct Range {
  std::optional<double> min, max;
  bool min_exclusive = false;  // min < value rather than min <= value

  bool contains(double value) const;
  std::string text() const;  // "at least 1", "greater than 0", "at most 8", "within [2, 8]"; empty when unbounded
};

struct ConfigKey {
  std::string name;
  KeyType type;
  std::string default_toml;  // TOML literal; empty means the key is required
  std::string help;
  std::vector<std::string> choices;  // allowed values of a string key (empty: any); the kind of a component key
  Range range;                       // number keys only
};

// Everything the host needs to know about a plugin before creating it. Plugins bind their keys with
// moelab::Options (options.h), whose descriptor() builds this; the builders below are the older way.
class Descriptor {
 public:
  Descriptor(std::string name, Kind kind, std::string version, std::string description);

  Descriptor& flag(const std::string& key, bool default_value, const std::string& help);
  Descriptor& integer(const std::string& key, long long default_value, const std::string& help);
  Descriptor& real(const std::string& key, double default_value, const std::string& help);
  Descriptor& string(const std::string& key, const std::string& default_value, const std::string& help);
  Descriptor& choice(const std::string& key, const std::string& default_value,
                     std::vector<std::string> choices, const std::string& help);
  Descriptor& path(const std::string& key, const std::string& default_value, const std::string& help);
  Descriptor& integers(const std::string& key, const std::vector<long long>& default_value, const std::string& help);
  Descriptor& reals(const std::string& key, const std::vector<double>& default_value, const std::string& help);
  Descriptor& strings(const std::string& key, const std::vector<std::string>& default_value, const std::string& help);
  Descriptor& component(const std::string& key, Kind kind, const std::string& default_id, const std::string& help);
  // A component key that may stay empty (""): the component is then not used.
  Descriptor& optional_component(const std::string& key, Kind kind, const std::string& help);
  // A key the user must set.
  Descriptor& required(const std::string& key, KeyType type, const std::string& help);

  std::string name;
  Kind kind;
  std::string version;
  std::string description;
  std::vector<ConfigKey> keys;

 private:
  Descriptor& add(ConfigKey key);
};

// Base of every object a plugin makes; the host keeps the library loaded while one is alive.
class Plugin {
 public:
  virtual ~Plugin();
};

using PluginFactory = Plugin*(const Config& config, RunContext& context);

// What MOELAB_PLUGIN exports for a describe function's result (options.h adds the Options overload).
inline const Descriptor& descriptor_of(const Descriptor& descriptor) { return descriptor; }

}  // namespace moelab

// Registers `Class` (constructed from (const Config&, RunContext&)) with the descriptor of what
// `describe_fn` returns: a Descriptor or the plugin's moelab::Options. Use once per plugin library.
#define MOELAB_PLUGIN(describe_fn, Class)                                                        \
  namespace moelab_plugin_exports {                                                              \
  int abi_version() { return ::moelab::kPluginAbiVersion; }                                      \
  const ::moelab::Descriptor& descriptor() {                                                     \
    static const ::moelab::Descriptor d = ::moelab::descriptor_of(describe_fn());                \
    return d;                                                                                    \
  }                                                                                              \
  ::moelab::Plugin* create(const ::moelab::Config& config, ::moelab::RunContext& context) {      \
    return new Class(config, context);                                                           \
  }                                                                                              \
  }                                                                                              \
  BOOST_DLL_ALIAS(moelab_plugin_exports::abi_version, moelab_abi_version)                        \
  BOOST_DLL_ALIAS(moelab_plugin_exports::descriptor, moelab_descriptor)                          \
  BOOST_DLL_ALIAS(moelab_plugin_exports::create, moelab_create)
