#include "moelab/analyzer.h"

#include <torch/torch.h>

namespace moelab {

torch::Tensor RoutingRecords::rows_of_set(std::size_t s) const {
  return (set_ids == static_cast<int64_t>(s)).nonzero().squeeze(1);
}

torch::Tensor usage_shares(const torch::Tensor& topk_ids, long long num_experts, const torch::Tensor& mass) {
  const int64_t layers = topk_ids.size(1);
  torch::Tensor ids = topk_ids.permute({1, 0, 2}).reshape({layers, -1});
  torch::Tensor weight = mass.defined() ? mass.to(torch::kFloat64).permute({1, 0, 2}).reshape({layers, -1})
                                        : torch::ones(ids.sizes(), torch::kFloat64);
  torch::Tensor counts = torch::zeros({layers, num_experts}, torch::kFloat64).scatter_add_(1, ids, weight);
  return counts / counts.sum(1, true).clamp_min(1e-300);
}

}  // namespace moelab
