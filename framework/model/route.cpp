#include "route.h"

#include <limits>

namespace moelab {

namespace {

torch::Tensor scores_of(const torch::Tensor& logits, Scoring scoring) {
  return scoring == Scoring::softmax ? logits.softmax(-1) : logits.sigmoid();
}

// Experts outside the `groups_kept` best groups get -inf, so top-k never picks them.
torch::Tensor keep_best_groups(const torch::Tensor& choice, const RouterSpec& spec) {
  torch::Tensor grouped = choice.view({choice.size(0), spec.groups, -1});
  torch::Tensor group_scores =
      spec.group_score == GroupScore::max ? std::get<0>(grouped.max(-1)) : std::get<0>(grouped.topk(2, -1)).sum(-1);
  torch::Tensor kept = torch::zeros_like(group_scores).scatter_(1, std::get<1>(group_scores.topk(spec.groups_kept, -1)), 1.0);
  return grouped.masked_fill(kept.eq(0).unsqueeze(-1), -std::numeric_limits<double>::infinity()).view_as(choice);
}

}  // namespace

Routing route(const torch::Tensor& logits, const RouterSpec& spec, const torch::Tensor& selection_logits) {
  torch::Tensor scores = scores_of(logits, spec.scoring);
  bool own_selection = selection_logits.defined() && !selection_logits.is_same(logits);
  torch::Tensor choice = own_selection ? scores_of(selection_logits, spec.scoring) : scores;
  if (spec.bias.defined()) choice = choice + spec.bias;
  if (spec.groups > 1) choice = keep_best_groups(choice, spec);
  Routing r;
  r.ids = std::get<1>(choice.topk(spec.top_k, -1));
  r.weights = scores.gather(-1, r.ids);
  // DeepSeek-V3's 1e-20 guards sigmoid sums; a softmax top-k sum (at least k / E) does not feel it.
  if (spec.renormalize) r.weights = r.weights / (r.weights.sum(-1, true) + 1e-20);
  if (spec.scale != 1.0) r.weights = r.weights * spec.scale;
  return r;
}

}  // namespace moelab
