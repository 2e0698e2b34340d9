// RMSNorm with an optional fused residual add, one block per row, float32 accumulation. Matches
// moe_model.cpp's rms_norm (transformers' order): weight * (x.float() * rsqrt(mean(x^2) + eps)).to(dtype).
#include "common.cuh"

namespace moelab::kernels::launch {

namespace {

template <typename T>
__global__ void rms_norm_kernel(T* out, const T* x, int64_t x_stride, const T* residual, int64_t residual_stride, T* sum,
                                int64_t sum_stride, const T* weight, int64_t hidden, float eps) {
  const T* row = x + blockIdx.x * x_stride;
  float squares = 0.0f;
  if (residual) {
    const T* res = residual + blockIdx.x * residual_stride;
    T* sum_row = sum + blockIdx.x * sum_stride;  // may be x's own row (in place): each thread reads before it writes
    for (int64_t i = threadIdx.x; i < hidden; i += blockDim.x) {
      const T s = gpu::from_float<T>(gpu::add(gpu::to_float(row[i]), gpu::to_float(res[i])));  // x + residual in T
      sum_row[i] = s;
      const float v = gpu::to_float(s);
      squares += v * v;
    }
    row = sum_row;  // the second pass reads back what this thread wrote
  } else {
    for (int64_t i = threadIdx.x; i < hidden; i += blockDim.x) {
      const float v = gpu::to_float(row[i]);
      squares += v * v;
    }
  }
  // LibTorch's mean multiplies the sum by 1 / n; the eps is added in float.
  const float inv_rms = rsqrtf(gpu::add(gpu::mul(gpu::block_sum(squares), 1.0f / static_cast<float>(hidden)), eps));
  T* out_row = out + blockIdx.x * hidden;
  for (int64_t i = threadIdx.x; i < hidden; i += blockDim.x) {
    float normed = gpu::round_to<T>(gpu::mul(gpu::to_float(row[i]), inv_rms));  // .to(x.dtype) before the weight
    out_row[i] = gpu::from_float<T>(gpu::mul(gpu::to_float(weight[i]), normed));
  }
}

}  // namespace

const char* rms_norm(DType dtype, void* out, const void* x, int64_t x_stride, const void* residual, int64_t residual_stride, void* sum,
                     int64_t sum_stride, const void* weight, int64_t rows, int64_t hidden, float eps, void* stream) {
  if (rows == 0) return nullptr;
  with_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    rms_norm_kernel<T><<<static_cast<unsigned>(rows), row_block_threads(hidden), 0, static_cast<gpu::Stream>(stream)>>>(
        static_cast<T*>(out), static_cast<const T*>(x), x_stride, static_cast<const T*>(residual), residual_stride, static_cast<T*>(sum),
        sum_stride, static_cast<const T*>(weight), hidden, eps);
  });
  return launch_error();
}

}  // namespace moelab::kernels::launch
