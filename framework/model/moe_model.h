// A Hugging Face MoE checkpoint loaded for inference and router training: attention (standard or
// MLA, optionally in a sliding window), RMSNorm, RoPE (rope.h), dense/MoE MLPs with shared experts, KV
// cache and padding masks.
#pragma once

#include "architecture.h"
#include "moelab/model.h"

#include <filesystem>
#include <memory>

namespace moelab {

// The fast paths a forward may take on the GPU; each can be switched off ([model] fused_kernels,
// grouped_mm) to check that it gives the same result.
struct ForwardPaths {
  bool fused_kernels = true;  // moelab's kernels (framework/kernels) where they may run: forward only
  bool grouped_mm = true;     // at::_grouped_mm for the routed experts (CUDA, bf16, LibTorch >= 2.8)
  // Expert parallelism: this process is rank `expert_rank` of `expert_ranks` (distributed.h's process group)
  // and holds only its contiguous share of each MoE layer's routed experts (shard_range of num_experts).
  int expert_rank = 0, expert_ranks = 1;
};

// Loads `folder` (config.json + model.safetensors or shards) onto `device` in `dtype`; routers stay float32.
std::unique_ptr<Model> load_model(const std::filesystem::path& folder, torch::Device device, torch::ScalarType dtype,
                                  ForwardPaths paths = {});

}  // namespace moelab
