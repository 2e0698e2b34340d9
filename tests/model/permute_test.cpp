// Token rows to expert order and back (framework/model/permute.h): values and gradients equal LibTorch's
// index_select / index_add composition, which the gathers replace on the GPU path.
#include "permute.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

namespace {

using torch::Tensor;

// Expert ids [N, k] with k distinct experts per token out of E, and ties between tokens.
Tensor random_ids(int64_t n, int64_t k, int64_t experts) {
  return std::get<1>(torch::rand({n, experts}, torch::kFloat64).topk(k, 1));
}

TEST(Permute, ExpertOrderSortsByExpertAndInvertsTheOrder) {
  torch::manual_seed(3);
  Tensor ids = random_ids(37, 4, 8);
  moelab::ExpertOrder o = moelab::expert_order(ids);
  Tensor flat = ids.reshape(-1);
  Tensor sorted = flat.index_select(0, o.order);
  EXPECT_TRUE((sorted.slice(0, 1) >= sorted.slice(0, 0, -1)).all().item<bool>()) << "expert order is sorted by expert";
  EXPECT_TRUE(torch::equal(o.order.index_select(0, o.slot_of), torch::arange(flat.numel())));
  EXPECT_TRUE(torch::equal(o.token_of, o.order.div(4, "floor")));
  // Stable: within one expert, tokens keep their order.
  for (int64_t p = 1; p < flat.numel(); ++p)
    if (sorted[p].item<int64_t>() == sorted[p - 1].item<int64_t>()) EXPECT_LT(o.order[p - 1].item<int64_t>(), o.order[p].item<int64_t>());
}

TEST(Permute, GathersAndTheirGradientsEqualIndexSelectAndIndexAdd) {
  torch::manual_seed(5);
  const int64_t n = 29, k = 3, hidden = 6;
  Tensor ids = random_ids(n, k, 5);
  moelab::ExpertOrder o = moelab::expert_order(ids);
  Tensor x = torch::randn({n, hidden}, torch::kFloat64).requires_grad_(true);
  Tensor w = torch::rand({n, k}, torch::kFloat64).requires_grad_(true);
  Tensor scale = torch::randn({n * k, hidden}, torch::kFloat64);  // a per-slot "expert" so gradients differ by slot

  // The path of moe_model.cpp's grouped dispatch ...
  Tensor sorted = moelab::to_expert_order(x, o);
  Tensor out = torch::bmm(w.unsqueeze(1), moelab::from_expert_order(sorted * scale, o)).squeeze(1);
  // ... and the index_select / index_add_ composition it replaces.
  Tensor sorted_ref = x.index_select(0, o.token_of);
  Tensor out_ref = torch::zeros({n, hidden}, torch::kFloat64)
                       .index_add(0, o.token_of, (sorted_ref * scale) * w.reshape(-1).index_select(0, o.order).unsqueeze(1));
  EXPECT_TRUE(torch::equal(sorted, sorted_ref));
  EXPECT_TRUE(torch::allclose(out, out_ref, 1e-12, 1e-12));

  Tensor upstream = torch::randn({n, hidden}, torch::kFloat64);
  auto grads = torch::autograd::grad({out}, {x, w}, {upstream});
  auto grads_ref = torch::autograd::grad({out_ref}, {x, w}, {upstream});
  EXPECT_TRUE(torch::allclose(grads[0], grads_ref[0], 1e-12, 1e-12));
  EXPECT_TRUE(torch::allclose(grads[1], grads_ref[1], 1e-12, 1e-12));
}

TEST(Permute, GradientsMatchFiniteDifferences) {
  torch::manual_seed(7);
  Tensor ids = random_ids(11, 2, 4);
  moelab::ExpertOrder o = moelab::expert_order(ids);
  Tensor x = torch::randn({11, 3}, torch::kFloat64).requires_grad_(true);
  Tensor scale = torch::randn({22, 3}, torch::kFloat64);
  Tensor upstream = torch::randn({11, 2, 3}, torch::kFloat64);
  auto loss = [&](const Tensor& in) { return (moelab::from_expert_order(moelab::to_expert_order(in, o) * scale, o) * upstream).sum(); };
  Tensor analytic = torch::autograd::grad({loss(x)}, {x})[0];
  torch::NoGradGuard no_grad;
  const double eps = 1e-6;
  for (int64_t i = 0; i < x.numel(); ++i) {
    Tensor plus = x.detach().clone(), minus = x.detach().clone();
    plus.view(-1)[i] += eps;
    minus.view(-1)[i] -= eps;
    const double numeric = (loss(plus).item<double>() - loss(minus).item<double>()) / (2 * eps);
    EXPECT_NEAR(analytic.view(-1)[i].item<double>(), numeric, 1e-7) << "element " << i;
  }
}

}  // namespace
