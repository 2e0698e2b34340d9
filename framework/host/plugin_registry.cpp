#include "plugin_registry.h"

#include "elf_check.h"
#include "moelab/lib/log.h"
#include "suggest.h"

#include <boost/dll/runtime_symbol_info.hpp>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cstdlib>
#include <stdexcept>

namespace moelab {

namespace fs = std::filesystem;

std::vector<fs::path> PluginRegistry::default_search_path() {
  std::vector<fs::path> folders;
  fs::path bin = boost::dll::program_location().parent_path();
  for (const fs::path& candidate : {bin / ".." / "plugins", bin / ".." / "lib" / "moelab" / "plugins"})
    if (fs::is_directory(candidate)) folders.push_back(fs::weakly_canonical(candidate));
  if (const char* env = std::getenv("MOELAB_PLUGIN_PATH")) {
    std::string list = env;
    std::size_t start = 0;
    while (start <= list.size()) {
      std::size_t colon = std::min(list.find(':', start), list.size());
      if (colon > start) folders.emplace_back(list.substr(start, colon - start));
      start = colon + 1;
    }
  }
  return folders;
}

void PluginRegistry::scan(const std::vector<fs::path>& folders) {
  for (const auto& folder : folders) {
    if (std::find(searched_.begin(), searched_.end(), folder) != searched_.end()) continue;
    searched_.push_back(folder);
    if (!fs::is_directory(folder)) continue;
    std::vector<fs::path> files;
    for (const auto& entry : fs::directory_iterator(folder)) {
      std::string name = entry.path().filename().string();
      if (entry.is_regular_file() && name.rfind("moelab_", 0) == 0 && entry.path().extension() == ".so")
        files.push_back(entry.path());
    }
    std::sort(files.begin(), files.end());
    for (const auto& file : files) {
      // A library still being written (or cut short) would kill the process in dlopen: skip it, say so.
      if (std::string problem = elf_shared_object_problem(file); !problem.empty()) {
        log::warn("skipping plugin library {}: {}", file.string(), problem);
        skipped_.emplace_back(file, problem);
        continue;
      }
      load(file);
    }
  }
}

void PluginRegistry::load(const fs::path& file) {
  LoadedPlugin plugin;
  plugin.file = file;
  if (std::string problem = elf_shared_object_problem(file); !problem.empty())
    throw std::runtime_error(fmt::format("cannot load plugin library {}: {}", file.string(), problem));
  try {
    plugin.library = std::make_shared<boost::dll::shared_library>(file, boost::dll::load_mode::rtld_now);
  } catch (const std::exception& e) {
    throw std::runtime_error(fmt::format("cannot load plugin library {}: {}", file.string(), e.what()));
  }
  for (const char* symbol : {"moelab_abi_version", "moelab_descriptor", "moelab_create"})
    if (!plugin.library->has(symbol))
      throw std::runtime_error(fmt::format("{} is not a moelab plugin: it does not export '{}' (use MOELAB_PLUGIN)",
                                           file.string(), symbol));
  int abi = plugin.library->get_alias<int()>("moelab_abi_version")();
  if (abi != kPluginAbiVersion)
    throw std::runtime_error(fmt::format("{} was built for plugin ABI version {}, but this runexp uses version {}; "
                                         "rebuild the plugin against this SDK",
                                         file.string(), abi, kPluginAbiVersion));
  plugin.descriptor = &plugin.library->get_alias<const Descriptor&()>("moelab_descriptor")();
  plugin.create = &plugin.library->get_alias<PluginFactory>("moelab_create");
  const std::string& name = plugin.descriptor->name;
  if (auto it = plugins_.find(name); it != plugins_.end())
    throw std::runtime_error(fmt::format("two plugins are named '{}': {} and {}; remove one from the search path", name,
                                         it->second.file.string(), file.string()));
  plugins_.emplace(name, std::move(plugin));
}

const LoadedPlugin* PluginRegistry::find(const std::string& name) const {
  auto it = plugins_.find(name);
  return it == plugins_.end() ? nullptr : &it->second;
}

const LoadedPlugin& PluginRegistry::get(const std::string& name) const {
  if (const LoadedPlugin* p = find(name)) return *p;
  std::vector<std::string> names;
  for (const auto& [n, p] : plugins_) names.push_back(n);
  std::vector<std::string> folders;
  for (const auto& f : searched_) folders.push_back(f.string());
  std::vector<std::string> skipped;
  for (const auto& [file, problem] : skipped_) skipped.push_back(fmt::format("{} ({})", file.string(), problem));
  throw std::runtime_error(fmt::format("no plugin named '{}'{}; found: {}; searched: {}{}", name, did_you_mean(name, names),
                                       names.empty() ? "none" : fmt::format("{}", fmt::join(names, ", ")),
                                       folders.empty() ? "nothing" : fmt::format("{}", fmt::join(folders, ", ")),
                                       skipped.empty() ? "" : fmt::format("; skipped: {}", fmt::join(skipped, ", "))));
}

std::vector<const LoadedPlugin*> PluginRegistry::all() const {
  std::vector<const LoadedPlugin*> out;
  for (const auto& [n, p] : plugins_) out.push_back(&p);
  return out;
}

std::shared_ptr<Plugin> PluginRegistry::create(const std::string& name, const Config& config, RunContext& context) const {
  const LoadedPlugin& plugin = get(name);
  Plugin* raw = plugin.create(config, context);
  // The deleter owns a reference to the library, so its code stays mapped until the object is gone.
  return std::shared_ptr<Plugin>(raw, [library = plugin.library](Plugin* p) { delete p; });
}

}  // namespace moelab
