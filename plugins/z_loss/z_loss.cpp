// Router z-loss (ST-MoE, Zoph et al. 2022, eq. 5): the mean over the real tokens of every MoE layer of
//   z = logsumexp_e(router logit_e)^2,
// which keeps router logits small. Without padding it is transformers' router_z_loss_func over the
// layers' logits; padded positions are left out.
#include "moelab/moelab.h"

namespace {

struct Settings {
  moelab::AddedTermSettings term;
};

const moelab::Options<Settings>& options() {
  static const auto o = moelab::Options<Settings>("z_loss", moelab::Kind::objective, "0.1.0", "router z-loss: mean logsumexp(router logits)^2")
                            .include(&Settings::term, moelab::added_term_options(1e-3));
  return o;
}

moelab::ObjectiveNeeds own_needs() {
  moelab::ObjectiveNeeds n;
  n.router_logits = true;
  return n;
}

class ZLoss final : public moelab::AddedTerm {
 public:
  ZLoss(const moelab::Config& config, moelab::RunContext& context) : AddedTerm(options().read(config).term, context, "z_loss", own_needs()) {}

 protected:
  torch::Tensor term(const moelab::ObjectiveBatch& batch) override {
    std::vector<torch::Tensor> z;
    for (const auto& router : batch.routers) {
      torch::Tensor real = batch.attention_mask.reshape(-1).ne(0).to(router.logits.device());
      z.push_back(router.logits.logsumexp(-1).pow(2).masked_select(real));
    }
    return torch::cat(z).mean();
  }
};

}  // namespace

MOELAB_OBJECTIVE_PLUGIN(options, own_needs, ZLoss)
