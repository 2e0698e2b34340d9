// Finds plugin libraries (moelab_*.so) in the search path, checks their ABI version, and makes
// objects whose deleter keeps the library loaded for as long as the object lives.
#pragma once

#include "moelab/plugin.h"

#include <boost/dll/shared_library.hpp>

#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace moelab {

struct LoadedPlugin {
  std::filesystem::path file;
  std::shared_ptr<boost::dll::shared_library> library;
  const Descriptor* descriptor = nullptr;
  PluginFactory* create = nullptr;
};

class PluginRegistry {
 public:
  // The folders searched by default: the one beside the runexp binary, then $MOELAB_PLUGIN_PATH (colon-separated).
  static std::vector<std::filesystem::path> default_search_path();

  // Loads every moelab_*.so in each folder (missing folders are skipped). A file that is not a whole ELF
  // shared object (half-written, cut short) is skipped with a warning and named if its plugin is asked for.
  void scan(const std::vector<std::filesystem::path>& folders);
  // Loads one library; throws on an ABI mismatch or a name another library already uses.
  void load(const std::filesystem::path& file);

  const LoadedPlugin* find(const std::string& name) const;
  // Throws, listing the plugins found and the closest name, when `name` is unknown.
  const LoadedPlugin& get(const std::string& name) const;
  std::vector<const LoadedPlugin*> all() const;
  const std::vector<std::filesystem::path>& searched() const { return searched_; }

  std::shared_ptr<Plugin> create(const std::string& name, const Config& config, RunContext& context) const;

 private:
  std::map<std::string, LoadedPlugin> plugins_;
  std::vector<std::filesystem::path> searched_;
  std::vector<std::pair<std::filesystem::path, std::string>> skipped_;  // file, what is wrong with it
};

}  // namespace moelab
