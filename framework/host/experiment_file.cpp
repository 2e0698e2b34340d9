#include "experiment_file.h"

#include <fmt/format.h>

#include <stdexcept>

namespace moelab {

namespace fs = std::filesystem;

namespace {
// Nodes are moved, never copied: a toml++ copy drops the source position that errors quote.
void merge_into(toml::table& base, toml::table&& over) {
  for (auto&& [key, node] : over) {
    toml::node* existing = base.get(key);
    if (existing && existing->is_table() && node.is_table()) {
      merge_into(*existing->as_table(), std::move(*node.as_table()));
    } else {
      base.insert_or_assign(key, std::move(node));
    }
  }
}

toml::table parse_file(const fs::path& file) {
  if (!fs::exists(file)) throw std::runtime_error(fmt::format("experiment file {} does not exist", file.string()));
  try {
    return toml::parse_file(file.string());
  } catch (const toml::parse_error& e) {
    throw std::runtime_error(fmt::format("{}:{}:{}: invalid TOML: {}", file.string(), e.source().begin.line,
                                         e.source().begin.column, e.description()));
  }
}

toml::table load_with_extends(const fs::path& file, std::vector<fs::path>& chain) {
  fs::path canonical = fs::weakly_canonical(file);
  for (const auto& seen : chain)
    if (seen == canonical) throw std::runtime_error(fmt::format("{}: `extends` forms a cycle", file.string()));
  chain.push_back(canonical);
  toml::table table = parse_file(file);
  toml::node* extends = table.get("extends");
  if (!extends) return table;
  auto base_name = extends->value<std::string>();
  if (!base_name)
    throw std::runtime_error(fmt::format("{}: `extends` must be a string (a path to another TOML file)", source_of(*extends)));
  fs::path base_file = fs::path(*base_name).is_absolute() ? fs::path(*base_name) : file.parent_path() / *base_name;
  if (!fs::exists(base_file))
    throw std::runtime_error(fmt::format("{}: extends \"{}\", but {} does not exist", source_of(*extends), *base_name,
                                         base_file.string()));
  toml::table merged = load_with_extends(base_file, chain);
  table.erase("extends");
  merge_into(merged, std::move(table));
  return merged;
}

void apply_override(toml::table& table, const std::string& assignment) {
  auto eq = assignment.find('=');
  if (eq == std::string::npos || eq == 0)
    throw std::runtime_error(fmt::format("--set {}: expected key.path=value", assignment));
  std::string key = assignment.substr(0, eq);
  std::string text = assignment.substr(eq + 1);
  std::string source = "--set " + assignment;

  toml::table parsed;
  try {
    parsed = toml::parse("value = " + text, std::string_view(source));
  } catch (const toml::parse_error&) {
    // A bare word such as /models/olmoe is a string; a TOML literal string keeps it verbatim, unless it
    // holds a quote or a control character.
    bool word = text.find_first_of("'\n") == std::string::npos;
    if (word) {
      try {
        parsed = toml::parse("value = '" + text + "'", std::string_view(source));
      } catch (const toml::parse_error&) {
        word = false;
      }
    }
    if (!word) throw std::runtime_error(fmt::format("--set {}: the value is neither TOML nor a plain word; quote it", assignment));
  }
  // "1\nfoo = 2" parses too: what follows the value would be dropped without a word.
  if (parsed.size() != 1)
    throw std::runtime_error(fmt::format("--set {}: the value must be one TOML value, found more after it", assignment));

  toml::table* at = &table;
  std::size_t start = 0;
  for (std::size_t dot; (dot = key.find('.', start)) != std::string::npos; start = dot + 1) {
    std::string part = key.substr(start, dot - start);
    toml::node* child = at->get(part);
    if (!child) {
      at->insert(part, toml::table{});
      child = at->get(part);
    }
    if (!child->is_table())
      throw std::runtime_error(fmt::format("--set {}: '{}' is a value, not a table", assignment, key.substr(0, dot)));
    at = child->as_table();
  }
  at->insert_or_assign(key.substr(start), std::move(*parsed.get("value")));
}
}  // namespace

std::string source_of(const toml::node& node) {
  const auto& src = node.source();
  if (!src.path) return "<unknown>";
  if (src.path->rfind("--set ", 0) == 0) return *src.path;
  return fmt::format("{}:{}", *src.path, src.begin.line);
}

toml::table load_experiment(const fs::path& file, const std::vector<std::string>& overrides) {
  std::vector<fs::path> chain;
  toml::table table = load_with_extends(file, chain);
  for (const auto& assignment : overrides) apply_override(table, assignment);
  return table;
}

}  // namespace moelab
