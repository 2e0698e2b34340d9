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

// N elements of T read or written as one access: 16 bytes (one 128-bit load or store) at N = kVec<T>,
// a plain element at N = 1. The address must be a multiple of the pack's size.
template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};
template <typename T>
constexpr int kVec = static_cast<int>(16 / sizeof(T));

template <int N, typename T>
__device__ inline Pack<T, N> load(const T* p) {
  return *reinterpret_cast<const Pack<T, N>*>(p);
}
template <int N, typename T>
__device__ inline void store(T* p, const Pack<T, N>& v) {
  *reinterpret_cast<Pack<T, N>*>(p) = v;
}

// Host side: whether rows of `width` elements at `p` with row `stride` (elements) can be read in
// 16-byte packs: p 16-byte aligned and width and stride multiples of the pack.
template <typename T>
inline bool packable(const void* p, int64_t width, int64_t stride) {
  return p != nullptr && reinterpret_cast<uintptr_t>(p) % 16 == 0 && width % kVec<T> == 0 && stride % kVec<T> == 0;
}

// Blocks for a grid-stride loop over `items` with `threads` per block: one item a thread, at most
// kMaxGridBlocks blocks (about 8 waves of 256-thread blocks on 132 SMs; more items loop).
constexpr int64_t kMaxGridBlocks = 8192;
inline unsigned grid_blocks(int64_t items, int threads) {
  const int64_t blocks = ceil_div(items, threads);
  return static_cast<unsigned>(blocks < kMaxGridBlocks ? blocks : kMaxGridBlocks);
}

// Threads for one block per row of `width` elements: about 4 elements a thread, a multiple of 64 (a
// whole number of warps on CUDA and of wavefronts on CDNA), at most 1024.
inline int row_block_threads(int64_t width) {
  int64_t threads = ceil_div(ceil_div(width, 4), 64) * 64;
  return static_cast<int>(threads < 64 ? 64 : threads > 1024 ? 1024 : threads);
}

}  // namespace moelab::kernels::launch
