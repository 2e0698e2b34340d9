// The supported MoE architectures as data (one row each, keyed by config.json's model_type) and the
// hyper-parameters read from config.json. Adding a model is mostly a row here.
#pragma once

#include <nlohmann/json.hpp>

#include <array>
#include <filesystem>
#include <string>
#include <vector>

namespace moelab {

enum class QkNorm { none, full_width, per_head };  // OLMoE normalizes the whole projection, Qwen3 each head
enum class RouterRule {
  softmax_topk,         // softmax over all experts, top-k, renormalized if norm_topk_prob (OLMoE, Qwen)
  softmax_topk_renorm,  // always renormalized (Mixtral)
  group_limited_topk,   // DeepSeek-V2: best groups first, then top-k, times routed_scaling_factor
};

struct Architecture {
  std::string model_type;
  QkNorm qk_norm;
  RouterRule router;
  bool mla;                                 // DeepSeek-V2 multi-head latent attention
  bool rope_interleaved;                    // rotary pairs (x0,x1) instead of halves
  std::string moe_module;                   // "mlp" or "block_sparse_moe"
  std::array<std::string, 3> expert_names;  // gate, up, down projections of one expert
  std::string shared_expert;                // module of the always-on expert, or ""
  bool shared_expert_gate;                  // Qwen2-MoE's sigmoid gate on the shared expert
};

const std::vector<Architecture>& architectures();

struct ModelConfig {
  const Architecture* arch = nullptr;
  int64_t vocab_size, hidden_size, num_layers, num_heads, num_kv_heads, head_dim;
  int64_t intermediate_size, expert_intermediate_size, shared_intermediate_size = 0;
  int64_t num_experts, top_k, n_group = 1, topk_group = 1;
  int64_t q_lora_rank = 0, kv_lora_rank = 0, qk_nope_head_dim = 0, qk_rope_head_dim = 0, v_head_dim = 0;
  double rms_eps, rope_theta, routed_scaling_factor = 1.0, clip_qkv = 0;
  bool norm_topk_prob = false, qkv_bias = false, tie_embeddings = false;
  std::vector<bool> moe_layer;
  int64_t pad_token_id = -1, eos_token_id = -1;
};

// Reads folder/config.json; errors name the file and key and list the supported model types.
ModelConfig read_model_config(const std::filesystem::path& folder);

}  // namespace moelab
