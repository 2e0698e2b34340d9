// OLMoE: RMSNorm over the whole q and k projections, optional clip_qkv and q/k/v/o biases
// (attention_bias), softmax top-k router.
#include "parts.h"

namespace moelab::architectures {

Architecture olmoe() {
  Architecture a;
  a.qk_norm = QkNorm::full_width;
  a.read_config = [](const ConfigKeys& k, ModelConfig& c) {
    c.clip_qkv = k.get_or<double>("clip_qkv", 0.0);
    if (c.clip_qkv < 0) throw k.error(fmt::format("clip_qkv = {}, expected a number >= 0 (0 or null: no clipping)", c.clip_qkv));
    read_attention_bias(k, c);
    read_softmax_topk(k, c);
  };
  return a;
}

}  // namespace moelab::architectures
