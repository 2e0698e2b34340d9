// Experiment files: load_experiment (TOML, `extends`, `--set` overrides) and resolve_experiment (every
// table checked against the host's options and the build's plugins) on a fuzzed input laid out as
//   <experiment.toml bytes> [\0 override]...      (each override is "key.path=value", as after --set)
// beside configs/*.toml, which `extends` may name.
// The resolved table is written as config.resolved.toml is, and must parse again (what --resume reads).
#include "experiment_file.h"
#include "fuzz_common.h"
#include "plugin_registry.h"
#include "schema.h"

#include <memory>
#include <string>
#include <vector>

namespace {
std::unique_ptr<moelab::PluginRegistry> registry;
}

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  moelab::fuzz::quiet_logs();
  registry = std::make_unique<moelab::PluginRegistry>();
  registry->scan({MOELAB_FUZZ_PLUGIN_DIR});
  // Beside the input, so that `extends = "roe_k8.toml"` finds its base as in configs/.
  for (const auto& entry : std::filesystem::directory_iterator(MOELAB_SOURCE_DIR "/configs"))
    if (entry.path().extension() == ".toml") std::filesystem::copy_file(entry.path(), moelab::fuzz::scratch() / entry.path().filename());
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  const std::size_t end = input.find('\0');
  std::vector<std::string> overrides;
  for (std::size_t at = end; at != std::string_view::npos && at < input.size();) {
    const std::size_t next = input.find('\0', at + 1);
    overrides.emplace_back(input.substr(at + 1, next == std::string_view::npos ? std::string_view::npos : next - at - 1));
    at = next;
  }
  const auto file = moelab::fuzz::write_input("experiment.toml", input.substr(0, end));
  moelab::fuzz::run_reader([&] {
    const toml::table merged = moelab::load_experiment(file, overrides);
    (void)moelab::experiment_plugin_path(merged);
    const moelab::ResolvedExperiment resolved = moelab::resolve_experiment(merged, file, *registry);
    const std::string written = moelab::to_toml(resolved.table);
    try {
      (void)toml::parse(written);
    } catch (const toml::parse_error& e) {
      std::fprintf(stderr, "the resolved config does not parse again: %s\n%s\n", e.what(), written.c_str());
      std::abort();
    }
  });
  return 0;
}
