// DeepSeek-V2: MLA with interleaved rotary pairs, shared experts, softmax router, optionally limited to
// the topk_group groups with the best single expert (group_limited_greedy), weights times
// routed_scaling_factor. As in transformers' DeepseekV2TopkRouter the weights are never renormalized:
// norm_topk_prob = true (which DeepSeek's own code would honour) is refused.
#include "parts.h"

namespace moelab::architectures {

Architecture deepseek_v2() {
  Architecture a;
  a.mla = true;
  a.shared_expert = "shared_experts";
  a.read_config = [](const ConfigKeys& k, ModelConfig& c) {
    read_deepseek_layout(k, c, /*default_shared_experts=*/2, /*default_first_dense=*/0);
    c.rope_interleaved = true;
    k.one_of("scoring_func", "softmax", {"softmax"});
    c.router.scale = k.positive_or("routed_scaling_factor", 1.0);
    if (k.one_of("topk_method", "greedy", {"greedy", "group_limited_greedy"}) == "group_limited_greedy") {
      c.router.groups = k.at_least("n_group", 1);
      c.router.groups_kept = k.at_least("topk_group", 1);
    } else {
      k.has("n_group"), k.has("topk_group");  // greedy ignores them: known keys without effect
    }
    if (k.get_or<bool>("norm_topk_prob", false)) throw k.error("norm_topk_prob = true is not supported for deepseek_v2 (transformers ignores it)");
  };
  return a;
}

}  // namespace moelab::architectures
