// RoE's exploration noise on router logits and how often it changes a layer's choice: the roe sampler
// adds tau * g, g ~ Gumbel(0, 1), to the logits before top-k; roe_calibrate and generate measure the
// share of tokens whose chosen expert set differs from the clean one (the top-k change rate).
#pragma once

#include "moelab/sampler.h"

#include <torch/torch.h>

#include <cstdint>

namespace moelab {

// Gumbel(0, 1) draws [n, e], float64: -log(-log(u)) of counter_uniform(seed, counter), so the same
// (seed, counter) gives the same draws on any device.
inline torch::Tensor gumbel_noise(std::uint64_t seed, std::uint64_t counter, std::int64_t n, std::int64_t e, torch::Device device) {
  return -(-counter_uniform(seed, counter, {n, e}, device).log()).log();
}

// ids [..., k] against reference [..., k] (broadcast): true where the two expert sets differ, in any order.
inline torch::Tensor topk_set_changed(const torch::Tensor& ids, const torch::Tensor& reference) {
  return std::get<0>(ids.sort(-1)).ne(std::get<0>(reference.sort(-1))).any(-1);
}

}  // namespace moelab
