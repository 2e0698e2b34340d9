// DeepSeek-V3, also the layout of DeepSeek-R1 and Kimi-K2: MLA as in V2 (rotary pairs interleaved if
// rope_interleave), shared experts, and the noaux_tc router: sigmoid scores; the choice adds
// e_score_correction_bias, keeps the topk_group groups whose best two biased scores sum highest and
// takes the top k there; the weights are the unbiased scores, renormalized if norm_topk_prob, times
// routed_scaling_factor.
#include "parts.h"

namespace moelab::architectures {

Architecture deepseek_v3() {
  Architecture a;
  a.mla = true;
  a.router_bias = "e_score_correction_bias";
  a.shared_expert = "shared_experts";
  a.read_config = [](const ConfigKeys& k, ModelConfig& c) {
    read_deepseek_layout(k, c, /*default_shared_experts=*/1, /*default_first_dense=*/3);
    c.rope_interleaved = k.get_or<bool>("rope_interleave", true);
    k.one_of("scoring_func", "sigmoid", {"sigmoid"});
    k.one_of("topk_method", "noaux_tc", {"noaux_tc"});
    c.router.scoring = Scoring::sigmoid;
    c.router.group_score = GroupScore::top2_sum;
    c.router.groups = k.at_least_or("n_group", 1, 8);
    c.router.groups_kept = k.at_least_or("topk_group", 1, 4);
    c.router.renormalize = k.get_or<bool>("norm_topk_prob", true);
    c.router.scale = k.positive_or("routed_scaling_factor", 2.5);
    c.unused_stored_layers = k.at_least_or("num_nextn_predict_layers", 0, 0);
  };
  return a;
}

}  // namespace moelab::architectures
