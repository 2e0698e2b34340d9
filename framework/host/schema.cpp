#include "schema.h"

#include "experiment_file.h"
#include "suggest.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <sstream>
#include <stdexcept>

namespace moelab {

namespace fs = std::filesystem;

namespace {

[[noreturn]] void fail(const std::string& where, const std::string& message) {
  throw std::runtime_error(where + ": " + message);
}

std::vector<std::string> key_names(const std::vector<ConfigKey>& keys) {
  std::vector<std::string> names;
  for (const auto& k : keys) names.push_back(k.name);
  return names;
}

std::string expected(const ConfigKey& key) {
  std::string text(key_type_name(key.type));
  if (key.type == KeyType::component) text = fmt::format("name of a {} table", key.choices.at(0));
  else if (key.type == KeyType::component_list) text = fmt::format("array of names of {} tables", key.choices.at(0));
  else if (!key.choices.empty()) text += fmt::format(" (one of: {})", fmt::join(key.choices, ", "));
  if (!key.range.text().empty()) text += fmt::format(" ({})", key.range.text());
  return text;
}

std::string found(const toml::node& node) {
  switch (node.type()) {
    case toml::node_type::string: return "string \"" + *node.value<std::string>() + "\"";
    case toml::node_type::integer: return "integer " + std::to_string(*node.value<long long>());
    case toml::node_type::floating_point: return fmt::format("number {}", *node.value<double>());
    case toml::node_type::boolean: return *node.value<bool>() ? "true" : "false";
    case toml::node_type::array: return "an array";
    case toml::node_type::table: return "a table";
    default: return "a date/time";
  }
}

bool array_of(const toml::node& node, bool (*is_item)(const toml::node&)) {
  const toml::array* a = node.as_array();
  if (!a) return false;
  for (const auto& item : *a)
    if (!is_item(item)) return false;
  return true;
}

bool type_matches(const toml::node& node, KeyType type) {
  switch (type) {
    case KeyType::boolean: return node.is_boolean();
    case KeyType::integer: return node.is_integer();
    case KeyType::real: return node.is_number();
    case KeyType::string:
    case KeyType::path:
    case KeyType::component: return node.is_string();
    case KeyType::integer_list: return array_of(node, [](const toml::node& n) { return n.is_integer(); });
    case KeyType::real_list: return array_of(node, [](const toml::node& n) { return n.is_number(); });
    case KeyType::string_list:
    case KeyType::component_list: return array_of(node, [](const toml::node& n) { return n.is_string(); });
  }
  return false;
}

// A number outside the key's range (a number list: its first such item), or nullptr.
const toml::node* out_of_range(const toml::node& node, const Range& range) {
  auto outside = [&](const toml::node& n) { return n.is_number() && !range.contains(*n.value<double>()); };
  if (const toml::array* items = node.as_array()) {
    for (const auto& item : *items)
      if (outside(item)) return &item;
    return nullptr;
  }
  return outside(node) ? &node : nullptr;
}

fs::path absolute_from(const std::string& value, const toml::node* set_by) {
  if (value.empty() || value.rfind("builtin:", 0) == 0 || value[0] == '@') return value;  // "@stage/file": in the run folder
  fs::path p(value);
  if (p.is_absolute()) return p.lexically_normal();
  const auto& src = set_by ? set_by->source().path : nullptr;
  bool from_file = src && src->rfind("--set ", 0) != 0;
  fs::path base = from_file ? fs::absolute(*src).parent_path() : fs::current_path();
  return (base / p).lexically_normal();
}

}  // namespace

std::shared_ptr<Config::Impl> check_table(const std::string& id, const toml::table& table, const TableSchema& schema,
                                          const std::string& table_where) {
  auto impl = std::make_shared<Config::Impl>();
  impl->id = id;
  std::vector<std::string> names = key_names(schema.keys);
  for (const auto& [key, node] : table) {
    std::string k(key.str());
    if ((schema.plugin_key && k == "plugin") || (schema.skip_tables && node.is_table())) continue;
    bool known = false;
    for (const auto& n : names) known = known || n == k;
    if (!known) {
      std::string place = id.empty() ? "the top level" : "[" + id + "]";
      fail(source_of(node), fmt::format("unknown key '{}' in {}{} ({} accepts: {})", k, place, did_you_mean(k, names), schema.owner,
                                        fmt::join(names, ", ")));
    }
  }
  for (const auto& key : schema.keys) {
    const toml::node* node = table.get(key.name);
    toml::table parsed_default;
    if (!node) {
      if (key.default_toml.empty())
        fail(table_where, fmt::format("[{}] needs key '{}' ({}): {}", id, key.name, expected(key), key.help));
      parsed_default = toml::parse("v = " + key.default_toml);
      node = parsed_default.get("v");
      impl->where[key.name] = "default";
    } else {
      impl->where[key.name] = source_of(*node);
    }
    if (!type_matches(*node, key.type))
      fail(impl->where[key.name], fmt::format("key '{}' must be {}, found {}", key.name, expected(key), found(*node)));
    if (key.type == KeyType::string && !key.choices.empty()) {
      std::string value = *node->value<std::string>();
      bool ok = false;
      for (const auto& c : key.choices) ok = ok || c == value;
      if (!ok)
        fail(impl->where[key.name], fmt::format("key '{}' must be one of: {}; found \"{}\"{}", key.name,
                                                fmt::join(key.choices, ", "), value, did_you_mean(value, key.choices)));
    }
    if (const toml::node* bad = out_of_range(*node, key.range))
      fail(impl->where[key.name], fmt::format("key '{}' must be {}{}, found {}", key.name, node->is_array() ? "an array of numbers " : "",
                                              key.range.text(), found(*bad)));
    if (key.type == KeyType::path) {
      const toml::node* set_by = impl->where[key.name] == "default" ? nullptr : node;
      impl->table.insert(key.name, absolute_from(*node->value<std::string>(), set_by).string());
    } else {
      impl->table.insert(key.name, *node);
    }
  }
  return impl;
}

namespace {

// Collects tables with a `plugin` key; plain tables (like [data]) only group components.
void collect_components(const toml::table& table, const std::string& prefix, std::map<std::string, const toml::table*>& out) {
  for (const auto& [key, node] : table) {
    std::string id = prefix.empty() ? std::string(key.str()) : prefix + "." + std::string(key.str());
    if (prefix.empty() && (key.str() == "model" || !node.is_table())) continue;
    if (!node.is_table())
      fail(source_of(node), fmt::format("'{}' is a value inside [{}], which holds no plugin = \"...\"; "
                                        "every table other than [model] configures a plugin",
                                        id, prefix));
    const toml::table& child = *node.as_table();
    if (child.contains("plugin")) out[id] = &child;
    else if (child.empty()) fail(source_of(node), fmt::format("[{}] is empty; add plugin = \"<name>\"", id));
    else collect_components(child, id, out);
  }
}

toml::table as_toml(const Config::Impl& impl, const std::string& plugin) {
  toml::table t;
  if (!plugin.empty()) t.insert("plugin", plugin);
  for (const auto& [k, v] : impl.table) t.insert(k, v);
  return t;
}

void insert_dotted(toml::table& root, const std::string& id, toml::table value) {
  toml::table* at = &root;
  std::size_t start = 0;
  for (std::size_t dot; (dot = id.find('.', start)) != std::string::npos; start = dot + 1) {
    std::string part = id.substr(start, dot - start);
    if (!at->contains(part)) at->insert(part, toml::table{});
    at = at->get(part)->as_table();
  }
  at->insert_or_assign(id.substr(start), std::move(value));
}

}  // namespace

std::vector<fs::path> experiment_plugin_path(const toml::table& merged) {
  std::vector<fs::path> folders;
  const toml::node* node = merged.get("plugin_path");
  if (!node) return folders;
  if (!type_matches(*node, KeyType::string_list))
    fail(source_of(*node), "key 'plugin_path' must be an array of strings (folders), found " + found(*node));
  for (const auto& item : *node->as_array()) folders.push_back(absolute_from(*item.value<std::string>(), node));
  return folders;
}

ResolvedExperiment resolve_experiment(const toml::table& merged, const fs::path& file, const PluginRegistry& registry) {
  ResolvedExperiment out;
  std::string file_where = file.string();

  auto host = check_table("", merged, {run_options().keys(), "the top level", false, true}, file_where);
  out.run = run_options().read(Config(host));
  if (out.run.name.empty()) out.run.name = file.stem().string();
  host->table.insert_or_assign("name", out.run.name);

  const toml::node* model_node = merged.get("model");
  if (model_node && !model_node->is_table()) fail(source_of(*model_node), "'model' must be a table ([model])");
  const toml::table no_model;  // bound by reference: a copied table would lose the positions errors quote
  const toml::table& model_table = model_node ? *model_node->as_table() : no_model;
  out.model_table = check_table("model", model_table, {model_options().keys(), "[model]"}, file_where);
  out.model = model_options().read(Config(out.model_table));
  if (!out.model.tokenizer.empty() && !fs::is_regular_file(out.model.tokenizer))
    fail(Config(out.model_table).where("tokenizer"), fmt::format("[model] tokenizer = \"{}\": no such file (a tokenizer.json)",
                                                                 out.model.tokenizer.string()));

  std::map<std::string, const toml::table*> tables;
  collect_components(merged, "", tables);
  for (const auto& [id, table] : tables) {
    const toml::node* plugin_node = table->get("plugin");
    if (!plugin_node->is_string()) fail(source_of(*plugin_node), fmt::format("[{}] plugin must be a string", id));
    std::string plugin = *plugin_node->value<std::string>();
    const LoadedPlugin* loaded = registry.find(plugin);
    if (!loaded) {
      try {
        registry.get(plugin);
      } catch (const std::exception& e) {
        fail(source_of(*plugin_node), fmt::format("[{}] {}", id, e.what()));
      }
    }
    const Descriptor& d = *loaded->descriptor;
    out.components[id] = {plugin, check_table(id, *table, {d.keys, "plugin " + d.name, true}, source_of(*plugin_node))};
  }

  auto kind_of = [&](const std::string& id) { return registry.get(out.components.at(id).plugin).descriptor->kind; };
  auto check_reference = [&](const std::string& where, const std::string& id, Kind kind, const std::string& what) {
    std::vector<std::string> candidates;
    for (const auto& [cid, c] : out.components)
      if (kind_of(cid) == kind) candidates.push_back(cid);
    if (!out.components.count(id) || kind_of(id) != kind)
      fail(where, fmt::format("{} '{}' is not a {} table{}; {} tables here: {}", what, id, kind_name(kind),
                              did_you_mean(id, candidates), kind_name(kind),
                              candidates.empty() ? "none" : fmt::format("{}", fmt::join(candidates, ", "))));
  };
  for (const auto& id : out.run.stages) check_reference(host->where.at("stages"), id, Kind::stage, "stage");
  for (const auto& [id, component] : out.components) {
    const Descriptor& d = *registry.get(component.plugin).descriptor;
    const Config config(component.config);
    for (const auto& key : d.keys) {
      std::vector<std::string> named;
      if (key.type == KeyType::component) named = {config.get_string(key.name)};
      if (key.type == KeyType::component_list) named = config.get_strings(key.name);
      for (const auto& referenced : named)
        if (!referenced.empty())
          check_reference(config.where(key.name), referenced, kind_from_name(key.choices.at(0)), fmt::format("[{}] {} =", id, key.name));
    }
  }

  out.table = as_toml(*host, "");
  out.table.insert("model", as_toml(*out.model_table, ""));
  for (const auto& [id, component] : out.components) insert_dotted(out.table, id, as_toml(*component.config, component.plugin));
  return out;
}

std::string to_toml(const toml::table& table) {
  std::ostringstream ss;
  ss << table << "\n";
  return ss.str();
}

}  // namespace moelab
