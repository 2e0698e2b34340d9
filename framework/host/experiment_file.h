// Reading an experiment file: `extends` chains merged (the extending file wins, table by table),
// then `--set key.path=value` overrides, whose values are parsed as TOML (bare words as strings).
#pragma once

#include <toml++/toml.h>

#include <filesystem>
#include <string>
#include <vector>

namespace moelab {

toml::table load_experiment(const std::filesystem::path& file, const std::vector<std::string>& overrides);

// "file:line" of a node, or "--set ..." for an override.
std::string source_of(const toml::node& node);

}  // namespace moelab
