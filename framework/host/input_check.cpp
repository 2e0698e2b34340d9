#include "input_check.h"

#include "architecture.h"
#include "experiment_run.h"
#include "moelab/lib/vocab_check.h"
#include "moelab/tokenizer.h"
#include "stage_keys.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <set>
#include <stdexcept>

namespace moelab {

namespace fs = std::filesystem;

namespace {
// A `layers` list names MoE decoder layers of this model, each once.
void check_layer_list(const toml::node& node, const std::string& id, const Config& config, const ModelConfig& model) {
  const toml::array* items = node.as_array();
  if (!items) return;
  std::set<std::int64_t> seen;
  for (const auto& item : *items) {
    const std::int64_t layer = item.value<std::int64_t>().value_or(-1);
    const std::string setting = fmt::format("[{}] layers ({})", id, config.where("layers"));
    if (layer < 0 || layer >= model.num_layers)
      throw std::runtime_error(fmt::format("{}: layer {} is not a decoder layer of this model (0..{})", setting, layer, model.num_layers - 1));
    if (!model.moe_layer.at(static_cast<std::size_t>(layer)))
      throw std::runtime_error(fmt::format("{}: layer {} is a dense layer of this model; routers exist only in MoE layers", setting, layer));
    if (!seen.insert(layer).second) throw std::runtime_error(fmt::format("{}: layer {} is listed twice", setting, layer));
  }
}
}  // namespace

void check_inputs(const ResolvedExperiment& experiment, const PluginRegistry& registry, const fs::path& model_folder) {
  const ModelConfig model = read_model_config(model_folder);
  if (const fs::path file = tokenizer_file(experiment, model_folder); fs::exists(file)) {
    ModelInfo info;
    info.vocab_size = model.vocab_size;
    check_tokenizer_fits_model(*Tokenizer::from_file(file), file, info, model_folder);
  }
  const std::vector<std::string>& stages = experiment.run.stages;
  for (auto stage = stages.begin(); stage != stages.end(); ++stage) {
    for (const std::string& id : tables_reached(experiment, registry, *stage)) {
      const toml::table& table = *component_table(experiment, id);
      const Config config(experiment.components.at(id).config);
      for (const ConfigKey& key : registry.get(experiment.components.at(id).plugin).descriptor->keys) {
        const toml::node* node = table.get(key.name);
        if (key.type == KeyType::integer_list && key.name == "layers" && node) check_layer_list(*node, id, config, model);
        if (key.type != KeyType::path || !node || !node->is_string()) continue;
        const std::string value = node->as_string()->get();
        if (value.empty()) continue;
        const std::string setting = fmt::format("[{}] {} = \"{}\" ({})", id, key.name, value, config.where(key.name));
        if (value[0] != '@') {
          if (!fs::exists(value)) throw std::runtime_error(fmt::format("{}: no such file or folder", setting));
          continue;
        }
        const std::string source = value.substr(1, value.find('/') - 1);
        if (std::find(stages.begin(), stage, source) == stage)
          throw std::runtime_error(fmt::format("{}: reads the output of stage [{}], which does not run before [{}] (stages = [{}])", setting,
                                               source, *stage, fmt::join(stages, ", ")));
      }
    }
  }
}

}  // namespace moelab
