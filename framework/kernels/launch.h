// The raw kernel launchers behind kernels.h: plain pointers, sizes and a stream, no LibTorch and no
// GPU headers, so the .cu files build with nvcc or hipcc alone and the wrappers with the C++ compiler.
// Each launcher returns nullptr on success or the runtime's error message. Rows are contiguous in
// their last dimension; strides are in elements.
#pragma once

#include <cstdint>

namespace moelab::kernels::launch {

enum class DType : int { f32, f16, bf16 };

// out[r] = weight * round(x[r] * rsqrt(mean(x[r]^2) + eps)); with residual, x[r] + residual[r] (rounded
// to the dtype) is normalized instead and written to sum[r] (which may be x itself). x, residual, sum,
// out: [rows, hidden], out contiguous; weight: [hidden].
const char* rms_norm(DType dtype, void* out, const void* x, int64_t x_stride, const void* residual, int64_t residual_stride, void* sum,
                     int64_t sum_stride, const void* weight, int64_t rows, int64_t hidden, float eps, void* stream);

// out[r, i] = round(round(silu(gate[r, i])) * up[r, i]); out: [rows, width] contiguous.
const char* silu_mul(DType dtype, void* out, const void* gate, int64_t gate_stride, const void* up, int64_t up_stride,
                     int64_t rows, int64_t width, void* stream);

// Rotates x [B, H, T, R] in place (strides in elements; the last is 1) by angles [B or 1, T, R/2]
// float32 (strides angle_b, angle_t; the last is 1), cos and sin scaled by `factor`.
struct RopeTensor {
  void* data = nullptr;
  int64_t heads = 0, stride_b = 0, stride_h = 0, stride_t = 0;
};
const char* rope(DType dtype, RopeTensor q, RopeTensor k, int64_t batch, int64_t tokens, int64_t rot_dim, const float* angles,
                 int64_t angle_stride_b, int64_t angle_stride_t, float factor, bool interleaved, void* stream);

// Softmax over logits [rows, experts] float32 (contiguous), the top k (largest first, ties to the
// lower expert id), their probabilities optionally divided by (sum + 1e-20), then times scale.
const char* route_softmax_topk(const float* logits, int64_t rows, int experts, int k, bool renormalize, float scale, int64_t* ids,
                               float* weights, void* stream);

// out[i] = x[order[i] / k] for i < n_sorted (a zero row where order[i] / k is not in [0, tokens));
// x: [tokens, hidden] (row stride x_stride), out contiguous.
const char* permute(DType dtype, void* out, const void* x, int64_t x_stride, int64_t tokens, const int64_t* order, int64_t n_sorted,
                    int k, int64_t hidden, void* stream);

// out[t] = sum over the k slots of token t, in the order they appear in `order` (expert order), of
// round(y[p] * round(w[t, j])), each partial sum rounded to the dtype, where order[p] = t * k + j
// (a slot that no p names adds nothing). y: [tokens * k, hidden] contiguous in sorted order; weights
// [tokens, k] float32; inverse: scratch int64 [tokens * k] filled with -1; out: [tokens, hidden] contiguous.
const char* unpermute_combine(DType dtype, void* out, const void* y, const int64_t* order, const float* weights, int64_t* inverse,
                              int64_t tokens, int k, int64_t hidden, void* stream);

}  // namespace moelab::kernels::launch
