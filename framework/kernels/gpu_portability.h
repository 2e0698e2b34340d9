// The one place where CUDA and HIP differ for moelab's kernels: runtime names, warp shuffles, the warp
// (wavefront) size, 16-bit float types and their conversions, and float arithmetic that must not be
// fused. Kernel files (.cu) include only this header, never LibTorch's, so CI compile-checks them with
// hipcc and nvcc alone. MOELAB_HIP selects HIP (also implied by hipcc's __HIPCC__).
#pragma once

#include <cstdint>

#if defined(MOELAB_HIP) || defined(__HIPCC__)
#ifndef MOELAB_HIP
#define MOELAB_HIP 1
#endif
#include <hip/hip_bfloat16.h>
#include <hip/hip_fp16.h>
#include <hip/hip_runtime.h>
// hipcc fuses a * b + c into one FMA by default; the kernels reproduce LibTorch's separately rounded
// operations, so contraction stays off in every file that includes this header.
#pragma clang fp contract(off)
#else
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#endif

namespace moelab::gpu {

#if MOELAB_HIP
using Stream = hipStream_t;
using Error = hipError_t;
using bf16 = hip_bfloat16;
constexpr Error kSuccess = hipSuccess;
inline Error last_error() { return hipGetLastError(); }
inline const char* error_string(Error e) { return hipGetErrorString(e); }
inline int device_warp_size() {
  int device = 0, size = 64;
  if (hipGetDevice(&device) != hipSuccess || hipDeviceGetAttribute(&size, hipDeviceAttributeWarpSize, device) != hipSuccess) size = 64;
  return size;
}
// The wavefront: 64 lanes on CDNA (gfx90a, gfx94x), 32 on RDNA; clang defines the size per target.
#if defined(__AMDGCN_WAVEFRONT_SIZE)
#define MOELAB_WARP_SIZE __AMDGCN_WAVEFRONT_SIZE
#else
#define MOELAB_WARP_SIZE 64
#endif
template <typename T>
__device__ inline T shfl_xor(T v, int lane_mask) { return __shfl_xor(v, lane_mask); }
__device__ inline uint16_t bf16_bits(bf16 v) { return v.data; }
__device__ inline bf16 bf16_from_bits(uint16_t b) {
  bf16 v;
  v.data = b;
  return v;
}
#else
using Stream = cudaStream_t;
using Error = cudaError_t;
using bf16 = __nv_bfloat16;
constexpr Error kSuccess = cudaSuccess;
inline Error last_error() { return cudaGetLastError(); }
inline const char* error_string(Error e) { return cudaGetErrorString(e); }
inline int device_warp_size() { return 32; }
#define MOELAB_WARP_SIZE 32
template <typename T>
__device__ inline T shfl_xor(T v, int lane_mask) { return __shfl_xor_sync(0xffffffffu, v, lane_mask); }
__device__ inline uint16_t bf16_bits(bf16 v) { return __bfloat16_as_ushort(v); }
__device__ inline bf16 bf16_from_bits(uint16_t b) { return __ushort_as_bfloat16(b); }
#endif
using half = __half;

constexpr int kWarpSize = MOELAB_WARP_SIZE;  // device code only: the host pass of hipcc cannot know the target's
constexpr int kMaxWarpsPerBlock = 1024 / 32;  // shared-memory slots for a block-wide reduction

// Float <-> 16-bit conversions with round-to-nearest-even, the rounding of LibTorch's c10::BFloat16 and
// c10::Half (bf16 NaN becomes 0x7FC0 as in c10), written on the bits so CUDA and HIP round alike.
__device__ inline float to_float(float v) { return v; }
__device__ inline float to_float(half v) { return __half2float(v); }
__device__ inline float to_float(bf16 v) { return __uint_as_float(static_cast<uint32_t>(bf16_bits(v)) << 16); }

template <typename T>
__device__ inline T from_float(float v);
template <>
__device__ inline float from_float<float>(float v) {
  return v;
}
template <>
__device__ inline half from_float<half>(float v) {
  return __float2half_rn(v);
}
template <>
__device__ inline bf16 from_float<bf16>(float v) {
  uint32_t u = __float_as_uint(v);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16_from_bits(0x7fc0);
  u += 0x7fffu + ((u >> 16) & 1u);
  return bf16_from_bits(static_cast<uint16_t>(u >> 16));
}

// The value of v after a round trip through T: what LibTorch stores between two ops on T tensors.
template <typename T>
__device__ inline float round_to(float v) {
  return to_float(from_float<T>(v));
}

// Separately rounded float operations (LibTorch runs a * b and + c as two kernels; no FMA).
__device__ inline float mul(float a, float b) { return __fmul_rn(a, b); }
__device__ inline float add(float a, float b) { return __fadd_rn(a, b); }
__device__ inline float sub(float a, float b) { return __fadd_rn(a, -b); }  // HIP 5.2 has no __fsub_rn

// Sum and max over a warp by butterfly exchange: every lane ends with the same value, in the order
// LibTorch's warp reductions (PersistentSoftmax.cuh's warp_reduce) use.
__device__ inline float warp_sum(float v) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) v += shfl_xor(v, offset);
  return v;
}
__device__ inline float warp_max(float v) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    float other = shfl_xor(v, offset);
    v = v > other ? v : other;
  }
  return v;
}

// Sum over the block (blockDim.x a multiple of the warp size); every thread gets the total.
__device__ inline float block_sum(float v) {
  __shared__ float partial[kMaxWarpsPerBlock];
  __shared__ float total;
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize, warps = blockDim.x / kWarpSize;
  v = warp_sum(v);
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  if (warp == 0) {
    float w = lane < warps ? partial[lane] : 0.0f;
    w = warp_sum(w);
    if (lane == 0) total = w;
  }
  __syncthreads();
  return total;
}

}  // namespace moelab::gpu
