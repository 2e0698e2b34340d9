// Turns a merged experiment table into a resolved experiment: every key checked against the host's
// options or its plugin's descriptor, defaults filled in, paths made absolute.
#pragma once

#include "config_impl.h"
#include "plugin_registry.h"
#include "run_options.h"

#include <toml++/toml.h>

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
  RunOptions run;                                   // the top level; run.name is never empty
  ModelOptions model;                               // [model]
  std::shared_ptr<const Config::Impl> model_table;  // [model] as validated: where each key was set, for errors
  std::map<std::string, Component> components;      // by table id ("train", "data.eval")
  toml::table table;                                // everything above as TOML, for config.resolved.toml
};

// The `plugin_path` folders of an experiment (absolute), read before plugins are scanned.
std::vector<std::filesystem::path> experiment_plugin_path(const toml::table& merged);

ResolvedExperiment resolve_experiment(const toml::table& merged, const std::filesystem::path& file,
                                      const PluginRegistry& registry);

// How one table is checked: its keys and who declares them.
struct TableSchema {
  const std::vector<ConfigKey>& keys;
  std::string owner;            // for the list of accepted keys: "plugin jsonl", "the top level", "[model]"
  bool plugin_key = false;      // a component's table: `plugin = "..."` is allowed
  bool skip_tables = false;     // the top level: sub-tables are checked on their own
};

// Checks `table` (the table [id], which starts at `where`) against `schema`: unknown keys (with the
// closest name and the accepted ones), types, choices, ranges, required keys. Errors name file:line.
// Returns its config with defaults filled in and paths absolute.
std::shared_ptr<Config::Impl> check_table(const std::string& id, const toml::table& table, const TableSchema& schema,
                                          const std::string& where);

std::string to_toml(const toml::table& table);

}  // namespace moelab
