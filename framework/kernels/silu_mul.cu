// SiLU(gate) * up for the expert and dense MLPs, rounded as LibTorch's torch::silu(g) * u rounds: the
// SiLU is computed in float and stored in the dtype, then the product is computed in float and stored.
// Rows are read in 16-byte packs (8 bf16) when pointers, width and strides allow, else element by element.
#include "common.cuh"

namespace moelab::kernels::launch {

namespace {

// expf, not __expf: the fast one differs from LibTorch's in the last bits and would break the
// bit-equality of kernels.h's contract. The kernel is bound by memory, not by this.
template <typename T>
__device__ inline T silu_times(T gate, T up) {
  const float g = gpu::to_float(gate);
  const float silu = gpu::round_to<T>(g / (1.0f + expf(-g)));  // ActivationSiluKernel.cu: x / (1 + exp(-x))
  return gpu::from_float<T>(gpu::mul(silu, gpu::to_float(up)));
}

// Packs of N elements, row_packs = width / N a row; pack i of the output is (row r, pack c) of the
// inputs, stepped without a division per pack.
template <typename T, int N>
__global__ void silu_mul_kernel(T* out, const T* gate, int64_t gate_stride, const T* up, int64_t up_stride, int64_t rows,
                                int64_t row_packs) {
  const int64_t total = rows * row_packs, step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= total) return;
  int64_t r = i / row_packs, c = i - r * row_packs;
  const int64_t step_r = step / row_packs, step_c = step - step_r * row_packs;
  for (; i < total; i += step) {
    const Pack<T, N> g = load<N>(gate + r * gate_stride + c * N), u = load<N>(up + r * up_stride + c * N);
    Pack<T, N> o;
#pragma unroll
    for (int n = 0; n < N; ++n) o.v[n] = silu_times(g.v[n], u.v[n]);
    store(out + i * N, o);
    r += step_r;
    c += step_c;
    if (c >= row_packs) {
      c -= row_packs;
      ++r;
    }
  }
}

template <typename T, int N>
void launch_silu_mul(T* out, const T* gate, int64_t gate_stride, const T* up, int64_t up_stride, int64_t rows, int64_t width,
                     gpu::Stream stream) {
  constexpr int threads = 256;
  const int64_t row_packs = width / N;
  silu_mul_kernel<T, N><<<grid_blocks(rows * row_packs, threads), threads, 0, stream>>>(out, gate, gate_stride, up, up_stride, rows,
                                                                                       row_packs);
}

}  // namespace

const char* silu_mul(DType dtype, void* out, const void* gate, int64_t gate_stride, const void* up, int64_t up_stride,
                     int64_t rows, int64_t width, void* stream) {
  if (rows * width == 0) return nullptr;
  with_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    const auto s = static_cast<gpu::Stream>(stream);
    auto o = static_cast<T*>(out);
    auto g = static_cast<const T*>(gate);
    auto u = static_cast<const T*>(up);
    if (packable<T>(out, width, width) && packable<T>(gate, width, gate_stride) && packable<T>(up, width, up_stride))
      launch_silu_mul<T, kVec<T>>(o, g, gate_stride, u, up_stride, rows, width, s);
    else
      launch_silu_mul<T, 1>(o, g, gate_stride, u, up_stride, rows, width, s);
  });
  return launch_error();
}

}  // namespace moelab::kernels::launch
