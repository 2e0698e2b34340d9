// SiLU(gate) * up for the expert and dense MLPs, rounded as LibTorch's torch::silu(g) * u rounds: the
// SiLU is computed in float and stored in the dtype, then the product is computed in float and stored.
#include "common.cuh"

namespace moelab::kernels::launch {

namespace {

template <typename T>
__global__ void silu_mul_kernel(T* out, const T* gate, int64_t gate_stride, const T* up, int64_t up_stride, int64_t rows,
                                int64_t width) {
  const int64_t total = rows * width;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / width, c = i % width;
    const float g = gpu::to_float(gate[r * gate_stride + c]);
    const float silu = gpu::round_to<T>(g / (1.0f + expf(-g)));  // ActivationSiluKernel.cu: x / (1 + exp(-x))
    out[i] = gpu::from_float<T>(gpu::mul(silu, gpu::to_float(up[r * up_stride + c])));
  }
}

}  // namespace

const char* silu_mul(DType dtype, void* out, const void* gate, int64_t gate_stride, const void* up, int64_t up_stride,
                     int64_t rows, int64_t width, void* stream) {
  const int64_t total = rows * width;
  if (total == 0) return nullptr;
  constexpr int threads = 256;
  const int64_t blocks = ceil_div(total, threads);
  with_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    silu_mul_kernel<T><<<static_cast<unsigned>(blocks < 65535 * 16 ? blocks : 65535 * 16), threads, 0, static_cast<gpu::Stream>(stream)>>>(
        static_cast<T*>(out), static_cast<const T*>(gate), gate_stride, static_cast<const T*>(up), up_stride, rows, width);
  });
  return launch_error();
}

}  // namespace moelab::kernels::launch
