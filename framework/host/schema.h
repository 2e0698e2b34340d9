// Turns a merged experiment table into a resolved experiment: every key checked against the host's
// declarations or its plugin's descriptor, defaults filled in, paths made absolute.
#pragma once

#include "../sdk/config_impl.h"
#include "plugin_registry.h"

#include <toml++/toml.h>

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace moelab {

struct Component {
  std::string plugin;
  std::shared_ptr<const Config::Impl> config;
};

struct ResolvedExperiment {
  std::string name;
  std::uint64_t seed = 0;
  std::string log_level;
  std::filesystem::path run_dir;
  std::vector<std::string> stages;                // component ids, in order
  std::shared_ptr<const Config::Impl> model;      // the [model] table
  std::map<std::string, Component> components;    // by table id ("train", "data.eval")
  toml::table table;                              // everything above as TOML, for config.resolved.toml
};

// The `plugin_path` folders of an experiment (absolute), read before plugins are scanned.
std::vector<std::filesystem::path> experiment_plugin_path(const toml::table& merged);

ResolvedExperiment resolve_experiment(const toml::table& merged, const std::filesystem::path& file,
                                      const PluginRegistry& registry);

std::string to_toml(const toml::table& table);

}  // namespace moelab
