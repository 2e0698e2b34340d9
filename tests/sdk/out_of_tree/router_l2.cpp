// An out-of-tree objective: the mean squared router logit over the real tokens of every MoE layer, a
// penalty that keeps routers from growing sharp. add_to = "<task table>" adds it to a task loss.
#include <moelab/moelab.h>
#include <moelab/lib/added_term.h>

namespace {

torch::Tensor router_l2(const moelab::ObjectiveBatch& batch) {
  return moelab::mean_over_real_tokens(batch, [](const torch::Tensor& logits) { return logits.pow(2).mean(-1); });
}

}  // namespace

MOELAB_TERM_PLUGIN(router_l2, moelab::need::router_logits, "router_l2", "1.0.0", "mean squared router logit", 1e-3)
