#include "provenance.h"

#include "moelab/plugin.h"
#include "moelab/version.h"
#include "moelab_git.h"

#include <ATen/Parallel.h>
#include <torch/cuda.h>
#include <torch/version.h>

#include <dlfcn.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <thread>

namespace moelab {

namespace {
std::vector<std::string>& command_line() {
  static std::vector<std::string> args;
  return args;
}

// The `--set k=v` / `--set=k=v` arguments of the command line, in order.
std::vector<std::string> overrides_of(const std::vector<std::string>& args) {
  std::vector<std::string> out;
  for (std::size_t i = 0; i < args.size(); ++i) {
    if (args[i] == "--set" && i + 1 < args.size()) out.push_back(args[++i]);
    else if (args[i].rfind("--set=", 0) == 0) out.push_back(args[i].substr(6));
  }
  return out;
}

std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("model name", 0) != 0) continue;
    const std::size_t colon = line.find(':');
    if (colon == std::string::npos) break;
    std::size_t begin = line.find_first_not_of(" \t", colon + 1);
    return begin == std::string::npos ? std::string() : line.substr(begin);
  }
  return "unknown";
}

std::string hostname() {
  char name[256] = {};
  return gethostname(name, sizeof name - 1) == 0 ? std::string(name) : "unknown";
}
}  // namespace

void set_command_line(int argc, char** argv) { command_line().assign(argv, argv + argc); }

nlohmann::json versions() {
  return {{"moelab", MOELAB_VERSION_STRING}, {"git_commit", MOELAB_GIT_COMMIT}, {"git_describe", MOELAB_GIT_DESCRIBE},
          {"git_dirty", MOELAB_GIT_DIRTY}, {"libtorch", TORCH_VERSION}, {"plugin_abi", kPluginAbiVersion}};
}

// The CUDA driver API, opened at run time: LibTorch 1.13 and 2.x have no common C++ call for a device's
// name, and a CPU-only LibTorch has no CUDA headers at all.
std::vector<std::string> cuda_device_names() {
  std::vector<std::string> names;
  void* cuda = dlopen("libcuda.so.1", RTLD_LAZY | RTLD_LOCAL);
  if (!cuda) return names;
  using Init = int (*)(unsigned);
  using Count = int (*)(int*);
  using Get = int (*)(int*, int);
  using Name = int (*)(char*, int, int);
  auto init = reinterpret_cast<Init>(dlsym(cuda, "cuInit"));
  auto count = reinterpret_cast<Count>(dlsym(cuda, "cuDeviceGetCount"));
  auto get = reinterpret_cast<Get>(dlsym(cuda, "cuDeviceGet"));
  auto name = reinterpret_cast<Name>(dlsym(cuda, "cuDeviceGetName"));
  int n = 0;
  if (init && count && get && name && init(0) == 0 && count(&n) == 0) {
    for (int i = 0; i < n; ++i) {
      int device = 0;
      char text[256] = {};
      names.emplace_back(get(&device, i) == 0 && name(text, sizeof text - 1, device) == 0 ? text : "unknown");
    }
  }
  dlclose(cuda);
  return names;
}

nlohmann::json provenance() {
  const std::vector<std::string>& args = command_line();
  std::error_code ec;
  const std::filesystem::path cwd = std::filesystem::current_path(ec);
  const int cuda_count = torch::cuda::is_available() ? static_cast<int>(torch::cuda::device_count()) : 0;
  nlohmann::json devices = {{"cpu", cpu_model()},
                            {"cpu_cores", std::thread::hardware_concurrency()},
                            {"cuda_count", cuda_count},
                            {"cuda", cuda_count > 0 ? cuda_device_names() : std::vector<std::string>{}}};
  return {{"command_line", args},
          {"overrides", overrides_of(args)},
          {"working_dir", ec ? std::string() : cwd.string()},
          {"hostname", hostname()},
          {"threads", at::get_num_threads()},
          {"devices", devices}};
}

}  // namespace moelab
