// The keys the host itself reads: the experiment file's top level and its [model] table, bound to
// typed structs like a plugin's options (moelab/options.h).
#pragma once

#include "moelab/lib/log.h"
#include "moelab/options.h"

#include <filesystem>
#include <string>
#include <vector>

namespace moelab {

struct RunOptions {
  std::string name;  // "": the file name without .toml (filled in by resolve_experiment)
  long long seed = 0;
  std::filesystem::path run_dir;
  std::vector<std::string> plugin_path;
  LogLevel log_level = LogLevel::info;
  std::vector<std::string> stages;  // stage table ids, in order
  bool tensorboard = true;          // TensorBoard event files in <run>/tb/
};
const Options<RunOptions>& run_options();

enum class ModelDevice { automatic, cpu, cuda };
enum class ModelDtype { float32, bfloat16 };
enum class ModelPlacement { single, experts };

struct ModelOptions {
  std::filesystem::path path;  // a Hugging Face model folder, or "builtin:<name>"
  ModelDevice device = ModelDevice::automatic;
  ModelDtype dtype = ModelDtype::float32;
  std::filesystem::path quantized;  // "": none
  std::filesystem::path tokenizer;  // "": the model folder's tokenizer.json
  bool fused_kernels = true;        // ForwardPaths (moe_model.h)
  bool grouped_mm = true;
  ModelPlacement placement = ModelPlacement::single;  // experts: each torchrun rank holds a contiguous share
};
const Options<ModelOptions>& model_options();

}  // namespace moelab
