#include "test_run.h"

#include "moelab/files.h"

#include <array>
#include <cstdio>
#include <atomic>
#include <csignal>
#include <execinfo.h>
#include <unistd.h>
#include <sys/wait.h>

namespace moelab::test {

namespace fs = std::filesystem;

TempDir::TempDir() {
  static std::atomic<int> counter{0};
  path_ = fs::path(MOELAB_BINARY_DIR) / "test_tmp" / (std::to_string(::getpid()) + "-" + std::to_string(counter++));
  fs::create_directories(path_);
}

TempDir::~TempDir() {
  std::error_code ec;
  fs::remove_all(path_, ec);
}

fs::path TempDir::write(const std::string& name, const std::string& content) const {
  fs::path file = path_ / name;
  write_file_atomic(file, content);
  return file;
}

const PluginRegistry& built_plugins() {
  static const PluginRegistry registry = [] {
    PluginRegistry r;
    r.scan({MOELAB_PLUGIN_BUILD_DIR});
    return r;
  }();
  return registry;
}

ResolvedExperiment resolve_text(const TempDir& dir, const std::string& toml, const std::vector<std::string>& overrides) {
  fs::path file = dir.write("experiment.toml", toml);
  return resolve_experiment(load_experiment(file, overrides), file, built_plugins());
}

std::unique_ptr<ExperimentRun> start_run(const TempDir& dir, const std::string& toml) {
  ResolvedExperiment experiment = resolve_text(dir, "run_dir = \"runs\"\n" + toml);
  return std::make_unique<ExperimentRun>(std::move(experiment), built_plugins(), false);
}

CommandResult run_command(const std::string& command) {
  std::string output;
  FILE* pipe = popen((command + " 2>&1").c_str(), "r");
  if (!pipe) return {-1, "popen failed"};
  std::array<char, 4096> buf;
  while (std::size_t n = std::fread(buf.data(), 1, buf.size(), pipe)) output.append(buf.data(), n);
  int status = pclose(pipe);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, output};
}

std::string runexp_binary() { return std::string(MOELAB_BINARY_DIR) + "/bin/runexp"; }

}  // namespace moelab::test

namespace {
// A crash in a test prints its stack (symbol names need -rdynamic, set in tests/CMakeLists.txt).
void print_stack(int signal) {
  void* frames[64];
  int n = backtrace(frames, 64);
  std::fprintf(stderr, "fatal signal %d; stack:\n", signal);
  backtrace_symbols_fd(frames, n, 2);
  std::_Exit(128 + signal);
}
const bool kStackOnCrash = [] {
  std::signal(SIGSEGV, print_stack);
  std::signal(SIGABRT, print_stack);
  return true;
}();
}  // namespace
