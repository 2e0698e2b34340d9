#include "moelab/lib/generation_config.h"

#include "moelab/lib/json_read.h"

#include <fmt/format.h>

#include <algorithm>
#include <stdexcept>

namespace moelab {

namespace {

void add_eos_ids(const std::filesystem::path& file, const nlohmann::json& j, std::vector<std::int64_t>& ids) {
  if (!j.is_object()) throw std::runtime_error(fmt::format("{}: expected a JSON object", file.string()));
  const nlohmann::json eos = j.value("eos_token_id", nlohmann::json());
  if (eos.is_null()) return;
  const nlohmann::json list = eos.is_array() ? eos : nlohmann::json::array({eos});
  for (const auto& id : list) {
    if (!id.is_number_integer() || id.get<std::int64_t>() < 0)
      throw std::runtime_error(fmt::format("{}: eos_token_id: expected an id or a list of ids, found {}", file.string(), eos.dump()));
    if (std::find(ids.begin(), ids.end(), id.get<std::int64_t>()) == ids.end()) ids.push_back(id.get<std::int64_t>());
  }
}

}  // namespace

std::vector<std::int64_t> stop_token_ids(const std::filesystem::path& model_folder) {
  std::vector<std::int64_t> ids;
  add_eos_ids(model_folder / "config.json", read_json_file(model_folder / "config.json"), ids);
  const std::filesystem::path generation = model_folder / "generation_config.json";
  if (std::filesystem::exists(generation)) add_eos_ids(generation, read_json_file(generation), ids);
  return ids;
}

nlohmann::json generation_config(const std::filesystem::path& model_folder) {
  const std::filesystem::path file = model_folder / "generation_config.json";
  if (!std::filesystem::exists(file)) return nlohmann::json::object();
  nlohmann::json j = read_json_file(file);
  if (!j.is_object()) throw std::runtime_error(fmt::format("{}: expected a JSON object", file.string()));
  const JsonValue root(j, file.string());
  if (root.has("max_new_tokens") && root["max_new_tokens"].get<std::int64_t>() < 1)
    throw root["max_new_tokens"].error(fmt::format("expected a positive number of tokens, found {}", j["max_new_tokens"].dump()));
  return j;
}

}  // namespace moelab
