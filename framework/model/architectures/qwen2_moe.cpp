// Qwen2-MoE: q/k/v biases (qkv_bias, default true), a shared expert behind a sigmoid gate, softmax top-k.
#include "parts.h"

namespace moelab::architectures {

Architecture qwen2_moe() {
  Architecture a;
  a.shared_expert = "shared_expert";
  a.shared_expert_gate = "shared_expert_gate";
  a.read_config = [](const ConfigKeys& k, ModelConfig& c) {
    c.qkv_bias = k.get_or<bool>("qkv_bias", true);
    c.shared_intermediate_size = k.get<int64_t>("shared_expert_intermediate_size");
    read_softmax_topk(k, c);
    read_sparse_step_layers(k, c);
  };
  return a;
}

}  // namespace moelab::architectures
