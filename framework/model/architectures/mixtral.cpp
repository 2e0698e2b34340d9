// Mixtral: experts w1 (gate), w3 (up), w2 (down) under block_sparse_moe; softmax top-k, always
// renormalized; a sliding window in every layer if sliding_window is set. No attention biases.
#include "parts.h"

namespace moelab::architectures {

Architecture mixtral() {
  Architecture a;
  a.moe_module = "block_sparse_moe";
  a.expert_names = {"w1", "w3", "w2"};
  a.read_config = [](const ConfigKeys& k, ModelConfig& c) {
    c.router.renormalize = true;
    read_sliding_window_every_layer(k, c, /*needs_use_flag=*/false);
    if (k.get_or<double>("router_jitter_noise", 0.0) != 0.0)
      throw k.error(fmt::format("router_jitter_noise {} is not supported (only 0)", k.get<double>("router_jitter_noise")));
  };
  return a;
}

}  // namespace moelab::architectures
