// Rotary position embedding applied in place to q and k, one block per (batch row, token): the
// token's cos and sin are computed once per pair of dimensions into shared memory, then every head of
// q and k is rotated from there, in 16-byte packs (8 bf16) when pointers, strides and the rotary width
// allow, else element by element. Rounding follows moe_model.cpp's rope(): the half-rotation layout
// rounds cos and sin to the dtype and every product and the sum (x * cos + rotate_half(x) * sin in the
// dtype); the interleaved layout (DeepSeek) works in float and rounds once.
#include "common.cuh"

namespace moelab::kernels::launch {

namespace {

constexpr int64_t kMaxHalf = 4096;  // pairs a token's cos/sin table holds (32 KiB of shared memory)

// Half layout: a = x[j], b = x[j + half] with cos and sin already rounded to T.
template <typename T>
__device__ inline void rotate_half_pair(T& a_t, T& b_t, float c, float s) {
  const float a = gpu::to_float(a_t), b = gpu::to_float(b_t);
  a_t = gpu::from_float<T>(gpu::add(gpu::round_to<T>(gpu::mul(a, c)), gpu::round_to<T>(gpu::mul(-b, s))));
  b_t = gpu::from_float<T>(gpu::add(gpu::round_to<T>(gpu::mul(b, c)), gpu::round_to<T>(gpu::mul(a, s))));
}

// Interleaved layout: re = x[2j], im = x[2j + 1], cos and sin in float.
template <typename T>
__device__ inline void rotate_complex(T& re_t, T& im_t, float c, float s) {
  const float re = gpu::to_float(re_t), im = gpu::to_float(im_t);
  re_t = gpu::from_float<T>(gpu::sub(gpu::mul(re, c), gpu::mul(im, s)));
  im_t = gpu::from_float<T>(gpu::add(gpu::mul(re, s), gpu::mul(im, c)));
}

// Unit u of one head's rotary part x: N pairs (j, j + half) with j = u * N in the half layout (a and b);
// in the interleaved layout N elements (N / 2 pairs) from u * N (a), or one pair (2u, 2u + 1) when N
// is 1 (a and b). Loaded before the cos/sin table is ready, rotated and stored after.
template <typename T, int N>
struct Unit {
  T* a_at = nullptr;
  T* b_at = nullptr;
  Pack<T, N> a, b;
  int64_t first_pair = 0;

  __device__ void load_from(T* x, int64_t u, int64_t half, bool interleaved) {
    if (!interleaved) {
      first_pair = u * N;
      a_at = x + first_pair;
      b_at = a_at + half;
    } else if (N == 1) {
      first_pair = u;
      a_at = x + 2 * u;
      b_at = a_at + 1;
    } else {
      first_pair = u * (N / 2);
      a_at = x + u * N;
      b_at = nullptr;
    }
    a = load<N>(a_at);
    if (b_at) b = load<N>(b_at);
  }

