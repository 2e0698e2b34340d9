// Test helpers: experiment files written to a temporary folder, resolved against the built plugins,
// and runs of the runexp binary.
#pragma once

#include "experiment_file.h"
#include "moelab/analyzer.h"
#include "experiment_run.h"
#include "plugin_registry.h"
#include "schema.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

namespace moelab::test {

// A fresh folder under the build tree, removed when the object dies.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path write(const std::string& name, const std::string& content) const;

 private:
  std::filesystem::path path_;
};

// The registry of the build's own plugins.
const PluginRegistry& built_plugins();

// Resolves `toml` (written as experiment.toml in a temporary folder); throws what the host throws.
ResolvedExperiment resolve_text(const TempDir& dir, const std::string& toml, const std::vector<std::string>& overrides = {});

// A run of `toml` whose run folder is inside `dir`, for creating components as the host does.
std::unique_ptr<ExperimentRun> start_run(const TempDir& dir, const std::string& toml);

// Runs analyzer plugin `plugin` (configured by the TOML lines `keys`) on `records`, writing into `dir`.
nlohmann::json analyze_with(const TempDir& dir, const std::string& plugin, const RoutingRecords& records, const std::string& keys = "");

// Message of the exception `f` throws; fails the test if it throws none.
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected an exception";
  return "";
}

struct CommandResult {
  int status;
  std::string output;  // stdout and stderr
};
CommandResult run_command(const std::string& command);
std::string runexp_binary();

}  // namespace moelab::test
