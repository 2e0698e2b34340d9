// What a stage's outputs depend on, as one key per stage, so that --resume reuses a finished stage only
// when nothing it read has changed: its own table, every table it names through component keys (and
// theirs), [model], the seed, the size and modification time of every input file those tables name (the
// model's files included), and the keys of the earlier stages whose outputs ("@stage/...") it reads.
#pragma once

#include "plugin_registry.h"
#include "schema.h"

#include <filesystem>
#include <map>
#include <string>
#include <vector>

namespace moelab {

struct StageKey {
  std::string hash;  // 16 hex digits
  std::string text;  // what was hashed (TOML), kept beside the stage's outputs for a reader
};

// "size@mtime" of a file, or "name=size@mtime;" of each file directly inside a folder ("missing" for
// one that cannot be read): what tells that an input changed without reading it.
std::string file_state(const std::filesystem::path& path);

// The component tables a stage uses: itself, then each table named by a component key, depth first.
std::vector<std::string> tables_reached(const ResolvedExperiment& experiment, const PluginRegistry& registry, const std::string& stage);
// The resolved table [id] ("data.eval" is [data] [eval]), or nullptr.
const toml::table* component_table(const ResolvedExperiment& experiment, const std::string& id);

// The key of every stage in experiment.run.stages. `model_folder` is [model] path resolved (built-in
// models sit beside the binary).
std::map<std::string, StageKey> stage_keys(const ResolvedExperiment& experiment, const PluginRegistry& registry,
                                           const std::filesystem::path& model_folder);

}  // namespace moelab
