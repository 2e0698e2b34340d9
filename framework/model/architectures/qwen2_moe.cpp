// Qwen2-MoE: q/k/v biases (qkv_bias, default true), a shared expert behind a sigmoid gate, softmax top-k.
// With use_sliding_window, the layers layer_types marks "sliding_attention" (by default the even layers
// below max_window_layers, as transformers derives them) see only the last sliding_window keys.
#include "parts.h"

#include <algorithm>

namespace moelab::architectures {

namespace {

void read_sliding_layers(const ConfigKeys& k, ModelConfig& c) {
  const bool used = k.get_or<bool>("use_sliding_window", false);
  const int64_t max_window_layers = k.at_least_or("max_window_layers", 0, 28);
  std::vector<std::string> types;
  for (int64_t i = 0; i < c.num_layers; ++i)
    types.push_back(used && i % 2 == 0 && i < max_window_layers ? "sliding_attention" : "full_attention");
  types = k.get_or("layer_types", types);
  if (static_cast<int64_t>(types.size()) != c.num_layers)
    throw k.error(fmt::format("layer_types has {} entries for {} layers", types.size(), c.num_layers));
  for (int64_t i = 0; i < c.num_layers; ++i) {
    if (types[i] != "sliding_attention" && types[i] != "full_attention")
      throw k.error(fmt::format("layer_types[{}] \"{}\" is not supported (supported: full_attention, sliding_attention)", i, types[i]));
    c.sliding_layer[i] = types[i] == "sliding_attention";
  }
  const bool any = std::find(c.sliding_layer.begin(), c.sliding_layer.end(), true) != c.sliding_layer.end();
  if (any && !used) throw k.error("layer_types has sliding_attention layers but use_sliding_window is false");
  if (!any) return;
  c.sliding_window = k.get<int64_t>("sliding_window");
  if (c.sliding_window < 1) throw k.error(fmt::format("sliding_window {} is not a positive number of keys", c.sliding_window));
}

}  // namespace

Architecture qwen2_moe() {
  Architecture a;
  a.shared_expert = "shared_expert";
  a.shared_expert_gate = "shared_expert_gate";
  a.read_config = [](const ConfigKeys& k, ModelConfig& c) {
    c.qkv_bias = k.get_or<bool>("qkv_bias", true);
    c.shared_intermediate_size = k.at_least("shared_expert_intermediate_size", 0);
    read_sliding_layers(k, c);
    k.has("sliding_window");  // unused without sliding layers, as in transformers
    read_softmax_topk(k, c);
    read_sparse_step_layers(k, c);
  };
  return a;
}

}  // namespace moelab::architectures
