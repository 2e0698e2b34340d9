// Opens what a run will read before any stage runs (at --dry-run and at the start of every run), so a
// missing evaluation file or a broken model config fails in seconds, not after hours of training:
// the model's config.json and tokenizer.json, every input file named by the tables the stages use, and
// every "@stage/file" reference (its stage must run before the stage that reads it).
#pragma once

#include "plugin_registry.h"
#include "schema.h"

#include <filesystem>

namespace moelab {

// Throws naming the table, key, where it was set and what is wrong.
void check_inputs(const ResolvedExperiment& experiment, const PluginRegistry& registry, const std::filesystem::path& model_folder);

}  // namespace moelab
