#include "parts.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace moelab::architectures {

void read_softmax_topk(const ConfigKeys& k, ModelConfig& c) { c.router.renormalize = k.get_or<bool>("norm_topk_prob", false); }

void read_attention_bias(const ConfigKeys& k, ModelConfig& c) { c.qkv_bias = c.o_bias = k.get_or<bool>("attention_bias", false); }

void read_sliding_window_every_layer(const ConfigKeys& k, ModelConfig& c, bool needs_use_flag) {
  const bool used = !needs_use_flag || k.get_or<bool>("use_sliding_window", false);
  if (needs_use_flag) {
    const int64_t max_window_layers = k.at_least_or("max_window_layers", 0, c.num_layers);
    if (used && max_window_layers < c.num_layers)
      throw k.error(fmt::format("max_window_layers {} < num_hidden_layers with use_sliding_window is not supported for {} (transformers "
                                "applies the window to every layer)",
                                max_window_layers, c.arch.model_type));
  }
  if (!k.has("sliding_window") || !used) return;
  c.sliding_window = k.get<int64_t>("sliding_window");
  if (c.sliding_window < 1) throw k.error(fmt::format("sliding_window {} is not a positive number of keys", c.sliding_window));
  c.sliding_layer.assign(c.num_layers, true);
}

void read_sparse_step_layers(const ConfigKeys& k, ModelConfig& c) {
  std::vector<int64_t> dense = k.get_or<std::vector<int64_t>>("mlp_only_layers", {});
  for (int64_t layer : dense)
    if (layer < 0 || layer >= c.num_layers)
      throw k.error(fmt::format("mlp_only_layers names layer {}, but num_hidden_layers = {}", layer, c.num_layers));
  int64_t step = k.at_least_or("decoder_sparse_step", 1, 1);
  for (int64_t i = 0; i < c.num_layers; ++i)
    c.moe_layer[i] = c.num_experts > 0 && std::find(dense.begin(), dense.end(), i) == dense.end() && (i + 1) % step == 0;
}

void read_deepseek_layout(const ConfigKeys& k, ModelConfig& c, int64_t default_shared_experts, int64_t default_first_dense) {
  for (const char* bias : {"attention_bias", "mlp_bias"})
    if (k.get_or<bool>(bias, false)) throw k.error(fmt::format("{} = true is not supported for {} (no biases)", bias, c.arch.model_type));
  c.q_lora_rank = k.at_least_or("q_lora_rank", 0, 0);
  c.kv_lora_rank = k.at_least("kv_lora_rank", 1);
  c.qk_nope_head_dim = k.at_least("qk_nope_head_dim", 0);
  c.qk_rope_head_dim = k.at_least("qk_rope_head_dim", 2);
  c.v_head_dim = k.at_least("v_head_dim", 1);
  if (k.get_or<int64_t>("qk_head_dim", c.qk_nope_head_dim + c.qk_rope_head_dim) != c.qk_nope_head_dim + c.qk_rope_head_dim)
    throw k.error(fmt::format("qk_head_dim {} is not qk_nope_head_dim + qk_rope_head_dim ({})", k.get<int64_t>("qk_head_dim"),
                              c.qk_nope_head_dim + c.qk_rope_head_dim));
  // YaRN's mscale_all_dim also rescales the attention logits: softmax scale times mscale(factor, mscale_all_dim)^2.
  if (c.rope.type != "default" && c.rope.mscale_all_dim != 0) c.softmax_scale = std::pow(yarn_mscale(c.rope.factor, c.rope.mscale_all_dim), 2);
  const int64_t shared_experts = k.at_least_or("n_shared_experts", 0, default_shared_experts);
  if (shared_experts > 0 && c.expert_intermediate_size > std::numeric_limits<int64_t>::max() / shared_experts)
    throw k.error(fmt::format("n_shared_experts {} x moe_intermediate_size {} overflows", shared_experts, c.expert_intermediate_size));
  c.shared_intermediate_size = c.expert_intermediate_size * shared_experts;
  int64_t first_dense = k.at_least_or("first_k_dense_replace", 0, default_first_dense);
  int64_t every = k.at_least_or("moe_layer_freq", 1, 1);
  for (int64_t i = 0; i < c.num_layers; ++i) c.moe_layer[i] = c.num_experts > 0 && i >= first_dense && i % every == 0;
}

}  // namespace moelab::architectures
