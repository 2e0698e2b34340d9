// RoMA's task-neighbour graph: for each sample i, the k most cosine-similar candidates j != i, with
// kernel weights W_ij = exp(-(1 - cos_ij)^2 / (2 sigma^2)) normalized to sum 1 over the k.
#pragma once

#include <torch/types.h>

#include <vector>

namespace moelab {

struct NeighbourGraph {
  torch::Tensor index;   // [N, k] int64 sample indices (into the embeddings' rows)
  torch::Tensor cosine;  // [N, k]
  torch::Tensor weight;  // [N, k], rows sum to 1
};

// embeddings: [N, D] unit rows; candidates: the rows that may be neighbours (all when empty).
// k is capped at the number of candidates other than the sample itself.
NeighbourGraph nearest_neighbours(const torch::Tensor& embeddings, const std::vector<std::int64_t>& candidates, std::int64_t k, double sigma);

}  // namespace moelab
