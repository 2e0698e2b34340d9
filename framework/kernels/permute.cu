// Tokens to expert order and back without atomics. permute gathers each sorted slot's token row;
// unpermute_combine inverts the permutation (a scatter of distinct positions into a buffer of -1) and then gathers each
// token's k expert outputs, weighting and summing them in expert order as the per-expert
// index_add_ loop of moe_model.cpp's dispatch does, so the result is deterministic. Rows move in
// 16-byte packs (8 bf16) when pointers and widths allow, else element by element.
#include "common.cuh"

namespace moelab::kernels::launch {

namespace {

// Threads for one block per row of `packs` packs: one pack a thread up to 256, a multiple of 64.
inline int pack_block_threads(int64_t packs) {
  const int64_t threads = ceil_div(packs, 64) * 64;
  return static_cast<int>(threads < 64 ? 64 : threads > 256 ? 256 : threads);
}

template <typename T, int N>
__global__ void permute_kernel(T* out, const T* x, int64_t x_stride, int64_t tokens, const int64_t* order, int k, int64_t hidden) {
  const int64_t slot = blockIdx.x, token = order[slot] / k, packs = hidden / N;
  T* dst = out + slot * hidden;
  if (token < 0 || token >= tokens) {  // not a slot of these tokens: a zero row, never a read out of bounds
    Pack<T, N> zero;
#pragma unroll
    for (int n = 0; n < N; ++n) zero.v[n] = gpu::from_float<T>(0.0f);
    for (int64_t c = threadIdx.x; c < packs; c += blockDim.x) store(dst + c * N, zero);
    return;
  }
  const T* src = x + token * x_stride;
  for (int64_t c = threadIdx.x; c < packs; c += blockDim.x) store(dst + c * N, load<N>(src + c * N));
}

__global__ void invert_kernel(const int64_t* order, int64_t* inverse, int64_t n) {
  for (int64_t p = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; p < n; p += static_cast<int64_t>(gridDim.x) * blockDim.x)
    if (order[p] >= 0 && order[p] < n) inverse[order[p]] = p;
}

constexpr int kMaxTopK = 16;
constexpr int kBatch = 8;  // expert rows a thread loads before it adds them: 8 * 16 bytes in flight

template <typename T, int N>
__global__ void combine_kernel(T* out, const T* y, const float* weights, const int64_t* inverse, int k, int64_t hidden) {
  // The token's k sorted positions in increasing order (expert order), with their slots' weights.
  __shared__ int64_t slot_position[kMaxTopK], position[kMaxTopK];
  __shared__ float slot_weight[kMaxTopK], weight[kMaxTopK];
  __shared__ int count;
  const int64_t token = blockIdx.x;
  const int j = threadIdx.x;  // blockDim.x >= 64 > kMaxTopK
  if (j < k) {
    slot_position[j] = inverse[token * k + j];  // -1: a slot missing from `order` adds nothing
    slot_weight[j] = gpu::round_to<T>(weights[token * k + j]);  // weights.to(x.dtype)
  }
  __syncthreads();
  // Each slot's rank among the present ones (positions are distinct: each p names one slot; equal
  // ones would rank by slot, so the ranks always fill 0 .. count - 1).
  if (j < k) {
    const int64_t p = slot_position[j];
    int rank = 0, present = 0;
    for (int i = 0; i < k; ++i) {
      const int64_t other = slot_position[i];
      present += other >= 0;
      rank += other >= 0 && (other < p || (other == p && i < j));
    }
    if (p >= 0) {
      position[rank] = p;
      weight[rank] = slot_weight[j];
    }
    if (j == 0) count = present;
  }
  __syncthreads();
  const int n_rows = count;
  const int64_t packs = hidden / N;
  for (int64_t c = threadIdx.x; c < packs; c += blockDim.x) {
    float acc[N];
#pragma unroll
    for (int n = 0; n < N; ++n) acc[n] = 0.0f;
    for (int first = 0; first < n_rows; first += kBatch) {
      Pack<T, N> rows[kBatch];
#pragma unroll
      for (int b = 0; b < kBatch; ++b)
        if (first + b < n_rows) rows[b] = load<N>(y + position[first + b] * hidden + c * N);
#pragma unroll
      for (int b = 0; b < kBatch; ++b) {
        if (first + b >= n_rows) break;
        const float w = weight[first + b];
#pragma unroll
        for (int n = 0; n < N; ++n)
          acc[n] = gpu::round_to<T>(gpu::add(acc[n], gpu::round_to<T>(gpu::mul(gpu::to_float(rows[b].v[n]), w))));
      }
    }
    Pack<T, N> o;
#pragma unroll
    for (int n = 0; n < N; ++n) o.v[n] = gpu::from_float<T>(acc[n]);
    store(out + token * hidden + c * N, o);
  }
}

}  // namespace

const char* permute(DType dtype, void* out, const void* x, int64_t x_stride, int64_t tokens, const int64_t* order, int64_t n_sorted,
                    int k, int64_t hidden, void* stream) {
  if (n_sorted == 0) return nullptr;
  with_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    const auto s = static_cast<gpu::Stream>(stream);
    auto o = static_cast<T*>(out);
    auto in = static_cast<const T*>(x);
    if (packable<T>(out, hidden, hidden) && packable<T>(x, hidden, x_stride))
      permute_kernel<T, kVec<T>><<<static_cast<unsigned>(n_sorted), pack_block_threads(hidden / kVec<T>), 0, s>>>(o, in, x_stride, tokens,
                                                                                                               order, k, hidden);
    else
      permute_kernel<T, 1><<<static_cast<unsigned>(n_sorted), pack_block_threads(hidden), 0, s>>>(o, in, x_stride, tokens, order, k, hidden);
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
    auto o = static_cast<T*>(out);
    auto in = static_cast<const T*>(y);
    if (packable<T>(out, hidden, hidden) && packable<T>(y, hidden, hidden))
      combine_kernel<T, kVec<T>><<<static_cast<unsigned>(tokens), pack_block_threads(hidden / kVec<T>), 0, s>>>(o, in, weights, inverse, k,
                                                                                                             hidden);
    else
      combine_kernel<T, 1><<<static_cast<unsigned>(tokens), pack_block_threads(hidden), 0, s>>>(o, in, weights, inverse, k, hidden);
  });
  return launch_error();
}

}  // namespace moelab::kernels::launch
