// Helpers shared by the kernel files: dtype dispatch and the error a launcher returns.
#pragma once

#include "gpu_portability.h"
#include "launch.h"

namespace moelab::kernels::launch {

// Calls f(T{}) with T the storage type of `dtype`.
template <typename F>
void with_dtype(DType dtype, F&& f) {
  switch (dtype) {
    case DType::f32: f(float{}); break;
    case DType::f16: f(gpu::half{}); break;
    case DType::bf16: f(gpu::bf16{}); break;
  }
}

inline const char* launch_error() {
  gpu::Error e = gpu::last_error();
  return e == gpu::kSuccess ? nullptr : gpu::error_string(e);
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Threads for one block per row of `width` elements: about 4 elements a thread, a multiple of 64 (a
// whole number of warps on CUDA and of wavefronts on CDNA), at most 1024.
inline int row_block_threads(int64_t width) {
  int64_t threads = ceil_div(ceil_div(width, 4), 64) * 64;
  return static_cast<int>(threads < 64 ? 64 : threads > 1024 ? 1024 : threads);
}

}  // namespace moelab::kernels::launch
