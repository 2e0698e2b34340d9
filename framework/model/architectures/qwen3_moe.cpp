// Qwen3-MoE: RMSNorm on each head's q and k, q/k/v/o biases if attention_bias, a sliding window in
// every layer if use_sliding_window, softmax top-k, no shared expert.
#include "parts.h"

namespace moelab::architectures {

Architecture qwen3_moe() {
  Architecture a;
  a.qk_norm = QkNorm::per_head;
  a.read_config = [](const ConfigKeys& k, ModelConfig& c) {
    read_attention_bias(k, c);
    read_sliding_window_every_layer(k, c, /*needs_use_flag=*/true);
    read_softmax_topk(k, c);
    read_sparse_step_layers(k, c);
  };
  return a;
}

}  // namespace moelab::architectures
