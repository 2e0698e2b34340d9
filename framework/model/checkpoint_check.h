// The tensors a config.json asks for, each with the shape the config implies, and the check of a
// checkpoint against them before anything is loaded: every tensor present with that shape and a
// floating dtype, no layer or expert beyond the config's counts, no tensor the config leaves unused.
#pragma once

#include "architecture.h"
#include "moelab/lib/safetensors.h"

#include <filesystem>
#include <string>
#include <vector>

namespace moelab {

struct ExpectedTensor {
  std::string name;
  std::vector<int64_t> shape;
  std::vector<std::string> dims;  // the config keys behind each dimension: "num_experts", "num_attention_heads*head_dim"
  bool required = true;           // false: allowed but not needed (a stored lm_head.weight next to tied embeddings)
};

// In load order. Shape products that overflow int64 are errors naming the keys.
std::vector<ExpectedTensor> expected_tensors(const ModelConfig& config, const std::string& config_file);

// Throws naming the folder or shard, the tensors and the config.json keys involved.
void check_checkpoint(const ModelConfig& config, const Checkpoint& checkpoint, const std::filesystem::path& folder);

}  // namespace moelab
