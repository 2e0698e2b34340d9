// A Hugging Face MoE checkpoint loaded for inference and router training: attention (standard or
// MLA, optionally in a sliding window), RMSNorm, RoPE (rope.h), dense/MoE MLPs with shared experts, KV
// cache and padding masks.
#pragma once

#include "architecture.h"
#include "moelab/model.h"

#include <filesystem>
#include <memory>

namespace moelab {

// Loads `folder` (config.json + model.safetensors or shards) onto `device` in `dtype`; routers stay float32.
std::unique_ptr<Model> load_model(const std::filesystem::path& folder, torch::Device device, torch::ScalarType dtype);

}  // namespace moelab
