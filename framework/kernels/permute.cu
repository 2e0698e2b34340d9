// Tokens to expert order and back without atomics. permute gathers each sorted slot's token row;
// unpermute_combine inverts the permutation (a scatter of distinct positions into a buffer of -1) and then gathers each
// token's k expert outputs, weighting and summing them in expert order as the per-expert
// index_add_ loop of moe_model.cpp's dispatch does, so the result is deterministic.
#include "common.cuh"

namespace moelab::kernels::launch {

namespace {

template <typename T>
__global__ void permute_kernel(T* out, const T* x, int64_t x_stride, int64_t tokens, const int64_t* order, int k, int64_t hidden) {
  const int64_t token = order[blockIdx.x] / k;
  T* dst = out + blockIdx.x * hidden;
  if (token < 0 || token >= tokens) {  // not a slot of these tokens: a zero row, never a read out of bounds
    for (int64_t i = threadIdx.x; i < hidden; i += blockDim.x) dst[i] = gpu::from_float<T>(0.0f);
    return;
  }
  const T* src = x + token * x_stride;
  for (int64_t i = threadIdx.x; i < hidden; i += blockDim.x) dst[i] = src[i];
}

__global__ void invert_kernel(const int64_t* order, int64_t* inverse, int64_t n) {
  for (int64_t p = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; p < n; p += static_cast<int64_t>(gridDim.x) * blockDim.x)
    if (order[p] >= 0 && order[p] < n) inverse[order[p]] = p;
}

constexpr int kMaxTopK = 16;

template <typename T>
__global__ void combine_kernel(T* out, const T* y, const float* weights, const int64_t* inverse, int k, int64_t hidden) {
  // The token's k sorted positions in increasing order (expert order), with their slots' weights.
  __shared__ int64_t position[kMaxTopK];
  __shared__ float weight[kMaxTopK];
  __shared__ int count;
  const int64_t token = blockIdx.x;
  if (threadIdx.x == 0) {
    count = 0;
    for (int j = 0; j < k; ++j) {
      const int64_t p = inverse[token * k + j];
      if (p < 0) continue;  // a slot missing from `order` adds nothing
      const float w = gpu::round_to<T>(weights[token * k + j]);  // weights.to(x.dtype)
      int i = count++;
      for (; i > 0 && position[i - 1] > p; --i) {
        position[i] = position[i - 1];
        weight[i] = weight[i - 1];
      }
      position[i] = p;
      weight[i] = w;
    }
  }
  __syncthreads();
  for (int64_t h = threadIdx.x; h < hidden; h += blockDim.x) {
    float acc = 0.0f;
    for (int j = 0; j < count; ++j)
      acc = gpu::round_to<T>(gpu::add(acc, gpu::round_to<T>(gpu::mul(gpu::to_float(y[position[j] * hidden + h]), weight[j]))));
    out[token * hidden + h] = gpu::from_float<T>(acc);
  }
}

}  // namespace

const char* permute(DType dtype, void* out, const void* x, int64_t x_stride, int64_t tokens, const int64_t* order, int64_t n_sorted,
                    int k, int64_t hidden, void* stream) {
  if (n_sorted == 0) return nullptr;
  with_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    permute_kernel<T><<<static_cast<unsigned>(n_sorted), row_block_threads(hidden), 0, static_cast<gpu::Stream>(stream)>>>(
        static_cast<T*>(out), static_cast<const T*>(x), x_stride, tokens, order, k, hidden);
  });
  return launch_error();
}

const char* unpermute_combine(DType dtype, void* out, const void* y, const int64_t* order, const float* weights, int64_t* inverse,
                              int64_t tokens, int k, int64_t hidden, void* stream) {
  if (tokens == 0) return nullptr;
  if (k < 1 || k > kMaxTopK) return "unpermute_combine: needs 1 <= k <= 16";
  const auto s = static_cast<gpu::Stream>(stream);
  const int64_t n = tokens * k, blocks = ceil_div(n, 256);
  invert_kernel<<<static_cast<unsigned>(blocks < 65535 * 16 ? blocks : 65535 * 16), 256, 0, s>>>(order, inverse, n);
  if (const char* error = launch_error()) return error;
  with_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    combine_kernel<T><<<static_cast<unsigned>(tokens), row_block_threads(hidden), 0, s>>>(
        static_cast<T*>(out), static_cast<const T*>(y), weights, inverse, k, hidden);
  });
  return launch_error();
}

}  // namespace moelab::kernels::launch
