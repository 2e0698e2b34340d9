#include "objective_check.h"

#include "moelab/objective.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <optional>
#include <stdexcept>

namespace moelab {

namespace {

std::optional<ObjectiveNeeds> exported(const LoadedPlugin& plugin, const char* symbol) {
  if (!plugin.library->has(symbol)) return std::nullopt;
  return plugin.library->get_alias<const ObjectiveNeeds>(symbol);
}

// The objective tables a component names in its keys.
std::vector<std::string> objectives_named_by(const Component& component, const Descriptor& descriptor) {
  std::vector<std::string> ids;
  for (const auto& key : descriptor.keys) {
    if (key.choices.empty() || key.choices[0] != kind_name(Kind::objective)) continue;
    const toml::node* value = component.config->table.get(key.name);
    if (key.type == KeyType::component && !value->value<std::string>()->empty()) ids.push_back(*value->value<std::string>());
    if (key.type == KeyType::component_list)
      for (const auto& item : *value->as_array()) ids.push_back(*item.value<std::string>());
  }
  return ids;
}

// Checks objective `id` and, through its objective keys, every objective it uses; `chain` is the path
// from the stage's objective to this one.
void check_objective(const std::string& id, std::vector<std::string> chain, const ObjectiveNeeds& gives, const std::string& stage,
                     const ResolvedExperiment& experiment, const PluginRegistry& registry) {
  if (std::find(chain.begin(), chain.end(), id) != chain.end())
    throw std::runtime_error(fmt::format("objectives use each other in a cycle: [{}] -> [{}]", fmt::join(chain, "] -> ["), id));
  const Component& component = experiment.components.at(id);
  const LoadedPlugin& plugin = registry.get(component.plugin);
  const std::string used_by = chain.empty() ? "" : fmt::format(", used by [{}]", chain.back());
  if (std::optional<ObjectiveNeeds> needs = exported(plugin, "moelab_objective_needs"))
    require_needs(*needs, gives, fmt::format("[{}] ({}{})", id, component.plugin, used_by), stage);
  chain.push_back(id);
  for (const auto& used : objectives_named_by(component, *plugin.descriptor)) check_objective(used, chain, gives, stage, experiment, registry);
}

}  // namespace

void check_objective_needs(const ResolvedExperiment& experiment, const PluginRegistry& registry) {
  for (const auto& id : experiment.run.stages) {
    const Component& stage = experiment.components.at(id);
    const LoadedPlugin& plugin = registry.get(stage.plugin);
    std::optional<ObjectiveNeeds> gives = exported(plugin, "moelab_objective_inputs");
    if (!gives) continue;
    for (const auto& objective : objectives_named_by(stage, *plugin.descriptor))
      check_objective(objective, {}, *gives, fmt::format("[{}] ({})", id, stage.plugin), experiment, registry);
  }
}

}  // namespace moelab
