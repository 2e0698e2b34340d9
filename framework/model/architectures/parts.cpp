#include "parts.h"

#include <algorithm>

namespace moelab::architectures {

void read_softmax_topk(const ConfigKeys& k, ModelConfig& c) { c.router.renormalize = k.get_or<bool>("norm_topk_prob", false); }

void read_sparse_step_layers(const ConfigKeys& k, ModelConfig& c) {
  std::vector<int64_t> dense = k.get_or<std::vector<int64_t>>("mlp_only_layers", {});
  int64_t step = k.get_or<int64_t>("decoder_sparse_step", 1);
  for (int64_t i = 0; i < c.num_layers; ++i)
    c.moe_layer[i] = c.num_experts > 0 && std::find(dense.begin(), dense.end(), i) == dense.end() && (i + 1) % step == 0;
}

void read_deepseek_layout(const ConfigKeys& k, ModelConfig& c, int64_t default_shared_experts, int64_t default_first_dense) {
  for (const char* bias : {"attention_bias", "mlp_bias"})
    if (k.get_or<bool>(bias, false)) throw k.error(fmt::format("{} = true is not supported for {} (no biases)", bias, c.arch.model_type));
  c.q_lora_rank = k.get_or<int64_t>("q_lora_rank", 0);
  c.kv_lora_rank = k.get<int64_t>("kv_lora_rank");
  c.qk_nope_head_dim = k.get<int64_t>("qk_nope_head_dim");
  c.qk_rope_head_dim = k.get<int64_t>("qk_rope_head_dim");
  c.v_head_dim = k.get<int64_t>("v_head_dim");
  c.shared_intermediate_size = c.expert_intermediate_size * k.get_or<int64_t>("n_shared_experts", default_shared_experts);
  int64_t first_dense = k.get_or<int64_t>("first_k_dense_replace", default_first_dense);
  int64_t every = k.get_or<int64_t>("moe_layer_freq", 1);
  for (int64_t i = 0; i < c.num_layers; ++i) c.moe_layer[i] = c.num_experts > 0 && i >= first_dense && i % every == 0;
}

}  // namespace moelab::architectures
