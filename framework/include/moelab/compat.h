// Differences between the LibTorch versions moelab builds against (Debian's 1.13 and pip's 2.x).
#pragma once

#include <torch/types.h>
#include <torch/version.h>

#define MOELAB_TORCH_AT_LEAST(major, minor) \
  (TORCH_VERSION_MAJOR > (major) || (TORCH_VERSION_MAJOR == (major) && TORCH_VERSION_MINOR >= (minor)))

#if MOELAB_TORCH_AT_LEAST(2, 8)
#include <ATen/ops/_grouped_mm.h>
#endif

namespace moelab::compat {

// at::_grouped_mm (LibTorch >= 2.8): one kernel for all experts' matmuls over tokens sorted by expert.
constexpr bool kHasGroupedMm = MOELAB_TORCH_AT_LEAST(2, 8);

// x [tokens, K] sorted by group; weights [G, N, K] (row-major, as checkpoints store them); ends [G]
// int32 cumulative token counts. Returns [tokens, N]. Call only when kHasGroupedMm.
inline torch::Tensor grouped_mm(const torch::Tensor& x, const torch::Tensor& weights, const torch::Tensor& ends) {
#if MOELAB_TORCH_AT_LEAST(2, 8)
  return at::_grouped_mm(x, weights.transpose(1, 2), ends);
#else
  (void)x, (void)weights, (void)ends;
  throw std::logic_error("grouped_mm needs LibTorch >= 2.8");
#endif
}

}  // namespace moelab::compat
