// Router z-loss (ST-MoE, Zoph et al. 2022, eq. 5): the mean over the real tokens of every MoE layer of
//   z = logsumexp_e(router logit_e)^2,
// which keeps router logits small. Without padding it is transformers' router_z_loss_func over the
// layers' logits; padded positions are left out.
#include "moelab/moelab.h"
#include "moelab/lib/added_term.h"

namespace {

torch::Tensor z_loss(const moelab::ObjectiveBatch& batch) {
  return moelab::mean_over_real_tokens(batch, [](const torch::Tensor& logits) { return logits.logsumexp(-1).pow(2); });
}

}  // namespace

MOELAB_TERM_PLUGIN(z_loss, moelab::need::router_logits, "z_loss", "0.1.0", "router z-loss: mean logsumexp(router logits)^2", 1e-3)
