#include "stage_keys.h"

#include <fmt/format.h>

#include <chrono>
#include <functional>
#include <set>
#include <sstream>

namespace moelab {

namespace fs = std::filesystem;

namespace {

// 64-bit FNV-1a: the same text gives the same key on every machine and build.
std::string fnv1a(const std::string& text) {
  std::uint64_t h = 14695981039346656037ull;
  for (unsigned char c : text) h = (h ^ c) * 1099511628211ull;
  return fmt::format("{:016x}", h);
}

}  // namespace

std::string file_state(const fs::path& path) {
  auto one = [](const fs::path& file) {
    std::error_code ec;
    auto size = fs::file_size(file, ec);
    auto time = fs::last_write_time(file, ec);
    if (ec) return std::string("missing");
    return fmt::format("{}@{}", size, time.time_since_epoch().count());
  };
  std::error_code ec;
  if (!fs::is_directory(path, ec)) return one(path);
  std::set<std::string> files;
  for (const auto& entry : fs::directory_iterator(path, ec))
    if (entry.is_regular_file()) files.insert(entry.path().filename().string() + "=" + one(entry.path()));
  std::string out;
  for (const auto& f : files) out += f + ";";
  return out;
}

namespace {

const toml::table* table_at(const toml::table& root, const std::string& id) {
  const toml::table* t = &root;
  std::size_t start = 0;
  while (t) {
    std::size_t dot = std::min(id.find('.', start), id.size());
    t = t->get_as<toml::table>(id.substr(start, dot - start));
    if (dot == id.size()) return t;
    start = dot + 1;
  }
  return nullptr;
}

// Stage ids named by "@stage/..." anywhere in `node`.
void stage_references(const toml::node& node, std::set<std::string>& out) {
  if (auto s = node.as_string()) {
    const std::string& v = s->get();
    if (!v.empty() && v[0] == '@') out.insert(v.substr(1, v.find('/') - 1));
  } else if (auto a = node.as_array()) {
    for (const auto& item : *a) stage_references(item, out);
  } else if (auto t = node.as_table()) {
    for (const auto& [k, v] : *t) stage_references(v, out);
  }
}

}  // namespace

std::vector<std::string> tables_reached(const ResolvedExperiment& experiment, const PluginRegistry& registry, const std::string& stage) {
  std::vector<std::string> order;
  std::set<std::string> seen;
  std::function<void(const std::string&)> visit = [&](const std::string& id) {
    if (!seen.insert(id).second) return;
    const toml::table* table = table_at(experiment.table, id);
    auto component = experiment.components.find(id);
    if (!table || component == experiment.components.end()) return;
    order.push_back(id);
    const LoadedPlugin* plugin = registry.find(component->second.plugin);
    if (!plugin) return;
    for (const ConfigKey& key : plugin->descriptor->keys) {
      const toml::node* value = table->get(key.name);
      if (!value) continue;
      if (key.type == KeyType::component) {
        if (auto s = value->as_string()) visit(s->get());
      } else if (key.type == KeyType::component_list) {
        if (auto a = value->as_array())
          for (const auto& item : *a)
            if (auto s = item.as_string()) visit(s->get());
      }
    }
  };
  visit(stage);
  return order;
}

std::map<std::string, StageKey> stage_keys(const ResolvedExperiment& experiment, const PluginRegistry& registry,
                                           const fs::path& model_folder) {
  std::map<std::string, StageKey> keys;
  for (const std::string& stage : experiment.run.stages) {
    toml::table hashed;
    hashed.insert("seed", experiment.run.seed);
    if (const toml::table* model = table_at(experiment.table, "model")) hashed.insert("model", *model);
    toml::table files;
    files.insert("model", file_state(model_folder));
    if (!experiment.model.tokenizer.empty()) files.insert("tokenizer", file_state(experiment.model.tokenizer));
    toml::table tables;
    for (const std::string& id : tables_reached(experiment, registry, stage)) {
      const toml::table& table = *table_at(experiment.table, id);
      tables.insert(id, table);
      for (const ConfigKey& key : registry.get(experiment.components.at(id).plugin).descriptor->keys)
        if (const toml::node* value = table.get(key.name); value && key.type == KeyType::path)
          if (auto s = value->as_string(); s && !s->get().empty() && s->get()[0] != '@') files.insert(id + "." + key.name, file_state(s->get()));
    }
    hashed.insert("tables", tables);
    hashed.insert("files", files);
    std::set<std::string> inputs;
    stage_references(hashed, inputs);
    toml::table input_keys;
    for (const auto& input : inputs)
      if (auto it = keys.find(input); it != keys.end()) input_keys.insert(input, it->second.hash);
    hashed.insert("inputs", input_keys);
    std::ostringstream text;
    text << hashed;
    keys[stage] = {fnv1a(text.str()), text.str()};
  }
  return keys;
}

const toml::table* component_table(const ResolvedExperiment& experiment, const std::string& id) { return table_at(experiment.table, id); }

}  // namespace moelab
