// Differences between the LibTorch versions moelab builds against (Debian's 1.13 and pip's 2.x).
#pragma once

#include <torch/types.h>
#include <torch/version.h>

#define MOELAB_TORCH_AT_LEAST(major, minor) \
  (TORCH_VERSION_MAJOR > (major) || (TORCH_VERSION_MAJOR == (major) && TORCH_VERSION_MINOR >= (minor)))

#if MOELAB_TORCH_AT_LEAST(2, 8)
#include <ATen/ops/_grouped_mm.h>
#endif
#if MOELAB_TORCH_AT_LEAST(2, 1)
#include <ATen/ops/scaled_dot_product_attention.h>
#endif

// c10d's base class of ProcessGroupGloo/ProcessGroupNCCL, whose collectives moelab calls: ProcessGroup in
// 1.13, Backend from 2.0 (where ProcessGroup dispatches to Backends).
namespace c10d {
class ProcessGroup;
class Backend;
}  // namespace c10d

namespace moelab::compat {

#if MOELAB_TORCH_AT_LEAST(2, 0)
using C10dBackend = c10d::Backend;
#else
using C10dBackend = c10d::ProcessGroup;
#endif

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

// at::scaled_dot_product_attention with an explicit scale (LibTorch >= 2.1): flash or memory-efficient
// kernels on CUDA. q [B, H, T, D], k/v [B, H, S, D], allowed [B, 1, T, S] bool (true: may attend), or
// undefined for plain causal attention with T == S (no padding, no cache: the flash kernel's case).
constexpr bool kHasSdpa = MOELAB_TORCH_AT_LEAST(2, 1);

inline torch::Tensor sdpa(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, const torch::Tensor& allowed, double scale) {
#if MOELAB_TORCH_AT_LEAST(2, 1)
  if (!allowed.defined()) return at::scaled_dot_product_attention(q, k, v, {}, 0.0, /*is_causal=*/true, scale);
  return at::scaled_dot_product_attention(q, k, v, allowed, 0.0, false, scale);
#else
  (void)q, (void)k, (void)v, (void)allowed, (void)scale;
  throw std::logic_error("sdpa needs LibTorch >= 2.1");
#endif
}

// A Kineto profiler event's duration in microseconds (2.x reports nanoseconds, 1.13 microseconds).
template <class KinetoEvent>
double event_duration_us(const KinetoEvent& event) {
#if MOELAB_TORCH_AT_LEAST(2, 1)
  return static_cast<double>(event.durationNs()) / 1e3;
#else
  return static_cast<double>(event.durationUs());
#endif
}

}  // namespace moelab::compat
