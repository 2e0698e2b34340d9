// Mixtral: experts w1 (gate), w3 (up), w2 (down) under block_sparse_moe; softmax top-k, always renormalized.
#include "parts.h"

namespace moelab::architectures {

Architecture mixtral() {
  Architecture a;
  a.moe_module = "block_sparse_moe";
  a.expert_names = {"w1", "w3", "w2"};
  a.read_config = [](const ConfigKeys&, ModelConfig& c) { c.router.renormalize = true; };
  return a;
}

}  // namespace moelab::architectures
