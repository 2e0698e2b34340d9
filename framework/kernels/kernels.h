// moelab's own GPU kernels (CUDA, or HIP with MOELAB_HIP=ON) for the forward pass, as LibTorch
// functions. Each one computes what the plain LibTorch composition beside it computes, rounded the
// same way except where noted. They are forward-only: available() is false for a tensor autograd
// tracks, so training keeps the LibTorch path. On a build without the kernels (the CPU build)
// nothing here is compiled, available() is false and the other functions throw. Rows move in 16-byte
// packs (8 bf16) where pointers, widths and strides allow and element by element otherwise; both paths
// keep the contracts below (kernels_test checks both, on aligned and on misaligned views).
#pragma once

#include <torch/types.h>

#include <stdexcept>
#include <utility>

namespace moelab::kernels {

// True when the kernels were built and t is a CUDA (or ROCm) tensor of float32, float16 or bfloat16
// that autograd does not track (no requires_grad under grad mode). Callers check it on the input
// tensor and otherwise take the LibTorch path.
bool available(const torch::Tensor& t);

// weight * (x.float() * rsqrt(mean(x^2, -1) + eps)).to(x.dtype), float32 accumulation; x [..., H],
// weight [H] of x's dtype. The mean is summed in another order than LibTorch's: float32 agrees to
// about 1e-6 relative; in bf16/fp16 a few elements move by 1 unit in the last place (ulp) when the
// normalized value crosses a rounding boundary, 2 at most after the product with the weight.
torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps);

// `x = x + residual; h = rms_norm(x, weight, eps)` in one pass: returns {x + residual (rounded to the
// dtype), h}; x is left as it is.
std::pair<torch::Tensor, torch::Tensor> add_rms_norm(const torch::Tensor& x, const torch::Tensor& residual, const torch::Tensor& weight,
                                                     double eps);
// The same in place: x += residual, returns h. Only for an x that nothing else holds (not a cached
// or captured hidden state).
torch::Tensor add_rms_norm_(torch::Tensor& x, const torch::Tensor& residual, const torch::Tensor& weight, double eps);

// torch::silu(gate) * up, rounded as that composition rounds (the SiLU, x / (1 + expf(-x)) in float,
// stored in the dtype, then the product): equal to it bit for bit where expf is LibTorch's (the test
// prints the share). gate, up [..., I] -> [..., I].
torch::Tensor silu_mul(const torch::Tensor& gate, const torch::Tensor& up);
// The same on one [..., 2I] tensor whose first half is the gate and second half the up projection.
torch::Tensor silu_mul(const torch::Tensor& gate_up);

// Rotates q [B, Hq, T, R] and k [B, Hk, T, R] (k may be undefined) in place by angles [B or 1, T, R/2]
// float32 (positions times inverse frequencies), cos and sin times `factor`. Half-rotation layout
// (x * cos + rotate_half(x) * sin, cos and sin rounded to the dtype as moe_model.cpp's rope() does)
// or interleaved pairs (2j, 2j + 1) computed in float and rounded once (DeepSeek). The last dimension
// must be contiguous; other strides are free (transposed or narrowed views). R <= 8192.
void rope_(torch::Tensor& q, torch::Tensor& k, const torch::Tensor& angles, double factor, bool interleaved);

// The plain softmax router of route.cpp (softmax scoring, no bias, no groups, choice = weights):
// softmax over logits [N, E] float32, the top k (largest first; equal probabilities go to the lower
// expert id), their probabilities, divided by (their sum + 1e-20) when renormalize, times scale.
struct TopK {
  torch::Tensor weights;  // [N, k] float32
  torch::Tensor ids;      // [N, k] int64
};
TopK route_softmax_topk(const torch::Tensor& logits, int64_t k, bool renormalize, double scale);
// available(logits), float32 [N, E] with E <= 256 and 1 <= k <= min(16, E).
bool route_available(const torch::Tensor& logits, int64_t k);

// Tokens in expert order: out[i] = x[order[i] / k] for x [N, H] and order [M] int64 (the argsort of the
// flat [N, k] expert ids): x.index_select(0, order.div(k, "floor")). An index outside x gives a zero row.
torch::Tensor permute(const torch::Tensor& x, const torch::Tensor& order, int64_t k);

// The weighted combine back to tokens without atomics: y [N * k, H] holds the expert outputs in
// `order`'s order (a permutation of 0 .. N * k - 1), weights [N, k] float32 the routing weights in
// token order. out[t] = sum over t's k slots, in expert order, of y * weight, with the weight, each
// product and each partial sum rounded to y's dtype: the per-expert index_add_ loop of dispatch, bit
// for bit, and deterministic. Returns [N, H] of y's dtype.
torch::Tensor unpermute_combine(const torch::Tensor& y, const torch::Tensor& order, const torch::Tensor& weights);

#if !defined(MOELAB_KERNELS)
// Built without the kernels: callers see available() false and never reach the rest.
[[noreturn]] inline void not_built() { throw std::logic_error("moelab was built without its GPU kernels (MOELAB_CUDA_KERNELS / MOELAB_HIP)"); }
inline bool available(const torch::Tensor&) { return false; }
inline bool route_available(const torch::Tensor&, int64_t) { return false; }
inline torch::Tensor rms_norm(const torch::Tensor&, const torch::Tensor&, double) { not_built(); }
inline std::pair<torch::Tensor, torch::Tensor> add_rms_norm(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&, double) {
  not_built();
}
inline torch::Tensor add_rms_norm_(torch::Tensor&, const torch::Tensor&, const torch::Tensor&, double) { not_built(); }
inline torch::Tensor silu_mul(const torch::Tensor&, const torch::Tensor&) { not_built(); }
inline torch::Tensor silu_mul(const torch::Tensor&) { not_built(); }
inline void rope_(torch::Tensor&, torch::Tensor&, const torch::Tensor&, double, bool) { not_built(); }
inline TopK route_softmax_topk(const torch::Tensor&, int64_t, bool, double) { not_built(); }
inline torch::Tensor permute(const torch::Tensor&, const torch::Tensor&, int64_t) { not_built(); }
inline torch::Tensor unpermute_combine(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&) { not_built(); }
#endif

}  // namespace moelab::kernels
