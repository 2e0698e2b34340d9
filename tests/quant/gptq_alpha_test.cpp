// GPTQ against round-to-nearest on a layer with correlated inputs, batched against single matrices;
// the power-law alpha fit on synthetic spectra of known exponent.
#include "moelab/moelab.h"
#include "moelab/lib/quant.h"
#include "moelab/lib/spectral.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

namespace {

using torch::Tensor;

struct Layer {
  Tensor w, x, hessian;
};

// Inputs in 128 dimensions driven by 12 latent factors (strongly correlated columns) plus a little noise.
Layer correlated_layer() {
  torch::manual_seed(5);
  Tensor x = torch::randn({1024, 12}).matmul(torch::randn({12, 128})) + 0.05 * torch::randn({1024, 128});
  Tensor w = torch::randn({48, 128}) * 0.1;
  return {w, x, 2 * x.t().matmul(x) / x.size(0)};
}

double output_error(const Layer& layer, const Tensor& q) { return (layer.x.matmul((layer.w - q).t())).norm().item<double>(); }

TEST(Gptq, BeatsRoundToNearestOnCorrelatedInputs) {
  Layer layer = correlated_layer();
  for (const char* format : {"int3", "int4", "mxfp4"}) {
    const moelab::QuantSpec spec{moelab::quant_format(format), 32};
    Tensor rtn = moelab::fake_quantize(layer.w, moelab::fit_grids(layer.w, spec), spec);
    for (bool act_order : {false, true}) {
      moelab::GptqResult g = moelab::gptq_quantize(layer.w, layer.hessian, spec, {0.01, 32, act_order});
      const double gptq_error = output_error(layer, g.q), rtn_error = output_error(layer, rtn);
      EXPECT_LT(gptq_error, 0.7 * rtn_error) << format << " act_order " << act_order;
      // The result lies on its grids: packing and unpacking gives it back.
      EXPECT_TRUE(torch::allclose(moelab::unpack(moelab::pack(g.q, g.grids, spec)), g.q, 0, 1e-7)) << format;
    }
  }
}

TEST(Gptq, BatchedMatricesEqualOneAtATime) {
  Layer a = correlated_layer();
  torch::manual_seed(9);
  Tensor w2 = torch::randn({48, 128}) * 0.1;
  Tensor x2 = torch::randn({256, 128});
  Tensor h2 = 2 * x2.t().matmul(x2) / 256;
  const moelab::QuantSpec spec{moelab::QuantFormat::int4, 64};
  moelab::GptqResult batched = moelab::gptq_quantize(torch::stack({a.w, w2}), torch::stack({a.hessian, h2}), spec, {});
  moelab::GptqResult first = moelab::gptq_quantize(a.w, a.hessian, spec, {}), second = moelab::gptq_quantize(w2, h2, spec, {});
  EXPECT_TRUE(torch::allclose(batched.q[0], first.q, 1e-5, 1e-6));
  EXPECT_TRUE(torch::allclose(batched.q[1], second.q, 1e-5, 1e-6));
}

TEST(Gptq, ColumnsWithoutInputAreZeroed) {
  Layer layer = correlated_layer();
  Tensor h = layer.hessian.clone();
  h[4].zero_();
  h.select(1, 4).zero_();
  moelab::GptqResult g = moelab::gptq_quantize(layer.w, h, {moelab::QuantFormat::int4, 128}, {});
  EXPECT_TRUE(g.q.select(1, 4).abs().max().item<double>() <= g.grids.scale.max().item<double>() / 2 + 1e-7);
}

// Eigenvalues drawn from p(x) ~ x^-alpha for x >= 1 (inverse-CDF sampling).
Tensor pareto(double alpha, long long n, int seed) {
  torch::manual_seed(seed);
  return torch::rand({n}, torch::kFloat64).clamp_min(1e-12).pow(-1.0 / (alpha - 1));
}

TEST(Alpha, KsFitRecoversTheExponentOfSyntheticPowerLaws) {
  // The MLE's sampling error is about (alpha - 1) / sqrt(tail); with 4000 samples it stays under 0.1 for
  // the exponents trained layers show (2 to 4).
  for (double alpha : {2.0, 2.5, 3.0, 4.0}) {
    moelab::PowerLawFit fit = moelab::fit_power_law(pareto(alpha, 4000, static_cast<int>(alpha * 10)), "ks");
    EXPECT_NEAR(fit.alpha, alpha, 0.1) << "alpha " << alpha;
    EXPECT_LT(fit.ks, 0.05);
  }
}

TEST(Alpha, HillRecoversTheExponentOfSyntheticPowerLaws) {
  // The default (the public script's): the top 10% only, so its error is about (alpha - 1) / sqrt(400).
  for (double alpha : {2.0, 2.5, 3.0, 4.0}) {
    moelab::PowerLawFit fit = moelab::fit_power_law(pareto(alpha, 4000, static_cast<int>(alpha * 10)), "hill");
    EXPECT_NEAR(fit.alpha, alpha, 0.1 * (alpha - 1)) << "alpha " << alpha;
    EXPECT_EQ(fit.tail, 400);
  }
}

// The public script's formula written out: alpha = 1 + k / sum_i ln(lambda_i / lambda_(n-k)) over the k =
// max(10, n / 10) largest eigenvalues, lambda_(n-k) being the largest one outside them.
TEST(Alpha, HillIsThePublicScriptsFormula) {
  for (std::int64_t n : {20, 200}) {
    const std::int64_t k = std::max<std::int64_t>(10, n / 10);
    double sum = 0;
    for (std::int64_t i = n - k + 1; i <= n; ++i) sum += std::log(static_cast<double>(i) / static_cast<double>(n - k));
    moelab::PowerLawFit fit = moelab::fit_power_law(torch::arange(1, n + 1, torch::kFloat64).flip(0), "hill");
    EXPECT_NEAR(fit.alpha, 1 + static_cast<double>(k) / sum, 1e-12) << "n " << n;
    EXPECT_EQ(fit.tail, k);
    EXPECT_EQ(fit.xmin, static_cast<double>(n - k));
  }
}

TEST(Alpha, SpectralDensityOfAMatrixWithKnownSpectrumRecoversItsExponent) {
  // W = Q1 diag(sqrt(lambda)) Q2^T has W^T W eigenvalues lambda.
  const long long n = 600;
  Tensor lambda = pareto(3.0, n, 7);
  torch::manual_seed(8);
  Tensor q1 = std::get<0>(torch::linalg_qr(torch::randn({n, n}, torch::kFloat64)));
  Tensor q2 = std::get<0>(torch::linalg_qr(torch::randn({n, n}, torch::kFloat64)));
  Tensor w = q1.matmul(torch::diag(lambda.sqrt())).matmul(q2.t());
  Tensor density = moelab::spectral_density(w);
  Tensor sorted = std::get<0>(lambda.sort());
  EXPECT_TRUE(torch::allclose(density, sorted, 1e-3, 1e-4));
  EXPECT_NEAR(moelab::fit_power_law(density).alpha, moelab::fit_power_law(sorted).alpha, 0.02);
}

}  // namespace
