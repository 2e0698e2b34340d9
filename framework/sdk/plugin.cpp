#include "moelab/analyzer.h"
#include "moelab/context.h"
#include "moelab/dataset.h"
#include "moelab/embedder.h"
#include "moelab/model.h"
#include "moelab/objective.h"
#include "moelab/options.h"
#include "moelab/sampler.h"
#include "moelab/stage.h"
#include "moelab/transform.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <array>
#include <stdexcept>

namespace moelab {

namespace {
constexpr std::array<std::pair<Kind, std::string_view>, 7> kKinds{{{Kind::objective, "objective"},
                                                                   {Kind::dataset, "dataset"},
                                                                   {Kind::sampler, "sampler"},
                                                                   {Kind::analyzer, "analyzer"},
                                                                   {Kind::transform, "transform"},
                                                                   {Kind::embedder, "embedder"},
                                                                   {Kind::stage, "stage"}}};
}  // namespace

std::string_view kind_name(Kind kind) {
  for (const auto& [k, name] : kKinds)
    if (k == kind) return name;
  return "unknown";
}

Kind kind_from_name(std::string_view name) {
  std::vector<std::string_view> names;
  for (const auto& [k, n] : kKinds) {
    if (n == name) return k;
    names.push_back(n);
  }
  throw std::runtime_error(fmt::format("unknown plugin kind '{}'; expected one of: {}", name, fmt::join(names, ", ")));
}

std::string_view key_type_name(KeyType type) {
  switch (type) {
    case KeyType::boolean: return "boolean";
    case KeyType::integer: return "integer";
    case KeyType::real: return "number";
    case KeyType::string: return "string";
    case KeyType::path: return "path (string)";
    case KeyType::integer_list: return "array of integers";
    case KeyType::real_list: return "array of numbers";
    case KeyType::string_list: return "array of strings";
    case KeyType::component: return "component name (string)";
    case KeyType::component_list: return "array of component names";
  }
  return "unknown";
}

Descriptor::Descriptor(std::string name_, Kind kind_, std::string version_, std::string description_)
    : name(std::move(name_)), kind(kind_), version(std::move(version_)), description(std::move(description_)) {}

Descriptor& Descriptor::add(ConfigKey key) {
  detail::add_key(keys, std::move(key), "plugin " + name);
  return *this;
}

using detail::toml_literal;

Descriptor& Descriptor::flag(const std::string& key, bool v, const std::string& help) {
  return add({key, KeyType::boolean, toml_literal(v), help, {}});
}
Descriptor& Descriptor::integer(const std::string& key, long long v, const std::string& help) {
  return add({key, KeyType::integer, toml_literal(v), help, {}});
}
Descriptor& Descriptor::real(const std::string& key, double v, const std::string& help) {
  return add({key, KeyType::real, toml_literal(v), help, {}});
}
Descriptor& Descriptor::string(const std::string& key, const std::string& v, const std::string& help) {
  return add({key, KeyType::string, toml_literal(v), help, {}});
}
Descriptor& Descriptor::choice(const std::string& key, const std::string& v, std::vector<std::string> choices,
                               const std::string& help) {
  return add({key, KeyType::string, toml_literal(v), help, std::move(choices)});
}
Descriptor& Descriptor::path(const std::string& key, const std::string& v, const std::string& help) {
  return add({key, KeyType::path, toml_literal(v), help, {}});
}
Descriptor& Descriptor::integers(const std::string& key, const std::vector<long long>& v, const std::string& help) {
  return add({key, KeyType::integer_list, toml_literal(v), help, {}});
}
Descriptor& Descriptor::reals(const std::string& key, const std::vector<double>& v, const std::string& help) {
  return add({key, KeyType::real_list, toml_literal(v), help, {}});
}
Descriptor& Descriptor::strings(const std::string& key, const std::vector<std::string>& v, const std::string& help) {
  return add({key, KeyType::string_list, toml_literal(v), help, {}});
}
Descriptor& Descriptor::component(const std::string& key, Kind k, const std::string& default_id, const std::string& help) {
  return add({key, KeyType::component, default_id.empty() ? "" : toml_literal(default_id), help, {std::string(kind_name(k))}});
}
Descriptor& Descriptor::optional_component(const std::string& key, Kind k, const std::string& help) {
  return add({key, KeyType::component, toml_literal(std::string()), help, {std::string(kind_name(k))}});
}
Descriptor& Descriptor::required(const std::string& key, KeyType type, const std::string& help) {
  return add({key, type, "", help, {}});
}

Plugin::~Plugin() = default;
Objective::~Objective() = default;
Dataset::~Dataset() = default;
Sampler::~Sampler() = default;
Analyzer::~Analyzer() = default;
Transform::~Transform() = default;
Embedder::~Embedder() = default;
Stage::~Stage() = default;
RunContext::~RunContext() = default;
Model::~Model() = default;

void RunContext::record_histogram(const std::string&, const std::vector<double>&, std::int64_t) {}
void RunContext::record_image(const std::string&, const std::filesystem::path&, std::int64_t) {}

std::filesystem::path RunContext::run_path(const std::filesystem::path& path) const {
  std::string text = path.string();
  return !text.empty() && text[0] == '@' ? run_dir() / text.substr(1) : path;
}

std::uint64_t RunContext::seed_for(const std::string& stream) const {
  // FNV-1a of the stream name mixed with the run seed through splitmix64.
  std::uint64_t h = 1469598103934665603ull;
  for (unsigned char c : stream) h = (h ^ c) * 1099511628211ull;
  std::uint64_t z = seed() + 0x9e3779b97f4a7c15ull * (h | 1);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

}  // namespace moelab
