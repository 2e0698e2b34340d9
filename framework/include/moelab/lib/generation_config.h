// What a checkpoint's own files say about generation: the stop ids of config.json and
// generation_config.json, and generation_config.json's defaults, read from the model folder
// (RunContext::model_folder) as transformers reads them.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <vector>

namespace moelab {

// Every eos_token_id (an id or a list of ids) of config.json and then of generation_config.json when the
// folder has one, each once. An eos_token_id of another type is an error naming the file.
std::vector<std::int64_t> stop_token_ids(const std::filesystem::path& model_folder);

// generation_config.json of the folder, or an empty object when it has none.
nlohmann::json generation_config(const std::filesystem::path& model_folder);

}  // namespace moelab
