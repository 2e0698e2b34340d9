// The Switch / OLMoE load-balancing auxiliary loss over every MoE layer's router logits, concatenated:
//   L_aux = E * sum_{s,e} f_{s,e} P_e,
// f_{s,e}: share of the real tokens whose s-th choice (top-k of the softmax) is expert e; P_e: mean
// router probability of e over the real tokens. Exactly transformers' load_balancing_loss_func with
// the attention mask (without router_aux_loss_coef: that is coef here).
#include "moelab/moelab.h"

namespace {

struct Settings {
  moelab::AddedTermSettings term;
};

const moelab::Options<Settings>& options() {
  static const auto o = moelab::Options<Settings>("load_balancing", moelab::Kind::objective, "0.1.0",
                                                  "Switch/OLMoE load-balancing loss: E * sum_e f_e P_e over all MoE layers")
                            .include(&Settings::term, moelab::added_term_options(0.01));
  return o;
}

moelab::ObjectiveNeeds own_needs() {
  moelab::ObjectiveNeeds n;
  n.router_logits = true;
  return n;
}

class LoadBalancing final : public moelab::AddedTerm {
 public:
  LoadBalancing(const moelab::Config& config, moelab::RunContext& context)
      : AddedTerm(options().read(config).term, context, "load_balancing", own_needs()) {}

 protected:
  torch::Tensor term(const moelab::ObjectiveBatch& batch) override {
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
};

}  // namespace

MOELAB_OBJECTIVE_PLUGIN(options, own_needs, LoadBalancing)
