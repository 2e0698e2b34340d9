// Rotary position embedding as transformers computes it from a config's rope_parameters (transformers 5)
// or rope_scaling (hub configs, "type" or "rope_type"): each rope_type's inverse frequencies and the
// factor that multiplies cos and sin (YaRN's mscale). Types: default, linear, dynamic (NTK, rescaled
// by the sequence length), yarn (DeepSeek-V2/V3 and Qwen3 forms), llama3; others are refused by name.
#pragma once

#include "config_keys.h"

#include <torch/types.h>

namespace moelab {

struct RopeConfig {
  std::string type = "default";
  double theta = 10000.0;
  double factor = 1.0;
  int64_t max_positions = 0;             // max_position_embeddings: dynamic rescales beyond it
  int64_t original_max_positions = 0;    // yarn, llama3: the pretraining context
  double beta_fast = 32, beta_slow = 1;  // yarn's correction range in rotations
  bool truncate = true;                  // yarn: round the correction range to whole dimensions
  double low_freq_factor = 1, high_freq_factor = 4;  // llama3
  double attention_factor = 1.0;         // multiplies cos and sin
  double mscale_all_dim = 0;             // DeepSeek's softmax-scale correction (applied by its architectures)
};

// Reads rope_scaling (which wins, as in transformers) or rope_parameters, rope_theta and
// max_position_embeddings; errors name the file and key, including unknown keys inside the rope table.
RopeConfig read_rope(const ConfigKeys& k);

// YaRN's magnitude correction 0.1 * mscale * ln(factor) + 1 (1 for factor <= 1).
double yarn_mscale(double factor, double mscale = 1.0);

// Inverse frequencies [dim / 2] float32 of a rotary dimension `dim`; dynamic's at max_positions.
torch::Tensor rope_inv_freq(const RopeConfig& rope, int64_t dim);

// Dynamic NTK: the inverse frequencies [B, dim / 2] for rows whose sequences are seq_len [B] long
// (transformers: max(position_ids) + 1); rows within max_positions keep the unscaled ones.
torch::Tensor dynamic_inv_freq(const RopeConfig& rope, int64_t dim, const torch::Tensor& seq_len);

}  // namespace moelab
