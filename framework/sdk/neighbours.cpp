#include "moelab/lib/neighbours.h"

#include <fmt/format.h>

#include <algorithm>
#include <limits>
#include <numeric>
#include <stdexcept>
#include <vector>

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
  // Ranked on the host in float64, with cosines within kTie of the best of their run counted as ties
  // that go to the lower candidate index: questions that embed alike (or equally close) get the same
  // neighbours on every machine, whatever order a BLAS sums in (topk's order among near-equal values
  // differs between LibTorch versions, devices and BLAS builds).
  constexpr double kTie = 1e-6;
  const torch::Tensor c = cos.to(torch::kCPU, torch::kFloat64).contiguous();
  const std::int64_t rows = c.size(0), columns = c.size(1);
  const double* at = c.data_ptr<double>();
  torch::Tensor top = torch::empty({rows, k}, torch::kInt64);
  std::vector<std::int64_t> order(static_cast<std::size_t>(columns));
  for (std::int64_t i = 0; i < rows; ++i) {
    const double* row = at + i * columns;
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](std::int64_t a, std::int64_t b) { return row[a] > row[b]; });
    for (std::size_t start = 0; start < order.size();) {
      std::size_t end = start + 1;
      while (end < order.size() && row[order[start]] - row[order[end]] < kTie) ++end;
      std::sort(order.begin() + static_cast<long>(start), order.begin() + static_cast<long>(end));
      start = end;
    }
    std::copy(order.begin(), order.begin() + k, top[i].data_ptr<std::int64_t>());
  }
  const torch::Tensor top_cos = cos.gather(1, top.to(cos.device()));
  torch::Tensor w = (-(1 - top_cos).pow(2) / (2 * sigma * sigma)).exp();
  return {pool.index({top}), top_cos, w / w.sum(1, true)};
}

}  // namespace moelab
