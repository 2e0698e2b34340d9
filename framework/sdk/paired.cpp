#include "moelab/lib/paired.h"
#include "moelab/lib/seeded.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

namespace moelab {

double mcnemar_exact(long long b, long long c) {
  long long n = b + c;
  if (n == 0) return 1.0;
  double tail = 0;
  for (long long i = 0; i <= std::min(b, c); ++i)
    tail += std::exp(std::lgamma(n + 1.0) - std::lgamma(i + 1.0) - std::lgamma(n - i + 1.0) - n * std::log(2.0));
  return std::min(1.0, 2 * tail);
}

nlohmann::json paired_comparison(const std::vector<double>& a, const std::vector<double>& b, std::uint64_t seed, int resamples) {
  if (a.size() != b.size() || a.empty()) throw std::invalid_argument("paired_comparison needs two equally long, non-empty score lists");
  const std::size_t n = a.size();
  double mean_a = 0, mean_b = 0;
  bool binary = true;
  long long a_only = 0, b_only = 0;
  for (std::size_t i = 0; i < n; ++i) {
    mean_a += a[i] / n;
    mean_b += b[i] / n;
    binary = binary && (a[i] == 0 || a[i] == 1) && (b[i] == 0 || b[i] == 1);
    a_only += a[i] > b[i];
    b_only += b[i] > a[i];
  }
  SeededRng rng(seed);
  std::vector<double> diffs;
  for (int r = 0; r < resamples; ++r) {
    double d = 0;
    for (std::size_t i = 0; i < n; ++i) {
      const std::size_t k = rng.below(n);
      d += b[k] - a[k];
    }
    diffs.push_back(d / static_cast<double>(n));
  }
  std::sort(diffs.begin(), diffs.end());
  auto quantile = [&](double q) { return diffs.empty() ? 0.0 : diffs[static_cast<std::size_t>(q * (diffs.size() - 1))]; };
  nlohmann::json out = {{"difference", mean_b - mean_a}, {"bootstrap_95", {quantile(0.025), quantile(0.975)}}};
  if (binary) out.update({{"a_only", a_only}, {"b_only", b_only}, {"mcnemar_p", mcnemar_exact(a_only, b_only)}});
  return out;
}

}  // namespace moelab
