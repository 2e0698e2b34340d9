#include "input_check.h"

#include "architecture.h"
#include "moelab/lib/vocab_check.h"
#include "moelab/tokenizer.h"
#include "stage_keys.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <stdexcept>

namespace moelab {

namespace fs = std::filesystem;

void check_inputs(const ResolvedExperiment& experiment, const PluginRegistry& registry, const fs::path& model_folder) {
  const ModelConfig config = read_model_config(model_folder);
  if (const fs::path file = model_folder / "tokenizer.json"; fs::exists(file)) {
    ModelInfo info;
    info.vocab_size = config.vocab_size;
    check_tokenizer_fits_model(*Tokenizer::from_file(file), file, info, model_folder);
  }
  const std::vector<std::string>& stages = experiment.run.stages;
  for (auto stage = stages.begin(); stage != stages.end(); ++stage) {
    for (const std::string& id : tables_reached(experiment, registry, *stage)) {
      const toml::table& table = *component_table(experiment, id);
      const Config config(experiment.components.at(id).config);
      for (const ConfigKey& key : registry.get(experiment.components.at(id).plugin).descriptor->keys) {
        const toml::node* node = table.get(key.name);
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
