// LibTorch wrappers of the raw launchers: argument checks that name the tensor, dtype mapping, the
// current stream of the tensor's device, output allocation.
#include "kernels.h"

#include "launch.h"

#include <ATen/core/grad_mode.h>
#include <c10/core/DeviceGuard.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#if defined(MOELAB_HIP)
#include <c10/hip/HIPStream.h>
#else
#include <c10/cuda/CUDAStream.h>
#endif

namespace moelab::kernels {

namespace {

using torch::Tensor;

void* current_stream(const Tensor& t) {
#if defined(MOELAB_HIP)
  return c10::hip::getCurrentHIPStream(t.device().index()).stream();
#else
  return c10::cuda::getCurrentCUDAStream(t.device().index()).stream();
#endif
}

void check_launch(const char* error, const char* kernel) {
  if (error) throw std::runtime_error(fmt::format("kernels::{}: launch failed: {}", kernel, error));
}

launch::DType dtype_of(const Tensor& t) {
  switch (t.scalar_type()) {
    case torch::kFloat32: return launch::DType::f32;
    case torch::kFloat16: return launch::DType::f16;
    case torch::kBFloat16: return launch::DType::bf16;
    default: throw std::invalid_argument(fmt::format("kernels: dtype {} has no kernel (float32, float16, bfloat16)", c10::toString(t.scalar_type())));
  }
}

std::string shape(const Tensor& t) { return t.defined() ? fmt::format("{}", fmt::join(t.sizes(), ", ")) : "undefined"; }

// `what` is usable: defined, on the device of `like` (or any GPU when like is undefined), of `dtype`.
void expect(const Tensor& t, const char* kernel, const char* what, const Tensor& like, torch::ScalarType dtype) {
  if (!t.defined() || !t.is_cuda())
    throw std::invalid_argument(fmt::format("kernels::{}: {} must be a GPU tensor", kernel, what));
  if (like.defined() && t.device() != like.device())
    throw std::invalid_argument(fmt::format("kernels::{}: {} is on {}, expected {}", kernel, what, t.device().str(), like.device().str()));
  if (t.scalar_type() != dtype)
    throw std::invalid_argument(
        fmt::format("kernels::{}: {} is {}, expected {}", kernel, what, c10::toString(t.scalar_type()), c10::toString(dtype)));
}

void expect_available(const Tensor& x, const char* kernel, const char* what) {
  if (!available(x))
    throw std::invalid_argument(fmt::format("kernels::{}: {} ({}, {}) is not a float32/float16/bfloat16 GPU tensor outside autograd",
                                            kernel, what, shape(x), x.defined() ? c10::toString(x.scalar_type()) : "undefined"));
}

// The stride between the rows of t viewed as [rows, t.size(-1)] when that view needs no copy (the
// last dimension contiguous, the leading ones collapsing to one stride; 0 for broadcast rows), else -1.
int64_t row_stride(const Tensor& t) {
  if (t.dim() == 0 || (t.stride(-1) != 1 && t.size(-1) > 1)) return -1;
  int64_t stride = -1, expected = 0;
  for (int64_t d = t.dim() - 2; d >= 0; --d) {
    if (t.size(d) == 1) continue;
    if (stride < 0) {
      stride = t.stride(d);
    } else if (t.stride(d) != expected) {
      return -1;
    }
    expected = t.stride(d) * t.size(d);
  }
  return stride < 0 ? t.size(-1) : stride;  // one row: any stride will do
}

// t itself when its rows have one stride, else a contiguous copy.
Tensor rows_of(const Tensor& t) { return row_stride(t) >= 0 ? t : t.contiguous(); }

// rms_norm of x, or with a residual of x + residual, written to `sum` (x itself when in place).
Tensor rms_norm_impl(const Tensor& x, const Tensor* residual, Tensor* sum, const Tensor& weight, double eps, const char* kernel) {
  expect_available(x, kernel, "x");
  expect(weight, kernel, "weight", x, x.scalar_type());
  const int64_t hidden = x.size(-1), rows = hidden == 0 ? 0 : x.numel() / hidden;
  if (weight.dim() != 1 || weight.size(0) != hidden)
    throw std::invalid_argument(fmt::format("kernels::{}: weight has shape [{}], expected [{}] (x: [{}])", kernel, shape(weight), hidden, shape(x)));
  const Tensor w = weight.contiguous(), in = rows_of(x);
  Tensor res;
  if (residual) {
    expect(*residual, kernel, "residual", x, x.scalar_type());
    if (residual->sizes() != x.sizes())
      throw std::invalid_argument(fmt::format("kernels::{}: residual has shape [{}], x [{}]", kernel, shape(*residual), shape(x)));
    res = rows_of(*residual);
    if (sum->is_same(x) && (!in.is_same(x) || (row_stride(x) < hidden && rows > 1)))
      throw std::invalid_argument(fmt::format("kernels::{}: x [{}] is updated in place and needs distinct rows of one stride", kernel, shape(x)));
  }
  Tensor out = torch::empty(x.sizes(), x.options().memory_format(torch::MemoryFormat::Contiguous));
  c10::DeviceGuard guard(x.device());
  check_launch(launch::rms_norm(dtype_of(x), out.data_ptr(), in.data_ptr(), row_stride(in), residual ? res.data_ptr() : nullptr,
                                residual ? row_stride(res) : 0, residual ? sum->data_ptr() : nullptr, residual ? row_stride(*sum) : 0,
                                w.data_ptr(), rows, hidden, static_cast<float>(eps), current_stream(x)),
               kernel);
  return out;
}

}  // namespace

bool available(const torch::Tensor& t) {
  if (!t.defined() || !t.is_cuda()) return false;
  const auto type = t.scalar_type();
  if (type != torch::kFloat32 && type != torch::kFloat16 && type != torch::kBFloat16) return false;
  return !(t.requires_grad() && at::GradMode::is_enabled());
}

Tensor rms_norm(const Tensor& x, const Tensor& weight, double eps) { return rms_norm_impl(x, nullptr, nullptr, weight, eps, "rms_norm"); }

std::pair<Tensor, Tensor> add_rms_norm(const Tensor& x, const Tensor& residual, const Tensor& weight, double eps) {
  Tensor sum = available(x) ? torch::empty(x.sizes(), x.options().memory_format(torch::MemoryFormat::Contiguous)) : Tensor();
  Tensor out = rms_norm_impl(x, &residual, &sum, weight, eps, "add_rms_norm");
  return {sum, out};
}

Tensor add_rms_norm_(Tensor& x, const Tensor& residual, const Tensor& weight, double eps) {
  return rms_norm_impl(x, &residual, &x, weight, eps, "add_rms_norm_");
}

Tensor silu_mul(const Tensor& gate, const Tensor& up) {
  expect_available(gate, "silu_mul", "gate");
  expect(up, "silu_mul", "up", gate, gate.scalar_type());
  if (gate.sizes() != up.sizes())
    throw std::invalid_argument(fmt::format("kernels::silu_mul: gate [{}] and up [{}] differ in shape", shape(gate), shape(up)));
  const Tensor g = rows_of(gate), u = rows_of(up);
  const int64_t width = gate.size(-1), rows = width == 0 ? 0 : gate.numel() / width;
  Tensor out = torch::empty(gate.sizes(), gate.options().memory_format(torch::MemoryFormat::Contiguous));
  c10::DeviceGuard guard(gate.device());
  check_launch(launch::silu_mul(dtype_of(gate), out.data_ptr(), g.data_ptr(), row_stride(g), u.data_ptr(), row_stride(u), rows, width,
                                current_stream(gate)),
               "silu_mul");
  return out;
}

Tensor silu_mul(const Tensor& gate_up) {
  expect_available(gate_up, "silu_mul", "gate_up");
  if (gate_up.size(-1) % 2 != 0)
    throw std::invalid_argument(fmt::format("kernels::silu_mul: gate_up [{}] has an odd last dimension", shape(gate_up)));
  const int64_t width = gate_up.size(-1) / 2;
  return silu_mul(gate_up.narrow(-1, 0, width), gate_up.narrow(-1, width, width));
}

void rope_(Tensor& q, Tensor& k, const Tensor& angles, double factor, bool interleaved) {
  expect_available(q, "rope_", "q");
  if (q.dim() != 4 || q.stride(-1) != 1 || q.size(-1) % 2 != 0)
    throw std::invalid_argument(fmt::format("kernels::rope_: q [{}] must be [B, H, T, R] with R even and the last dimension contiguous", shape(q)));
  const int64_t B = q.size(0), T = q.size(2), R = q.size(3);
  if (k.defined()) {
    expect(k, "rope_", "k", q, q.scalar_type());
    if (k.dim() != 4 || k.size(0) != B || k.size(2) != T || k.size(3) != R || k.stride(-1) != 1)
      throw std::invalid_argument(fmt::format("kernels::rope_: k [{}] must be [{}, H, {}, {}] with the last dimension contiguous", shape(k), B, T, R));
  }
  expect(angles, "rope_", "angles", q, torch::kFloat32);
  if (angles.dim() != 3 || (angles.size(0) != B && angles.size(0) != 1) || angles.size(1) != T || angles.size(2) != R / 2)
    throw std::invalid_argument(fmt::format("kernels::rope_: angles [{}] must be [{} or 1, {}, {}]", shape(angles), B, T, R / 2));
  const Tensor a = angles.stride(-1) == 1 ? angles : angles.contiguous();
  auto view = [](Tensor& t) {
    launch::RopeTensor v;
    if (!t.defined()) return v;
    v.data = t.data_ptr();
    v.heads = t.size(1);
    v.stride_b = t.stride(0);
    v.stride_h = t.stride(1);
    v.stride_t = t.stride(2);
    return v;
  };
  c10::DeviceGuard guard(q.device());
  check_launch(launch::rope(dtype_of(q), view(q), view(k), B, T, R, a.data_ptr<float>(), a.size(0) == 1 ? 0 : a.stride(0), a.stride(1),
                            static_cast<float>(factor), interleaved, current_stream(q)),
               "rope_");
}

bool route_available(const Tensor& logits, int64_t k) {
  return available(logits) && logits.scalar_type() == torch::kFloat32 && logits.dim() == 2 && logits.size(1) <= 256 && k >= 1 &&
         k <= 16 && k <= logits.size(1);
}

TopK route_softmax_topk(const Tensor& logits, int64_t k, bool renormalize, double scale) {
  if (!route_available(logits, k))
    throw std::invalid_argument(fmt::format("kernels::route_softmax_topk: logits [{}] ({}) with k = {}: needs float32 [N, E] on a GPU, "
                                            "E <= 256, 1 <= k <= min(16, E), outside autograd",
                                            shape(logits), logits.defined() ? c10::toString(logits.scalar_type()) : "undefined", k));
  const Tensor in = logits.contiguous();
  const int64_t rows = in.size(0);
  TopK r;
  r.weights = torch::empty({rows, k}, in.options());
  r.ids = torch::empty({rows, k}, in.options().dtype(torch::kInt64));
  c10::DeviceGuard guard(in.device());
  check_launch(launch::route_softmax_topk(in.data_ptr<float>(), rows, static_cast<int>(in.size(1)), static_cast<int>(k), renormalize,
                                          static_cast<float>(scale), r.ids.data_ptr<int64_t>(), r.weights.data_ptr<float>(), current_stream(in)),
               "route_softmax_topk");
  return r;
}

Tensor permute(const Tensor& x, const Tensor& order, int64_t k) {
  expect_available(x, "permute", "x");
  expect(order, "permute", "order", x, torch::kInt64);
  if (x.dim() != 2 || order.dim() != 1 || k < 1)
    throw std::invalid_argument(fmt::format("kernels::permute: needs x [N, H], order [M] and k >= 1; got x [{}], order [{}], k = {}", shape(x),
                                            shape(order), k));
  const Tensor in = rows_of(x), o = order.contiguous();
  Tensor out = torch::empty({o.size(0), x.size(1)}, x.options().memory_format(torch::MemoryFormat::Contiguous));
  c10::DeviceGuard guard(x.device());
  check_launch(launch::permute(dtype_of(x), out.data_ptr(), in.data_ptr(), row_stride(in), x.size(0), o.data_ptr<int64_t>(), o.size(0),
                               static_cast<int>(k), x.size(1), current_stream(x)),
               "permute");
  return out;
}

Tensor unpermute_combine(const Tensor& y, const Tensor& order, const Tensor& weights) {
  expect_available(y, "unpermute_combine", "y");
  expect(order, "unpermute_combine", "order", y, torch::kInt64);
  expect(weights, "unpermute_combine", "weights", y, torch::kFloat32);
  if (y.dim() != 2 || weights.dim() != 2 || order.dim() != 1 || order.size(0) != y.size(0) || weights.numel() != y.size(0) ||
      weights.size(1) < 1 || weights.size(1) > 16)
    throw std::invalid_argument(fmt::format("kernels::unpermute_combine: needs y [N * k, H], order [N * k], weights [N, k] with k <= 16; "
                                            "got y [{}], order [{}], weights [{}]",
                                            shape(y), shape(order), shape(weights)));
  const int64_t tokens = weights.size(0), k = weights.size(1);
  const Tensor in = y.contiguous(), o = order.contiguous(), w = weights.contiguous();
  Tensor inverse = torch::full({tokens * k}, -1, o.options());
  Tensor out = torch::empty({tokens, y.size(1)}, in.options());
  c10::DeviceGuard guard(y.device());
  check_launch(launch::unpermute_combine(dtype_of(y), out.data_ptr(), in.data_ptr(), o.data_ptr<int64_t>(), w.data_ptr<float>(),
                                         inverse.data_ptr<int64_t>(), tokens, static_cast<int>(k), y.size(1), current_stream(y)),
               "unpermute_combine");
  return out;
}

}  // namespace moelab::kernels
