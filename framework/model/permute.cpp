#include "permute.h"

#include <torch/torch.h>

namespace moelab {

namespace {

using torch::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;

// Gathers rows `forward_index` of x; the gradient gathers rows `backward_index` of the incoming one and
// sums groups of `group` rows (1: a permutation's inverse; k: a token's copies).
struct GatherRows : torch::autograd::Function<GatherRows> {
  static Tensor forward(AutogradContext* ctx, const Tensor& x, const Tensor& forward_index, const Tensor& backward_index,
                        int64_t group) {
    ctx->saved_data["backward_index"] = backward_index;
    ctx->saved_data["group"] = group;
    return x.index_select(0, forward_index);
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    const Tensor index = ctx->saved_data["backward_index"].toTensor();
    const int64_t group = ctx->saved_data["group"].toInt();
    Tensor g = grads[0].index_select(0, index);
    if (group > 1) g = g.view({-1, group, g.size(1)}).sum(1);
    return {g, Tensor(), Tensor(), Tensor()};
  }
};

}  // namespace

ExpertOrder expert_order(const Tensor& ids) {
  ExpertOrder o;
  o.tokens = ids.size(0);
  o.top_k = ids.size(1);
  Tensor flat = ids.reshape(-1);
  o.order = std::get<1>(flat.sort(/*stable=*/true, 0, false));
  o.token_of = o.order.div(o.top_k, "floor");
  o.slot_of = torch::empty_like(o.order).scatter_(0, o.order, torch::arange(o.order.numel(), o.order.options()));
  return o;
}

Tensor to_expert_order(const Tensor& x, const ExpertOrder& o) { return GatherRows::apply(x, o.token_of, o.slot_of, o.top_k); }

Tensor from_expert_order(const Tensor& y, const ExpertOrder& o) {
  return GatherRows::apply(y, o.slot_of, o.order, 1).view({o.tokens, o.top_k, y.size(1)});
}

}  // namespace moelab