  __device__ void rotate_and_store(const float* cos_t, const float* sin_t, bool interleaved) {
    const float* c = cos_t + first_pair;
    const float* s = sin_t + first_pair;
    if (!interleaved) {
#pragma unroll
      for (int n = 0; n < N; ++n) rotate_half_pair(a.v[n], b.v[n], c[n], s[n]);
    } else if (N == 1) {
      rotate_complex(a.v[0], b.v[0], c[0], s[0]);
    } else {
#pragma unroll
      for (int m = 0; m < N / 2; ++m) rotate_complex(a.v[2 * m], a.v[2 * m + 1], c[m], s[m]);
    }
    store(a_at, a);
    if (b_at) store(b_at, b);
  }
};

template <typename T, int N>
__global__ void rope_kernel(RopeTensor q, RopeTensor k, int64_t tokens, int64_t half, const float* angles, int64_t angle_stride_b,
                            int64_t angle_stride_t, float factor, bool interleaved) {
  extern __shared__ float table[];  // cos of each pair, then sin; rounded to T for the half layout
  float* cos_t = table;
  float* sin_t = table + half;
  const int64_t b = blockIdx.x / tokens, t = blockIdx.x % tokens;
  T* q_row = static_cast<T*>(q.data) + b * q.stride_b + t * q.stride_t;
  T* k_row = k.data ? static_cast<T*>(k.data) + b * k.stride_b + t * k.stride_t : nullptr;
  const int64_t units = interleaved && N > 1 ? 2 * half / N : interleaved ? half : half / N;
  const int64_t items = (q.heads + (k_row ? k.heads : 0)) * units;
  Unit<T, N> unit;
  auto load_item = [&](int64_t item) {
    const int64_t h = item / units, u = item - h * units;
    unit.load_from(h < q.heads ? q_row + h * q.stride_h : k_row + (h - q.heads) * k.stride_h, u, half, interleaved);
  };
  int64_t item = threadIdx.x;
  if (item < items) load_item(item);  // in flight while the table is computed
  const float* angle = angles + b * angle_stride_b + t * angle_stride_t;
  for (int64_t j = threadIdx.x; j < half; j += blockDim.x) {
    float c = gpu::mul(cosf(angle[j]), factor), s = gpu::mul(sinf(angle[j]), factor);
    if (!interleaved) {
      c = gpu::round_to<T>(c);
      s = gpu::round_to<T>(s);
    }
    cos_t[j] = c;
    sin_t[j] = s;
  }
  __syncthreads();
  while (item < items) {
    unit.rotate_and_store(cos_t, sin_t, interleaved);
    item += blockDim.x;
    if (item < items) load_item(item);
  }
}

// Whether x's rotary rows start on 16 bytes for every (b, h, t) that exists.
template <typename T>
bool packable_heads(const RopeTensor& x, int64_t batch, int64_t tokens) {
  if (!x.data) return true;
  constexpr int N = kVec<T>;
  return reinterpret_cast<uintptr_t>(x.data) % 16 == 0 && (batch == 1 || x.stride_b % N == 0) && (x.heads == 1 || x.stride_h % N == 0) &&
         (tokens == 1 || x.stride_t % N == 0);
}

template <typename T, int N>
void launch_rope(RopeTensor q, RopeTensor k, int64_t batch, int64_t tokens, int64_t half, const float* angles, int64_t angle_stride_b,
                 int64_t angle_stride_t, float factor, bool interleaved, gpu::Stream stream) {
  const int64_t units = interleaved && N > 1 ? 2 * half / N : interleaved ? half : half / N;
  const int64_t items = (q.heads + (k.data ? k.heads : 0)) * units, threads = ceil_div(items, 64) * 64;
  const int block = static_cast<int>(threads < 64 ? 64 : threads > 256 ? 256 : threads);
  const size_t shared = 2 * static_cast<size_t>(half) * sizeof(float);
  rope_kernel<T, N><<<static_cast<unsigned>(batch * tokens), block, shared, stream>>>(q, k, tokens, half, angles, angle_stride_b,
                                                                                      angle_stride_t, factor, interleaved);
}

}  // namespace

const char* rope(DType dtype, RopeTensor q, RopeTensor k, int64_t batch, int64_t tokens, int64_t rot_dim, const float* angles,
                 int64_t angle_stride_b, int64_t angle_stride_t, float factor, bool interleaved, void* stream) {
  const int64_t half = rot_dim / 2;
  if (batch * tokens == 0 || half == 0) return nullptr;
  if (half > kMaxHalf) return "rope: rot_dim above 8192";
  with_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    constexpr int N = kVec<T>;
    const auto s = static_cast<gpu::Stream>(stream);
    const bool packed = (interleaved ? rot_dim % N == 0 : half % N == 0) && packable_heads<T>(q, batch, tokens) &&
                        packable_heads<T>(k, batch, tokens);
    if (packed)
      launch_rope<T, N>(q, k, batch, tokens, half, angles, angle_stride_b, angle_stride_t, factor, interleaved, s);
    else
      launch_rope<T, 1>(q, k, batch, tokens, half, angles, angle_stride_b, angle_stride_t, factor, interleaved, s);
  });
  return launch_error();
}

}  // namespace moelab::kernels::launch
