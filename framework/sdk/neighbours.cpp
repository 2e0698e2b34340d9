#include "moelab/lib/neighbours.h"

#include <fmt/format.h>

#include <numeric>
#include <stdexcept>

namespace moelab {

NeighbourGraph nearest_neighbours(const torch::Tensor& embeddings, const std::vector<std::int64_t>& candidates_in, std::int64_t k, double sigma) {
  std::vector<std::int64_t> candidates = candidates_in;
  if (candidates.empty()) {
    candidates.resize(embeddings.size(0));
    std::iota(candidates.begin(), candidates.end(), 0);
  }
  if (candidates.size() < 2) throw std::runtime_error(fmt::format("neighbours need at least 2 candidates, found {}", candidates.size()));
  if (k < 1 || sigma <= 0) throw std::runtime_error("neighbours need k >= 1 and sigma > 0");
  k = std::min<std::int64_t>(k, static_cast<std::int64_t>(candidates.size()) - 1);
  torch::Tensor pool = torch::tensor(candidates);
  torch::Tensor cos = embeddings.matmul(embeddings.index_select(0, pool).t());  // [N, |C|]
  // A sample is never its own neighbour.
  torch::Tensor self = torch::arange(embeddings.size(0)).unsqueeze(1).eq(pool.unsqueeze(0));
  cos = cos.masked_fill(self, -std::numeric_limits<float>::infinity());
  // Ties (identical embeddings) go to the lower candidate index on every machine: topk's order among
  // equal values differs between LibTorch versions and devices, a stable descending sort's does not.
  auto [sorted_cos, order] = torch::sort(cos, /*stable=*/true, /*dim=*/1, /*descending=*/true);
  torch::Tensor top_cos = sorted_cos.narrow(1, 0, k), top = order.narrow(1, 0, k);
  torch::Tensor w = (-(1 - top_cos).pow(2) / (2 * sigma * sigma)).exp();
  return {pool.index({top}), top_cos, w / w.sum(1, true)};
}

}  // namespace moelab
