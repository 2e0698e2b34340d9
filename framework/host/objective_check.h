// Before anything runs (runexp --dry-run included): each stage that trains with an objective must be
// able to give it, and every objective it uses (add_to, task, ...), what they read.
#pragma once

#include "plugin_registry.h"
#include "schema.h"

namespace moelab {

// Throws, naming the objective, the need and the stage, when a stage library's exported inputs
// (MOELAB_OBJECTIVE_INPUTS) lack what an objective library exports as its needs (MOELAB_OBJECTIVE_PLUGIN),
// or when objectives use each other in a cycle. Libraries that export neither are not checked.
void check_objective_needs(const ResolvedExperiment& experiment, const PluginRegistry& registry);

}  // namespace moelab
