// What a run records about what ran it and where: summary.json's "versions" (moelab version, git commit
// and dirty flag, LibTorch) and "provenance" (command line, --set overrides, threads, devices, host).
#pragma once

#include <nlohmann/json.hpp>

#include <string>
#include <vector>

namespace moelab {

// runexp hands its arguments over once, at start; runs started otherwise (tests) record none.
void set_command_line(int argc, char** argv);

// {"moelab": "0.1.0", "git_commit": "<sha or unknown>", "git_describe": ..., "git_dirty": bool,
//  "libtorch": "1.13.0", "plugin_abi": N}
nlohmann::json versions();

// {"command_line": [...], "overrides": ["k=v", ...], "working_dir", "hostname", "threads": at::get_num_threads(),
//  "devices": {"cpu": "<model name>", "cpu_cores": N, "cuda_count": N, "cuda": ["<name>", ...]}}
nlohmann::json provenance();

// The CUDA devices' names as the driver reports them (empty without a driver or device).
std::vector<std::string> cuda_device_names();

}  // namespace moelab
