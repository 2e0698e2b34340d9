#include "run_options.h"

namespace moelab {

const Options<RunOptions>& run_options() {
  static const auto options =
      Options<RunOptions>()
          .string("name", &RunOptions::name, "", "experiment name; default: the file name without .toml")
          .integer("seed", &RunOptions::seed, 0, "drives every random source of the run")
          .path("run_dir", &RunOptions::run_dir, "runs", "runs go to <run_dir>/<name>/<timestamp>/")
          .strings("plugin_path", &RunOptions::plugin_path, {}, "extra folders searched for plugin libraries")
          .choice("log_level", &RunOptions::log_level, LogLevel::info,
                  {{"debug", LogLevel::debug}, {"info", LogLevel::info}, {"warn", LogLevel::warn}, {"error", LogLevel::error}},
                  "console log level")
          .strings("stages", &RunOptions::stages, required, "ids of the stage tables to run, in order")
          .flag("tensorboard", &RunOptions::tensorboard, true,
                "write TensorBoard event files to <run>/tb/ (every metrics row as scalars, stage summaries, histograms, figures)");
  return options;
}

const Options<ModelOptions>& model_options() {
  static const auto options =
      Options<ModelOptions>()
          .path("path", &ModelOptions::path, "builtin:tiny-olmoe", "Hugging Face model folder (config.json, safetensors)")
          .choice("device", &ModelOptions::device, ModelDevice::automatic,
                  {{"auto", ModelDevice::automatic}, {"cpu", ModelDevice::cpu}, {"cuda", ModelDevice::cuda}},
                  "where the model runs; auto picks cuda when present")
          .choice("dtype", &ModelOptions::dtype, ModelDtype::float32, {{"float32", ModelDtype::float32}, {"bfloat16", ModelDtype::bfloat16}},
                  "compute dtype of the model weights")
          .flag("fused_kernels", &ModelOptions::fused_kernels, true,
                "moelab's GPU kernels (RMSNorm, RoPE, SiLU*up, softmax top-k router, expert combine) in forwards that "
                "autograd does not track; false: LibTorch's own ops (the same result, to rounding)")
          .flag("grouped_mm", &ModelOptions::grouped_mm, true,
                "one grouped matmul for all routed experts (CUDA, bfloat16); false: one matmul chain per expert")
          .choice("placement", &ModelOptions::placement, ModelPlacement::single,
                  {{"single", ModelPlacement::single}, {"experts", ModelPlacement::experts}},
                  "single: the whole model on each rank's device; experts (under torchrun): each rank holds a contiguous "
                  "share of every MoE layer's routed experts, tokens go to their experts' ranks by all-to-all, and every "
                  "rank runs every example (no data sharding)")
          .path("quantized", &ModelOptions::quantized, "",
                "moelab quantized checkpoint applied after loading (a quantize or finetune_lm stage's output)")
          .path("tokenizer", &ModelOptions::tokenizer, "",
                "a tokenizer.json to use instead of the model folder's (a model folder without one, or another tokenizer)");
  return options;
}

}  // namespace moelab
