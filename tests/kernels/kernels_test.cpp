// moelab's GPU kernels against the LibTorch compositions they replace, on the GPU: float32 and the
// 16-bit dtypes, sizes that are not multiples of a block, the routers of the five architectures
// (E = 64 k = 8, E = 60 k = 4, E = 8 k = 2, E = 256 k = 16) and tied scores. Results may differ by a
// unit in the last place (ulp) where a float function or a sum order differs (bounds below); each
// comparison prints how many elements are bit-equal. Built only with the kernels; skips without a GPU.
#include "kernels/kernels.h"
#include "route.h"

#include <gtest/gtest.h>
#include <torch/cuda.h>
#include <torch/torch.h>

#include <cmath>
#include <cstdint>
#include <iostream>
#include <string>

namespace {

using torch::Tensor;
namespace kernels = moelab::kernels;

#define REQUIRE_GPU() \
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA/ROCm GPU: the kernels run only there"

const torch::Device kGpu(torch::kCUDA, 0);

Tensor randn(std::vector<int64_t> shape, torch::ScalarType dtype, double scale = 1.0) {
  return (torch::randn(shape, torch::dtype(torch::kFloat32).device(kGpu)) * scale).to(dtype);
}

std::string name(torch::ScalarType t) { return c10::toString(t); }

// A contiguous copy of x whose data starts one element past a 16-byte boundary: the kernels must take
// their element-by-element path on it (the packed path needs 16-byte aligned rows).
Tensor misaligned(const Tensor& x) {
  Tensor buffer = torch::empty({x.numel() + 8}, x.options());
  Tensor copy = buffer.narrow(0, 1, x.numel()).view(x.sizes());
  copy.copy_(x);
  EXPECT_NE(reinterpret_cast<uintptr_t>(copy.data_ptr()) % 16, 0u);
  return copy;
}

// Largest distance between ours and theirs in units in the last place of `theirs`' dtype (0 for
// bit-equal values); prints the share of bit-equal elements under `what`.
double max_ulps(const Tensor& ours, const Tensor& theirs, const std::string& what) {
  EXPECT_EQ(ours.scalar_type(), theirs.scalar_type()) << what;
  EXPECT_EQ(ours.sizes(), theirs.sizes()) << what;
  const int mantissa = theirs.scalar_type() == torch::kBFloat16 ? 7 : theirs.scalar_type() == torch::kFloat16 ? 10 : 23;
  Tensor a = ours.to(torch::kFloat64).cpu(), b = theirs.to(torch::kFloat64).cpu();
  Tensor magnitude = torch::maximum(a.abs(), b.abs()).clamp_min(1e-30);
  Tensor ulp = torch::pow(2.0, torch::floor(torch::log2(magnitude)) - mantissa);
  Tensor distance = (a - b).abs() / ulp;
  const double equal = a.eq(b).to(torch::kFloat64).mean().item<double>(), worst = distance.max().item<double>();
  std::cout << what << ": " << 100.0 * equal << "% of " << a.numel() << " elements bit-equal, max " << worst << " ulp\n";
  return worst;
}

// moe_model.cpp's rms_norm.
Tensor reference_rms_norm(const Tensor& x, const Tensor& weight, double eps) {
  Tensor xf = x.to(torch::kFloat32);
  xf = xf * torch::rsqrt(xf.pow(2).mean(-1, true) + eps);
  return weight * xf.to(x.scalar_type());
}

// moe_model.cpp's rope(): x [B, H, T, R], freqs [B, T, R/2].
Tensor reference_rope(const Tensor& x, const Tensor& freqs, double factor, bool interleaved) {
  using torch::indexing::Slice;
  Tensor cos = freqs.cos().unsqueeze(1), sin = freqs.sin().unsqueeze(1);
  if (factor != 1.0) {
    cos = cos * factor;
    sin = sin * factor;
  }
  if (interleaved) {
    Tensor xf = x.to(torch::kFloat32);
    Tensor re = xf.index({"...", Slice(0, torch::indexing::None, 2)}), im = xf.index({"...", Slice(1, torch::indexing::None, 2)});
    return torch::stack({re * cos - im * sin, re * sin + im * cos}, -1).flatten(-2).to(x.scalar_type());
  }
  const int64_t half = x.size(-1) / 2;
  Tensor rotated = torch::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
  Tensor c2 = torch::cat({cos, cos}, -1).to(x.scalar_type()), s2 = torch::cat({sin, sin}, -1).to(x.scalar_type());
  return x * c2 + rotated * s2;
}

const torch::ScalarType kDtypes[] = {torch::kFloat32, torch::kBFloat16, torch::kFloat16};

TEST(Kernels, AvailableOnlyForGpuTensorsOutsideAutograd) {
  EXPECT_FALSE(kernels::available(torch::ones({2, 3})));
  EXPECT_FALSE(kernels::available(Tensor()));
  REQUIRE_GPU();
  EXPECT_TRUE(kernels::available(torch::ones({2, 3}, kGpu)));
  EXPECT_TRUE(kernels::available(torch::ones({2, 3}, torch::dtype(torch::kBFloat16).device(kGpu))));
  EXPECT_FALSE(kernels::available(torch::ones({2, 3}, torch::dtype(torch::kFloat64).device(kGpu))));
  Tensor tracked = torch::ones({2, 3}, torch::dtype(torch::kFloat32).device(kGpu).requires_grad(true));
  EXPECT_FALSE(kernels::available(tracked));
  torch::NoGradGuard no_grad;
  EXPECT_TRUE(kernels::available(tracked));
}

TEST(Kernels, RmsNormMatchesTheLibTorchComposition) {
  REQUIRE_GPU();
  torch::manual_seed(0);
  for (auto dtype : kDtypes)
    // 8: one pack a row; 2048, 7168, 12288: two packs a thread; 24576: up to four (bf16); 40000 and 4099:
    // the element path (too wide for registers, not a multiple of the pack).
    for (int64_t hidden : {1, 7, 8, 64, 128, 1000, 2048, 4099, 7168, 12288, 24576, 40000}) {
      const std::string what = "rms_norm " + name(dtype) + " H=" + std::to_string(hidden);
      Tensor x = randn({3, 37, hidden}, dtype, 3.0), weight = randn({hidden}, dtype);
      Tensor ours = kernels::rms_norm(x, weight, 1e-6), theirs = reference_rms_norm(x, weight, 1e-6);
      if (dtype == torch::kFloat32)
        EXPECT_LE((ours - theirs).abs().max().item<double>(), 1e-5 * theirs.abs().max().item<double>()) << what;
      else  // a last-bit difference of the float rsqrt can move the rounded x * rsqrt by 1 ulp, the product by 2
        EXPECT_LE(max_ulps(ours, theirs, what), 2.0) << what;
    }
}

TEST(Kernels, RmsNormReadsStridedRowsAndTransposedInputs) {
  REQUIRE_GPU();
  torch::manual_seed(1);
  Tensor wide = randn({29, 1003}, torch::kBFloat16), weight = randn({1000}, torch::kBFloat16);
  Tensor narrowed = wide.narrow(-1, 3, 1000);  // rows of one stride, read in place (MLA's latent)
  EXPECT_LE(max_ulps(kernels::rms_norm(narrowed, weight, 1e-5), reference_rms_norm(narrowed, weight, 1e-5), "rms_norm narrowed"), 2.0);
  // Packed rows of stride 1032 from element 8; rows of stride 1028 (not a multiple of 8): element path.
  Tensor w1024 = randn({1024}, torch::kBFloat16);
  for (int64_t width : {1032, 1028}) {
    Tensor view = randn({31, width}, torch::kBFloat16).narrow(-1, width - 1024, 1024);
    const std::string what = "rms_norm bf16 narrowed from stride " + std::to_string(width);
    EXPECT_LE(max_ulps(kernels::rms_norm(view, w1024, 1e-5), reference_rms_norm(view, w1024, 1e-5), what), 2.0) << what;
  }
  Tensor transposed = randn({6, 11, 64}, torch::kFloat32).transpose(0, 1);  // copied first
  Tensor w64 = randn({64}, torch::kFloat32);
  EXPECT_LE((kernels::rms_norm(transposed, w64, 1e-6) - reference_rms_norm(transposed, w64, 1e-6)).abs().max().item<double>(), 1e-5);
}

TEST(Kernels, AddRmsNormAddsTheBranchThenNormalizes) {
  REQUIRE_GPU();
  torch::manual_seed(2);
  for (auto dtype : kDtypes)
    for (int64_t hidden : {5, 64, 2048, 2051, 7168}) {
      const std::string what = "add_rms_norm " + name(dtype) + " H=" + std::to_string(hidden);
      Tensor x = randn({2, 19, hidden}, dtype, 4.0), branch = randn({2, 19, hidden}, dtype), weight = randn({hidden}, dtype);
      Tensor sum = x + branch, x_before = x.clone();
      auto [ours_sum, ours] = kernels::add_rms_norm(x, branch, weight, 1e-6);
      EXPECT_TRUE(torch::equal(ours_sum, sum)) << what << ": x + residual is one rounding of the sum";
      EXPECT_TRUE(torch::equal(x, x_before)) << what << ": x changed";
      Tensor theirs = reference_rms_norm(sum, weight, 1e-6);
      if (dtype == torch::kFloat32)
        EXPECT_LE((ours - theirs).abs().max().item<double>(), 1e-5 * theirs.abs().max().item<double>()) << what;
      else
        EXPECT_LE(max_ulps(ours, theirs, what), 2.0) << what;
      Tensor stream = x.clone();  // in place: the residual stream becomes the sum, the result is the same
      EXPECT_TRUE(torch::equal(kernels::add_rms_norm_(stream, branch, weight, 1e-6), ours)) << what << " in place";
      EXPECT_TRUE(torch::equal(stream, sum)) << what << " in place";
    }
}

TEST(Kernels, AddRmsNormInPlaceRefusesAnXItCannotWriteRowByRow) {
  REQUIRE_GPU();
  Tensor x = torch::ones({6, 8}, kGpu).t(), weight = torch::ones({6}, kGpu);  // transposed: rows are not contiguous
  EXPECT_THROW(kernels::add_rms_norm_(x, torch::ones({8, 6}, kGpu), weight, 1e-6), std::invalid_argument);
  auto [sum, h] = kernels::add_rms_norm(x, torch::ones({8, 6}, kGpu), weight, 1e-6);  // out of place: read through a copy
  EXPECT_TRUE(torch::equal(sum, torch::full({8, 6}, 2.0, kGpu)));
}

TEST(Kernels, RmsNormErrorsNameTheTensor) {
  REQUIRE_GPU();
  Tensor x = torch::ones({4, 8}, kGpu);
  try {
    kernels::rms_norm(x, torch::ones({7}, kGpu), 1e-6);
    FAIL() << "a weight of the wrong size was accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("weight has shape [7], expected [8]"), std::string::npos) << e.what();
  }
  EXPECT_THROW(kernels::rms_norm(x, torch::ones({8}, torch::dtype(torch::kBFloat16).device(kGpu)), 1e-6), std::invalid_argument);
}

TEST(Kernels, SiluMulMatchesTorchSiluTimesUp) {
  REQUIRE_GPU();
  torch::manual_seed(3);
  for (auto dtype : kDtypes)
    for (int64_t width : {1, 33, 1024, 1003}) {
      const std::string what = "silu_mul " + name(dtype) + " I=" + std::to_string(width);
      Tensor gate = randn({41, width}, dtype, 4.0), up = randn({41, width}, dtype);
      Tensor theirs = torch::silu(gate) * up;
      Tensor ours = kernels::silu_mul(gate, up);
      EXPECT_LE(max_ulps(ours, theirs, what), 1.0) << what;  // 0 where expf is LibTorch's
      Tensor gate_up = torch::cat({gate, up}, -1);  // one [N, 2I] projection
      EXPECT_TRUE(torch::equal(kernels::silu_mul(gate_up), ours)) << what << " from [N, 2I]";
    }
}

TEST(Kernels, SiluMulPackedAndElementPathsAgreeBitForBit) {
  REQUIRE_GPU();
  torch::manual_seed(8);
  for (auto dtype : kDtypes)
    for (int64_t width : {8, 1000, 1024, 1032}) {
      const std::string what = "silu_mul paths " + name(dtype) + " I=" + std::to_string(width);
      Tensor gate = randn({37, width}, dtype, 4.0), up = randn({37, width}, dtype);
      Tensor packed = kernels::silu_mul(gate, up);
      EXPECT_LE(max_ulps(packed, torch::silu(gate) * up, what), 1.0) << what;
      EXPECT_TRUE(torch::equal(kernels::silu_mul(misaligned(gate), up), packed)) << what << ": misaligned gate";
      EXPECT_TRUE(torch::equal(kernels::silu_mul(gate, misaligned(up)), packed)) << what << ": misaligned up";
      // Rows of another stride: 8 elements more (packed) and 4 more (not a multiple of 8 bf16: element path).
      for (int64_t extra : {8, 4}) {
        Tensor wide_gate = torch::zeros({37, width + extra}, gate.options()), wide_up = torch::zeros({37, width + extra}, up.options());
        Tensor g = wide_gate.narrow(-1, extra, width), u = wide_up.narrow(-1, 0, width);
        g.copy_(gate);
        u.copy_(up);
        EXPECT_TRUE(torch::equal(kernels::silu_mul(g, u), packed)) << what << ": rows of stride " << width + extra;
      }
    }
}

TEST(Kernels, SiluMulCoversMoreElementsThanOneGrid) {
  REQUIRE_GPU();
  torch::manual_seed(9);
  // 16411 x 1032 bf16: 2.1M packs, more than one grid of 8192 blocks of 256 threads, so threads loop and
  // step across rows; 1031 wide: the element path loops 8 times as much.
  for (int64_t width : {1032, 1031}) {
    const std::string what = "silu_mul large bf16 I=" + std::to_string(width);
    Tensor gate = randn({16411, width}, torch::kBFloat16, 4.0), up = randn({16411, width}, torch::kBFloat16);
    EXPECT_LE(max_ulps(kernels::silu_mul(gate, up), torch::silu(gate) * up, what), 1.0) << what;
  }
}

TEST(Kernels, RopeMatchesTheModelsRotationInBothLayouts) {
  REQUIRE_GPU();
  torch::manual_seed(4);
  for (auto dtype : kDtypes)
    for (bool interleaved : {false, true})
      for (int64_t rot : {128, 64, 40, 6})
        for (double factor : {1.0, 1.3}) {
          const std::string what = std::string("rope ") + (interleaved ? "interleaved " : "half ") + name(dtype) +
                                   " R=" + std::to_string(rot) + " factor=" + std::to_string(factor);
          const int64_t B = 2, T = 13, Hq = rot == 128 ? 16 : 5, Hk = rot == 128 ? 16 : 3;  // 128: OLMoE's heads
          Tensor positions = torch::randint(0, 4096, {B, T}, torch::dtype(torch::kInt64).device(kGpu));
          Tensor inv_freq = 1.0 / torch::pow(10000.0, torch::arange(0, rot, 2, torch::dtype(torch::kFloat32).device(kGpu)) / double(rot));
          Tensor freqs = positions.unsqueeze(-1).to(torch::kFloat32) * inv_freq;  // [B, T, R/2]
          // q and k as the model holds them: [B, T, H, R] projections viewed as [B, H, T, R].
          Tensor q = randn({B, T, Hq, rot}, dtype).transpose(1, 2), k = randn({B, T, Hk, rot}, dtype).transpose(1, 2);
          Tensor q_theirs = reference_rope(q, freqs, factor, interleaved), k_theirs = reference_rope(k, freqs, factor, interleaved);
          Tensor q_elements = misaligned(q), k_elements = misaligned(k);  // the element path on the same values
          kernels::rope_(q, k, freqs, factor, interleaved);
          EXPECT_LE(max_ulps(q, q_theirs, what + " q"), 1.0) << what;  // 0 where cosf and sinf are LibTorch's
          EXPECT_LE(max_ulps(k, k_theirs, what + " k"), 1.0) << what;
          kernels::rope_(q_elements, k_elements, freqs, factor, interleaved);
          EXPECT_TRUE(torch::equal(q_elements, q)) << what << ": element path on q";
          EXPECT_TRUE(torch::equal(k_elements, k)) << what << ": element path on k";
        }
}

TEST(Kernels, RopeRotatesANarrowedViewWithBroadcastAngles) {
  REQUIRE_GPU();
  torch::manual_seed(5);
  // MLA: the rotary part of each head is the last 16 of 48 dimensions; the angles are shared by the batch.
  Tensor q_full = randn({3, 4, 7, 48}, torch::kBFloat16), untouched = q_full.narrow(-1, 0, 32).clone();
  Tensor q = q_full.narrow(-1, 32, 16), none;
  Tensor freqs = torch::arange(7 * 8, torch::dtype(torch::kFloat32).device(kGpu)).view({1, 7, 8}) * 0.37;
  Tensor theirs = reference_rope(q, freqs.expand({3, 7, 8}), 1.0, true);
  kernels::rope_(q, none, freqs, 1.0, true);
  EXPECT_LE(max_ulps(q, theirs, "rope narrowed interleaved bf16"), 1.0);
  EXPECT_TRUE(torch::equal(q_full.narrow(-1, 0, 32), untouched)) << "dimensions outside the view changed";
}

TEST(Kernels, RopeRotatesAlignedAndMisalignedViewsInBothLayouts) {
  REQUIRE_GPU();
  torch::manual_seed(10);
  // The rotary part from dimension 64 of 128 (packed) or from dimension 1 of 65 (element path), with k
  // a single broadcast head as in MLA.
  for (bool interleaved : {false, true})
    for (int64_t offset : {64, 1}) {
      const std::string what = std::string("rope view ") + (interleaved ? "interleaved" : "half") + " from " + std::to_string(offset);
      Tensor q_full = randn({2, 9, 4, offset + 64}, torch::kBFloat16).transpose(1, 2), k_full = randn({2, 1, 9, offset + 64}, torch::kBFloat16);
      Tensor q_before = q_full.clone(), k_before = k_full.clone();
      Tensor q = q_full.narrow(-1, offset, 64), k = k_full.narrow(-1, offset, 64);
      Tensor freqs = torch::rand({2, 9, 32}, torch::dtype(torch::kFloat32).device(kGpu)) * 300.0;
      Tensor q_theirs = reference_rope(q, freqs, 1.0, interleaved), k_theirs = reference_rope(k, freqs, 1.0, interleaved);
      kernels::rope_(q, k, freqs, 1.0, interleaved);
      EXPECT_LE(max_ulps(q, q_theirs, what + " q"), 1.0) << what;
      EXPECT_LE(max_ulps(k, k_theirs, what + " k"), 1.0) << what;
      EXPECT_TRUE(torch::equal(q_full.narrow(-1, 0, offset), q_before.narrow(-1, 0, offset))) << what << ": q outside the view changed";
      EXPECT_TRUE(torch::equal(k_full.narrow(-1, 0, offset), k_before.narrow(-1, 0, offset))) << what << ": k outside the view changed";
    }
}

struct RouterCase {
  int64_t experts, k;
  bool renormalize;
  double scale;
};

TEST(Kernels, SoftmaxTopKMatchesRoute) {
  REQUIRE_GPU();
  torch::manual_seed(6);
  // OLMoE (64, 8), Qwen2-MoE (60, 4), Mixtral (8, 2, renormalized), a scaled one and the limits.
  for (RouterCase c : {RouterCase{64, 8, false, 1.0}, RouterCase{60, 4, false, 1.0}, RouterCase{8, 2, true, 1.0},
                       RouterCase{64, 8, true, 2.5}, RouterCase{256, 16, true, 1.0}, RouterCase{1, 1, false, 1.0}})
    for (int64_t rows : {1, 1037}) {
      const std::string what = "route E=" + std::to_string(c.experts) + " k=" + std::to_string(c.k) + (c.renormalize ? " renormalized" : "") +
                               " scale=" + std::to_string(c.scale) + " rows=" + std::to_string(rows);
      Tensor logits = torch::randn({rows, c.experts}, kGpu) * 2.0;
      moelab::RouterSpec spec;
      spec.top_k = c.k;
      spec.renormalize = c.renormalize;
      spec.scale = c.scale;
      moelab::Routing theirs = moelab::route(logits, spec);
      ASSERT_TRUE(kernels::route_available(logits, c.k)) << what;
      kernels::TopK ours = kernels::route_softmax_topk(logits, c.k, c.renormalize, c.scale);
      // The same experts, except where two probabilities are equal (or 1 ulp apart): then either is right.
      Tensor probs = logits.softmax(-1), differ = ours.ids.ne(theirs.ids);
      const int64_t swapped = differ.sum().item<int64_t>();
      EXPECT_LE(swapped, ours.ids.numel() / 1000) << what << ": " << swapped << " ids differ";
      if (swapped > 0) {
        EXPECT_LE((probs.gather(-1, ours.ids) - probs.gather(-1, theirs.ids)).abs().max().item<double>(), 1e-6) << what;
      }
      EXPECT_LE(max_ulps(ours.weights, theirs.weights, what), c.renormalize ? 2.0 : 1.0) << what;
    }
}

TEST(Kernels, SoftmaxTopKBreaksTiesTowardTheLowerExpert) {
  REQUIRE_GPU();
  // Row 0: four equal best logits; row 1: all equal; row 2: a tie across the k-th place.
  Tensor logits = torch::zeros({3, 60}, kGpu);
  logits[0].index_put_({torch::indexing::Slice(10, 14)}, 2.0);
  logits[2].index_put_({torch::indexing::Slice(0, 1)}, 3.0);
  logits[2].index_put_({torch::indexing::Slice(40, 43)}, 1.0);
  kernels::TopK ours = kernels::route_softmax_topk(logits, 2, true, 1.0);
  Tensor expected_ids = torch::tensor({10, 11, 0, 1, 0, 40}, torch::kInt64).view({3, 2});
  EXPECT_TRUE(torch::equal(ours.ids.cpu(), expected_ids)) << ours.ids;
  // The weights of tied picks do not depend on which of the tied experts was taken.
  moelab::RouterSpec spec;
  spec.top_k = 2;
  spec.renormalize = true;
  EXPECT_LE(max_ulps(ours.weights, moelab::route(logits, spec).weights, "route ties"), 2.0);
}

TEST(Kernels, SoftmaxTopKRefusesWhatItDoesNotCover) {
  REQUIRE_GPU();
  EXPECT_FALSE(kernels::route_available(torch::zeros({4, 257}, kGpu), 8));
  EXPECT_FALSE(kernels::route_available(torch::zeros({4, 64}, kGpu), 17));
  EXPECT_FALSE(kernels::route_available(torch::zeros({4, 4}, kGpu), 5));
  EXPECT_FALSE(kernels::route_available(torch::zeros({4, 64}, torch::dtype(torch::kBFloat16).device(kGpu)), 8));
  EXPECT_THROW(kernels::route_softmax_topk(torch::zeros({4, 300}, kGpu), 8, false, 1.0), std::invalid_argument);
}

// The per-expert loop of moe_model.cpp's dispatch: y (sorted by expert) weighted and added back per expert.
Tensor reference_combine(const Tensor& y, const Tensor& flat_ids, const Tensor& order, const Tensor& weights, int64_t experts, int64_t k) {
  Tensor token_of = order.div(k, "floor");
  Tensor sorted_w = weights.to(y.scalar_type()).reshape(-1).index_select(0, order).unsqueeze(1);
  Tensor out = torch::zeros({weights.size(0), y.size(1)}, y.options());
  Tensor counts = torch::bincount(flat_ids, {}, experts).cpu();
  int64_t start = 0;
  for (int64_t e = 0; e < experts; ++e) {
    const int64_t n = counts[e].item<int64_t>();
    if (n == 0) continue;
    out.index_add_(0, token_of.narrow(0, start, n), y.narrow(0, start, n) * sorted_w.narrow(0, start, n));
    start += n;
  }
  return out;
}

TEST(Kernels, PermuteAndCombineMatchTheDispatchLoop) {
  REQUIRE_GPU();
  torch::manual_seed(7);
  // k = 16: two batches of 8 rows a thread; hidden 1001: the element path, 1024 and 2048: packed.
  const RouterCase cases[] = {{64, 8, false, 1.0}, {60, 4, true, 1.0}, {8, 2, true, 1.0}, {256, 16, true, 1.0}};
  for (auto dtype : kDtypes)
    for (RouterCase c : cases)
      for (int64_t hidden : {1001, 1024, 2048}) {
        const std::string what = "permute/combine " + name(dtype) + " E=" + std::to_string(c.experts) + " k=" + std::to_string(c.k) +
                                 " H=" + std::to_string(hidden);
        const int64_t tokens = 53;
        Tensor x = randn({tokens, hidden}, dtype);
        moelab::RouterSpec spec;
        spec.top_k = c.k;
        spec.renormalize = c.renormalize;
        moelab::Routing r = moelab::route(torch::randn({tokens, c.experts}, kGpu), spec);
        Tensor flat_ids = r.ids.reshape(-1), order = flat_ids.argsort();
        Tensor sorted_x = kernels::permute(x, order, c.k);
        EXPECT_TRUE(torch::equal(sorted_x, x.index_select(0, order.div(c.k, "floor")))) << what;
        Tensor y = randn({tokens * c.k, hidden}, dtype);  // stands for the experts' outputs in sorted order
        Tensor ours = kernels::unpermute_combine(y, order, r.weights);
        EXPECT_LE(max_ulps(ours, reference_combine(y, flat_ids, order, r.weights, c.experts, c.k), what), 0.0) << what;
        EXPECT_TRUE(torch::equal(kernels::unpermute_combine(y, order, r.weights), ours)) << what << ": not deterministic";
        EXPECT_TRUE(torch::equal(kernels::unpermute_combine(misaligned(y), order, r.weights), ours)) << what << ": element path";
        EXPECT_TRUE(torch::equal(kernels::permute(misaligned(x), order, c.k), sorted_x)) << what << ": permute's element path";
      }
}

TEST(Kernels, CombineSkipsSlotsMissingFromTheOrder) {
  REQUIRE_GPU();
  torch::manual_seed(11);
  // order covers 3 of each token's 4 slots (the last one is out of range): the missing slot adds nothing,
  // and permute gives its row zeros.
  const int64_t tokens = 7, k = 4, hidden = 64;
  Tensor weights = torch::rand({tokens, k}, kGpu);
  Tensor order = torch::randperm(tokens * k, torch::dtype(torch::kInt64).device(kGpu));
  Tensor dropped = order.remainder(k).eq(k - 1);
  order = torch::where(dropped, torch::full_like(order, tokens * k + 5), order);
  Tensor y = randn({tokens * k, hidden}, torch::kBFloat16);
  Tensor expected = torch::zeros({tokens, hidden}, y.options());
  for (int64_t p = 0; p < tokens * k; ++p) {  // in sorted order, as the dispatch loop adds
    const int64_t slot = order[p].item<int64_t>();
    if (slot >= tokens * k) continue;
    expected[slot / k] += y[p] * weights.reshape(-1)[slot].to(torch::kBFloat16);
  }
  for (const Tensor& rows : {y, misaligned(y)})
    EXPECT_TRUE(torch::equal(kernels::unpermute_combine(rows, order, weights), expected));
  Tensor x = randn({tokens, hidden}, torch::kBFloat16);
  Tensor sorted_x = kernels::permute(x, order, k);
  EXPECT_TRUE(torch::equal(sorted_x.index({dropped}), torch::zeros({tokens, hidden}, x.options()))) << "out-of-range slots are not zero rows";
}

}  // namespace
