// Heavy-tailed self-regularization (WeightWatcher): the exponent alpha of a power law p(x) ~ x^-alpha
// fitted to the tail of the empirical spectral density of W^T W. Well-trained layers have small alpha
// (about 2-4); large alpha marks a less-trained matrix, the one a bit plan quantizes hardest.
#pragma once

#include <torch/types.h>

#include <string>
#include <vector>

namespace moelab {

// Eigenvalues of W^T W (the squared singular values of w [rows, cols] or [B, rows, cols]), ascending,
// float64, on w's device.
torch::Tensor spectral_density(const torch::Tensor& w);

struct PowerLawFit {
  double alpha = 0, xmin = 0, ks = 0;  // exponent, start of the fitted tail, Kolmogorov-Smirnov distance of the fit
  long long tail = 0;                  // eigenvalues in the tail
};

// method "ks": maximum likelihood alpha = 1 + n / sum ln(x_i / xmin) over the tail x >= xmin, with xmin
// the candidate that minimizes the KS distance (Clauset et al.; WeightWatcher). "hill": the public
// pipeline's Hill estimator over the k = max(10, n / 10) largest eigenvalues.
PowerLawFit fit_power_law(const torch::Tensor& eigenvalues, const std::string& method = "ks");
// The same for each row of [B, n] at once, on the tensor's device (one fit per expert of a layer).
std::vector<PowerLawFit> fit_power_laws(const torch::Tensor& eigenvalues, const std::string& method = "ks");

}  // namespace moelab
