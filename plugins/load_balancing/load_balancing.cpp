// The Switch / OLMoE load-balancing auxiliary loss over every MoE layer's router logits, concatenated:
//   L_aux = E * sum_{s,e} f_{s,e} P_e,
// f_{s,e}: share of the real tokens whose s-th choice (top-k of the softmax) is expert e; P_e: mean
// router probability of e over the real tokens. Exactly transformers' load_balancing_loss_func with
// the attention mask (its router_aux_loss_coef is coef here).
#include "moelab/moelab.h"
#include "moelab/lib/added_term.h"

namespace {

torch::Tensor load_balancing(const moelab::ObjectiveBatch& batch) {
  std::vector<torch::Tensor> layers;
  for (const auto& router : batch.routers) layers.push_back(router.logits);
  torch::Tensor probs = torch::cat(layers).softmax(-1);  // [L*N, E]
  const int64_t experts = probs.size(1);
  torch::Tensor chosen = torch::one_hot(std::get<1>(probs.topk(batch.top_k, -1)), experts).to(probs.scalar_type());  // [L*N, k, E]
  torch::Tensor real = batch.attention_mask.reshape(-1).to(probs.device(), probs.scalar_type()).repeat({static_cast<int64_t>(layers.size())});
  torch::Tensor f = (chosen * real.view({-1, 1, 1})).sum(0) / real.sum();  // [k, E]
  torch::Tensor p = (probs * real.unsqueeze(1)).sum(0) / real.sum();        // [E]
  return (f * p.unsqueeze(0)).sum() * static_cast<double>(experts);
}

}  // namespace

MOELAB_TERM_PLUGIN(load_balancing, moelab::need::router_logits, "load_balancing", "0.1.0",
                   "Switch/OLMoE load-balancing loss: E * sum_e f_e P_e over all MoE layers", 0.01)
