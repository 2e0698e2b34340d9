// Rotary position embedding applied in place to q and k, one block per (batch row, token), the
// angles' cos and sin computed once per pair of dimensions and applied to every head. Rounding follows
// moe_model.cpp's rope(): the half-rotation layout rounds cos and sin to the dtype and every product
// and the sum (x * cos + rotate_half(x) * sin in the dtype); the interleaved layout (DeepSeek) works in
// float and rounds once.
#include "common.cuh"

namespace moelab::kernels::launch {

namespace {

template <typename T>
__device__ void rotate_pair(T* x, int64_t j, int64_t half, float c, float s, bool interleaved) {
  if (interleaved) {
    const float re = gpu::to_float(x[2 * j]), im = gpu::to_float(x[2 * j + 1]);
    x[2 * j] = gpu::from_float<T>(gpu::sub(gpu::mul(re, c), gpu::mul(im, s)));
    x[2 * j + 1] = gpu::from_float<T>(gpu::add(gpu::mul(re, s), gpu::mul(im, c)));
    return;
  }
  const float c_t = gpu::round_to<T>(c), s_t = gpu::round_to<T>(s);
  const float a = gpu::to_float(x[j]), b = gpu::to_float(x[j + half]);
  x[j] = gpu::from_float<T>(gpu::add(gpu::round_to<T>(gpu::mul(a, c_t)), gpu::round_to<T>(gpu::mul(-b, s_t))));
  x[j + half] = gpu::from_float<T>(gpu::add(gpu::round_to<T>(gpu::mul(b, c_t)), gpu::round_to<T>(gpu::mul(a, s_t))));
}

template <typename T>
__global__ void rope_kernel(RopeTensor q, RopeTensor k, int64_t tokens, int64_t half, const float* angles, int64_t angle_stride_b,
                            int64_t angle_stride_t, float factor, bool interleaved) {
  const int64_t b = blockIdx.x / tokens, t = blockIdx.x % tokens;
  const float* angle = angles + b * angle_stride_b + t * angle_stride_t;
  T* q_row = static_cast<T*>(q.data) + b * q.stride_b + t * q.stride_t;
  T* k_row = k.data ? static_cast<T*>(k.data) + b * k.stride_b + t * k.stride_t : nullptr;
  for (int64_t j = threadIdx.x; j < half; j += blockDim.x) {
    const float c = gpu::mul(cosf(angle[j]), factor), s = gpu::mul(sinf(angle[j]), factor);
    for (int64_t h = threadIdx.y; h < q.heads; h += blockDim.y) rotate_pair(q_row + h * q.stride_h, j, half, c, s, interleaved);
    if (k_row)
      for (int64_t h = threadIdx.y; h < k.heads; h += blockDim.y) rotate_pair(k_row + h * k.stride_h, j, half, c, s, interleaved);
  }
}

}  // namespace

const char* rope(DType dtype, RopeTensor q, RopeTensor k, int64_t batch, int64_t tokens, int64_t rot_dim, const float* angles,
                 int64_t angle_stride_b, int64_t angle_stride_t, float factor, bool interleaved, void* stream) {
  const int64_t half = rot_dim / 2;
  if (batch * tokens == 0 || half == 0) return nullptr;
  // x covers the pairs (a multiple of 32, at most 128), y the heads: 256 threads in all.
  const int x = static_cast<int>(half >= 128 ? 128 : ceil_div(half, 32) * 32);
  const dim3 threads(x, 256 / x);
  with_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    rope_kernel<T><<<static_cast<unsigned>(batch * tokens), threads, 0, static_cast<gpu::Stream>(stream)>>>(
        q, k, tokens, half, angles, angle_stride_b, angle_stride_t, factor, interleaved);
  });
  return launch_error();
}

}  // namespace moelab::kernels::launch
