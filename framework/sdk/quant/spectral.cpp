#include "moelab/lib/spectral.h"

#include <fmt/format.h>
#include <torch/torch.h>

#include <limits>

namespace moelab {

using torch::Tensor;

Tensor spectral_density(const Tensor& w) {
  torch::NoGradGuard no_grad;
  // The nonzero eigenvalues of W^T W are those of the smaller Gram matrix; a symmetric eigensolver on it
  // (float64) is much faster than an SVD, batched on the GPU.
  Tensor x = w.to(torch::kFloat64);
  Tensor gram = x.size(-2) <= x.size(-1) ? x.matmul(x.transpose(-2, -1)) : x.transpose(-2, -1).matmul(x);
  return std::get<0>(torch::linalg_eigvalsh(gram).clamp_min(0.0).sort(-1));
}

namespace {

// Fits rows of x [B, n] (ascending; numerical zeros first). Candidate j takes the tail x[j:].
std::vector<PowerLawFit> fit_rows(const Tensor& x, const std::string& method) {
  const int64_t B = x.size(0), n = x.size(1);
  Tensor zero_count = (x <= x.select(1, n - 1).unsqueeze(1) * 1e-12).sum(1);  // [B]
  if ((n - zero_count).min().item<int64_t>() < 3) throw std::runtime_error("power-law fit: fewer than 3 nonzero eigenvalues");
  Tensor logs = x.clamp_min(1e-300).log();
  std::vector<PowerLawFit> fits(B);
  if (method == "hill") {
    for (int64_t b = 0; b < B; ++b) {
      const int64_t valid = n - zero_count[b].item<int64_t>();
      const int64_t k = std::min<int64_t>(valid - 1, std::max<int64_t>(10, valid / 10));
      Tensor row = x[b], tail = row.narrow(0, n - k, k);
      PowerLawFit& fit = fits[b];
      fit.xmin = row[n - k - 1].item<double>();
      fit.tail = k;
      fit.alpha = 1 + static_cast<double>(k) / (logs[b].narrow(0, n - k, k) - std::log(fit.xmin)).sum().item<double>();
      Tensor model = 1 - (tail / fit.xmin).pow(1 - fit.alpha);
      Tensor empirical = torch::arange(1, k + 1, x.options()) / static_cast<double>(k);
      fit.ks = (model - empirical).abs().max().item<double>();
    }
    return fits;
  }
  if (method != "ks") throw std::runtime_error(fmt::format("power-law fit: unknown method \"{}\" (ks, hill)", method));
  const int64_t min_tail = std::min<int64_t>(n, 10), candidates = n - min_tail + 1;
  Tensor suffix = logs.flip(1).cumsum(1).flip(1);  // sum_{i >= j} log x_i
  Tensor j = torch::arange(candidates, x.options()), count = static_cast<double>(n) - j;  // [C]
  Tensor log_xmin = logs.narrow(1, 0, candidates);                                         // [B, C]
  Tensor denominator = suffix.narrow(1, 0, candidates) - count * log_xmin;
  Tensor alpha = 1 + count / denominator.clamp_min(1e-300);
  // KS distance of each candidate over its tail: max |F_emp - F_fit| at both edges of each empirical step.
  Tensor i = torch::arange(n, x.options()).unsqueeze(0), jj = j.unsqueeze(1);  // [1, n], [C, 1]
  Tensor outside = (i < jj).unsqueeze(0);
  Tensor above = ((i - jj + 1) / count.unsqueeze(1)).unsqueeze(0), below = ((i - jj) / count.unsqueeze(1)).unsqueeze(0);
  Tensor fitted = 1 - ((logs.unsqueeze(1) - log_xmin.unsqueeze(2)) * (1 - alpha.unsqueeze(2))).exp();  // [B, C, n]
  Tensor distance = torch::max((fitted - above).abs(), (fitted - below).abs()).masked_fill(outside, 0.0);
  Tensor ks = std::get<0>(distance.max(2));
  Tensor invalid = (denominator <= 0) | (j.unsqueeze(0) < zero_count.unsqueeze(1));
  ks = ks.masked_fill(invalid, std::numeric_limits<double>::infinity());
  Tensor best = ks.argmin(1);  // [B]
  Tensor rows = torch::arange(B, best.options());
  Tensor a = alpha.index({rows, best}).cpu(), xm = x.index({rows, best}).cpu(), d = ks.index({rows, best}).cpu(), b_cpu = best.cpu();
  for (int64_t b = 0; b < B; ++b)
    fits[b] = {a[b].item<double>(), xm[b].item<double>(), d[b].item<double>(), n - b_cpu[b].item<int64_t>()};
  return fits;
}

}  // namespace

std::vector<PowerLawFit> fit_power_laws(const Tensor& eigenvalues, const std::string& method) {
  torch::NoGradGuard no_grad;
  Tensor x = std::get<0>(eigenvalues.to(torch::kFloat64).sort(-1));
  if (x.dim() != 2) throw std::runtime_error("fit_power_laws: eigenvalues must be [B, n]");
  // Rows in chunks that keep the [rows, candidates, n] KS tensors near 2^26 elements.
  const int64_t n = x.size(1), per_chunk = std::max<int64_t>(1, (int64_t{1} << 26) / std::max<int64_t>(1, n * n));
  std::vector<PowerLawFit> out;
  for (int64_t start = 0; start < x.size(0); start += per_chunk) {
    auto part = fit_rows(x.narrow(0, start, std::min(per_chunk, x.size(0) - start)), method);
    out.insert(out.end(), part.begin(), part.end());
  }
  return out;
}

PowerLawFit fit_power_law(const Tensor& eigenvalues, const std::string& method) {
  return fit_power_laws(eigenvalues.reshape({1, -1}), method).front();
}

}  // namespace moelab
