// Config readers that several architecture files share.
#pragma once

#include "architecture.h"

namespace moelab::architectures {

// softmax top-k, renormalized if norm_topk_prob (default false): OLMoE, Qwen2-MoE, Qwen3-MoE.
void read_softmax_topk(const ConfigKeys& k, ModelConfig& c);

// attention_bias (default false): biases on the q, k, v and o projections (OLMoE, Qwen3-MoE).
void read_attention_bias(const ConfigKeys& k, ModelConfig& c);

// sliding_window in every layer when set (Mixtral), or when use_sliding_window is also true (Qwen3-MoE,
// which must not limit it to the first max_window_layers: transformers ignores that key there).
void read_sliding_window_every_layer(const ConfigKeys& k, ModelConfig& c, bool needs_use_flag);

// Qwen's MoE layers: every decoder_sparse_step-th layer except the mlp_only_layers.
void read_sparse_step_layers(const ConfigKeys& k, ModelConfig& c);

// DeepSeek's layout: MLA sizes (no attention_bias, no mlp_bias), n_shared_experts always-on experts of
// moe_intermediate_size, first_k_dense_replace dense layers then a MoE layer every moe_layer_freq.
// The defaults are the version's transformers defaults.
void read_deepseek_layout(const ConfigKeys& k, ModelConfig& c, int64_t default_shared_experts, int64_t default_first_dense);

}  // namespace moelab::architectures
