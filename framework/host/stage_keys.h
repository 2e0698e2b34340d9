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

namespace moelab {

struct StageKey {
  std::string hash;  // 16 hex digits
  std::string text;  // what was hashed (TOML), kept beside the stage's outputs for a reader
};

// The key of every stage in experiment.run.stages. `model_folder` is [model] path resolved (built-in
// models sit beside the binary).
std::map<std::string, StageKey> stage_keys(const ResolvedExperiment& experiment, const PluginRegistry& registry,
                                           const std::filesystem::path& model_folder);

}  // namespace moelab
