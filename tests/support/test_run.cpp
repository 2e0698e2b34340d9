#include "test_run.h"

#include "moelab/lib/files.h"

#include <array>
#include <cstdio>
#include <atomic>
#include <csignal>
#include <cstdint>
#include <ucontext.h>
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

namespace {
// Not std::filesystem::remove_all: pip's libtorch.so exports its own copy of it, which calls a
// function it does not have (a null call) once it is bound ahead of libstdc++ in a process.
void remove_tree(const fs::path& path) {
  std::error_code ec;
  if (fs::is_directory(fs::symlink_status(path, ec)))
    for (const auto& entry : fs::directory_iterator(path, ec)) remove_tree(entry.path());
  fs::remove(path, ec);
}
}  // namespace

TempDir::~TempDir() { remove_tree(path_); }

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

nlohmann::json analyze_with(const TempDir& dir, const std::string& plugin, const RoutingRecords& records, const std::string& keys) {
  auto run = start_run(dir, "stages = []\n[analyzer]\nplugin = \"" + plugin + "\"\n" + keys);
  return run->make<Analyzer>("analyzer")->analyze(records, dir.path());
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
// A crash in a test prints the faulting instruction's library and the stack (symbols need -rdynamic).
void print_crash(int signal, siginfo_t* info, void* context) {
  const auto& registers = static_cast<ucontext_t*>(context)->uc_mcontext.gregs;
  auto pc = static_cast<std::uintptr_t>(registers[REG_RIP]);
  // A jump to address 0 leaves its caller's return address on top of the stack.
  if (pc == 0) pc = *reinterpret_cast<const std::uintptr_t*>(registers[REG_RSP]);
  std::fprintf(stderr, "fatal signal %d at address %p, pc %p\n", signal, info->si_addr, reinterpret_cast<void*>(pc));
  if (FILE* maps = std::fopen("/proc/self/maps", "r")) {
    char line[512];
    while (std::fgets(line, sizeof line, maps)) {
      unsigned long lo = 0, hi = 0, offset = 0;
      if (std::sscanf(line, "%lx-%lx %*s %lx", &lo, &hi, &offset) == 3 && pc >= lo && pc < hi)
        std::fprintf(stderr, "pc is in: %s  (offset in file %#lx)\n", line, pc - lo + offset);
    }
    std::fclose(maps);
  }
  void* frames[64];
  backtrace_symbols_fd(frames, backtrace(frames, 64), 2);
  std::_Exit(128 + signal);
}
const bool kReportCrashes = [] {
  struct sigaction action {};
  action.sa_sigaction = print_crash;
  action.sa_flags = SA_SIGINFO;
  sigaction(SIGSEGV, &action, nullptr);
  sigaction(SIGBUS, &action, nullptr);
  return true;
}();
}  // namespace
