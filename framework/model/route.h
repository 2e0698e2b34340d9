// The MoE router as one parametric rule: score the experts (softmax or sigmoid), optionally add a
// per-expert bias and keep only the best groups for the choice, take the top k, and weight them by
// their unbiased scores, renormalized and scaled. Every architecture is a RouterSpec.
#pragma once

#include <torch/types.h>

namespace moelab {

enum class Scoring { softmax, sigmoid };
enum class GroupScore { max, top2_sum };  // DeepSeek-V2: best expert of the group; DeepSeek-V3: sum of its best two

struct RouterSpec {
  Scoring scoring = Scoring::softmax;
  int64_t top_k = 1;
  bool renormalize = false;  // divide the k weights by their sum (norm_topk_prob)
  double scale = 1.0;        // routed_scaling_factor, applied last
  int64_t groups = 1;        // n_group: experts split into equal groups (1: no group limit)
  int64_t groups_kept = 1;   // topk_group: experts are chosen only from the best groups
  GroupScore group_score = GroupScore::max;
  torch::Tensor bias;        // [E] added to the scores for the choice only (e_score_correction_bias), or undefined
};

struct Routing {
  torch::Tensor weights;  // [N, k]
  torch::Tensor ids;      // [N, k] int64
};

// logits [N, E] give the weights; selection_logits (default: logits) give the chosen set. They differ
// when a router transform perturbs the choice but the weights come from the clean logits.
Routing route(const torch::Tensor& logits, const RouterSpec& spec, const torch::Tensor& selection_logits = {});

}  // namespace moelab
