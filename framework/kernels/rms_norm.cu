// RMSNorm with an optional fused residual add, one block per row, float32 accumulation. Matches
// moe_model.cpp's rms_norm (transformers' order): weight * (x.float() * rsqrt(mean(x^2) + eps)).to(dtype).
// A row that can be read in 16-byte packs (8 bf16) and fits in kMaxSlots packs a thread is read once and
// kept in registers; any other row is read twice, element by element.
#include "common.cuh"

namespace moelab::kernels::launch {

namespace {

// LibTorch's mean multiplies the sum by 1 / n; the eps is added in float.
__device__ inline float inverse_rms(float squares, int64_t hidden, float eps) {
  return rsqrtf(gpu::add(gpu::mul(gpu::block_sum(squares), 1.0f / static_cast<float>(hidden)), eps));
}

// weight * (x * inv_rms).to(T), the rounding of .to(x.dtype) before the weight.
template <typename T>
__device__ inline T scaled(T x, T weight, float inv_rms) {
  return gpu::from_float<T>(gpu::mul(gpu::to_float(weight), gpu::round_to<T>(gpu::mul(gpu::to_float(x), inv_rms))));
}

constexpr int kMaxSlots = 4;  // packs a thread keeps: rows of up to 1024 * 4 packs (32768 bf16) take the packed kernel

template <typename T, int kSlots>
__global__ void rms_norm_packed_kernel(T* out, const T* x, int64_t x_stride, const T* residual, int64_t residual_stride, T* sum,
                                       int64_t sum_stride, const T* weight, int64_t hidden, float eps) {
  constexpr int N = kVec<T>;
  const int64_t row = blockIdx.x;
  const int packs = static_cast<int>(hidden / N);
  Pack<T, N> v[kSlots], r[kSlots];
  // Every load first (x, then the residual), so a thread has all its bytes in flight at once.
#pragma unroll
  for (int s = 0; s < kSlots; ++s) {
    const int c = threadIdx.x + s * blockDim.x;
    if (c < packs) v[s] = load<N>(x + row * x_stride + c * N);
  }
  if (residual) {
#pragma unroll
    for (int s = 0; s < kSlots; ++s) {
      const int c = threadIdx.x + s * blockDim.x;
      if (c < packs) r[s] = load<N>(residual + row * residual_stride + c * N);
    }
  }
  float squares = 0.0f;
#pragma unroll
  for (int s = 0; s < kSlots; ++s) {
    const int c = threadIdx.x + s * blockDim.x;
    if (c >= packs) continue;
    if (residual) {  // x + residual in T, written to sum (possibly x's own row: this thread read it above)
#pragma unroll
      for (int n = 0; n < N; ++n) v[s].v[n] = gpu::from_float<T>(gpu::add(gpu::to_float(v[s].v[n]), gpu::to_float(r[s].v[n])));
      store(sum + row * sum_stride + c * N, v[s]);
    }
#pragma unroll
    for (int n = 0; n < N; ++n) {
      const float f = gpu::to_float(v[s].v[n]);
      squares += f * f;
    }
  }
  const float inv_rms = inverse_rms(squares, hidden, eps);
#pragma unroll
  for (int s = 0; s < kSlots; ++s) {
    const int c = threadIdx.x + s * blockDim.x;
    if (c >= packs) continue;
    const Pack<T, N> w = load<N>(weight + c * N);
    Pack<T, N> o;
#pragma unroll
    for (int n = 0; n < N; ++n) o.v[n] = scaled(v[s].v[n], w.v[n], inv_rms);
    store(out + row * hidden + c * N, o);
  }
}

template <typename T>
__global__ void rms_norm_kernel(T* out, const T* x, int64_t x_stride, const T* residual, int64_t residual_stride, T* sum,
                                int64_t sum_stride, const T* weight, int64_t hidden, float eps) {
  const int64_t row_index = blockIdx.x;
  const T* row = x + row_index * x_stride;
  float squares = 0.0f;
  if (residual) {
    const T* res = residual + row_index * residual_stride;
    T* sum_row = sum + row_index * sum_stride;  // may be x's own row (in place): each thread reads before it writes
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
  const float inv_rms = inverse_rms(squares, hidden, eps);
  T* out_row = out + row_index * hidden;
  for (int64_t i = threadIdx.x; i < hidden; i += blockDim.x) out_row[i] = scaled(row[i], weight[i], inv_rms);
}

}  // namespace

const char* rms_norm(DType dtype, void* out, const void* x, int64_t x_stride, const void* residual, int64_t residual_stride, void* sum,
                     int64_t sum_stride, const void* weight, int64_t rows, int64_t hidden, float eps, void* stream) {
  if (rows == 0) return nullptr;
  with_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    const auto s = static_cast<gpu::Stream>(stream);
    auto o = static_cast<T*>(out);
    auto in = static_cast<const T*>(x);
    auto res = static_cast<const T*>(residual);
    auto sm = static_cast<T*>(sum);
    auto w = static_cast<const T*>(weight);
    // About two packs a thread, a whole number of 64-lane groups (warps on CUDA, wavefronts on CDNA).
    const int64_t packs = hidden / kVec<T>, threads = ceil_div(ceil_div(packs, 2), 64) * 64;
    const bool packed = hidden > 0 && packable<T>(out, hidden, hidden) && packable<T>(x, hidden, x_stride) &&
                        packable<T>(weight, hidden, hidden) &&
                        (!residual || (packable<T>(residual, hidden, residual_stride) && packable<T>(sum, hidden, sum_stride))) &&
                        packs <= 1024 * kMaxSlots;
    if (packed) {
      const int block = static_cast<int>(threads > 1024 ? 1024 : threads);
      const int64_t slots = ceil_div(packs, block);  // 1 or 2, up to 4 for rows of over 2048 packs
      auto kernel = slots == 1 ? rms_norm_packed_kernel<T, 1> : slots == 2 ? rms_norm_packed_kernel<T, 2> : rms_norm_packed_kernel<T, kMaxSlots>;
      kernel<<<static_cast<unsigned>(rows), block, 0, s>>>(o, in, x_stride, res, residual_stride, sm, sum_stride, w, hidden, eps);
    } else {
      rms_norm_kernel<T><<<static_cast<unsigned>(rows), row_block_threads(hidden), 0, s>>>(o, in, x_stride, res, residual_stride, sm,
                                                                                           sum_stride, w, hidden, eps);
    }
  });
  return launch_error();
}

}  // namespace moelab::kernels::launch
