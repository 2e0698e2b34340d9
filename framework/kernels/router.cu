// The plain softmax router: softmax over E <= 256 experts, the top k <= 16 (largest first, ties to the
// lower expert id), optional renormalisation and scale; one warp per row. The softmax reproduces
// LibTorch's warp softmax (PersistentSoftmax.cuh, used for rows of <= 1024 floats): the same lane
// layout, max, exp(x - max) summed per lane and then across the warp by butterfly, and a division.
#include "common.cuh"

namespace moelab::kernels::launch {

namespace {

constexpr int kMaxExperts = 256, kMaxTopK = 16;
constexpr int kMaxSlots = kMaxExperts / 32;  // experts per lane at warp size 32

__device__ inline int next_power_of_two(int n) {
  int p = 1;
  while (p < n) p *= 2;
  return p;
}

__global__ void route_kernel(const float* logits, int64_t rows, int experts, int k, bool renormalize, float scale, int64_t* ids,
                             float* weights) {
  constexpr int W = gpu::kWarpSize;
  const int lane = threadIdx.x % W, warps = blockDim.x / W;
  const int pow2 = next_power_of_two(experts);
  const int slots = pow2 > W ? pow2 / W : 1;  // expert lane + s * W lives in slot s of `lane`
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * warps + threadIdx.x / W; row < rows; row += static_cast<int64_t>(gridDim.x) * warps) {
    const float* in = logits + row * experts;
    float v[kMaxSlots];
#pragma unroll
    for (int s = 0; s < kMaxSlots; ++s) {
      const int e = lane + s * W;
      v[s] = s < slots && e < experts ? in[e] : -INFINITY;
    }
    float max = v[0];
#pragma unroll
    for (int s = 1; s < kMaxSlots; ++s)
      if (s < slots) max = max > v[s] ? max : v[s];
#pragma unroll
    for (int offset = W / 2; offset > 0; offset /= 2) {
      const float other = gpu::shfl_xor(max, offset);
      max = max < other ? other : max;
    }
    float sum = 0.0f;
#pragma unroll
    for (int s = 0; s < kMaxSlots; ++s)
      if (s < slots) {
        v[s] = expf(v[s] - max);
        sum += v[s];
      }
    sum = gpu::warp_sum(sum);
#pragma unroll
    for (int s = 0; s < kMaxSlots; ++s) v[s] = v[s] / sum;

    // k rounds of a warp-wide argmax over the experts not taken yet; lane j keeps the j-th pick.
    unsigned taken = 0;
    float my_weight = 0.0f;
    int my_id = 0;
    for (int j = 0; j < k; ++j) {
      float best = -INFINITY;
      int best_id = 0x7fffffff;
#pragma unroll
      for (int s = 0; s < kMaxSlots; ++s) {
        const int e = lane + s * W;
        if (s < slots && e < experts && !(taken & (1u << s)) && (v[s] > best || best_id == 0x7fffffff)) {
          best = v[s];
          best_id = e;
        }
      }
#pragma unroll
      for (int offset = W / 2; offset > 0; offset /= 2) {
        const float other = gpu::shfl_xor(best, offset);
        const int other_id = gpu::shfl_xor(best_id, offset);
        if (other_id != 0x7fffffff && (best_id == 0x7fffffff || other > best || (other == best && other_id < best_id))) {
          best = other;
          best_id = other_id;
        }
      }
      if (best_id % W == lane) taken |= 1u << (best_id / W);
      if (lane == j) {
        my_weight = best;
        my_id = best_id;
      }
    }
    if (renormalize) my_weight = my_weight / (gpu::warp_sum(lane < k ? my_weight : 0.0f) + 1e-20f);
    if (lane < k) {
      ids[row * k + lane] = my_id;
      weights[row * k + lane] = gpu::mul(my_weight, scale);
    }
  }
}

}  // namespace

const char* route_softmax_topk(const float* logits, int64_t rows, int experts, int k, bool renormalize, float scale, int64_t* ids,
                               float* weights, void* stream) {
  if (rows == 0) return nullptr;
  if (experts < 1 || experts > kMaxExperts || k < 1 || k > kMaxTopK || k > experts) return "route_softmax_topk: needs 1 <= k <= 16, k <= experts <= 256";
  constexpr int threads = 256;
  const int64_t rows_per_block = threads / gpu::device_warp_size();
  const int64_t blocks = ceil_div(rows, rows_per_block);
  route_kernel<<<static_cast<unsigned>(blocks < 65535 * 32 ? blocks : 65535 * 32), threads, 0, static_cast<gpu::Stream>(stream)>>>(
      logits, rows, experts, k, renormalize, scale, ids, weights);
  return launch_error();
}

}  // namespace moelab::kernels::launch
