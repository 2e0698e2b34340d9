#include "moelab/sampler.h"

namespace moelab {

torch::Tensor counter_uniform(std::uint64_t seed, std::uint64_t counter, at::IntArrayRef shape, torch::Device device) {
  auto opts = torch::dtype(torch::kInt64).device(device);
  std::int64_t n = 1;
  for (auto d : shape) n *= d;
  // splitmix64 on int64 tensors (wrapping multiplication; logical shifts by masking the sign extension).
  auto shr = [](const torch::Tensor& x, int s) { return x.__rshift__(s).bitwise_and(static_cast<std::int64_t>((~0ull) >> s)); };
  torch::Tensor z = torch::arange(n, opts) + static_cast<std::int64_t>(seed * 0x9E3779B97F4A7C15ull + counter);
  z = z * static_cast<std::int64_t>(0x9E3779B97F4A7C15ull);
  z = (z.bitwise_xor(shr(z, 30))) * static_cast<std::int64_t>(0xBF58476D1CE4E5B9ull);
  z = (z.bitwise_xor(shr(z, 27))) * static_cast<std::int64_t>(0x94D049BB133111EBull);
  z = z.bitwise_xor(shr(z, 31));
  return ((shr(z, 11).to(torch::kFloat64) + 0.5) * (1.0 / 9007199254740992.0)).view(shape);
}

torch::Tensor pick_token(const torch::Tensor& probs, double temperature, double top_p, const torch::Tensor& uniform) {
  if (temperature <= 0) return probs.argmax(-1);
  torch::Tensor p = probs.to(torch::kFloat64).clamp_min(0).pow(1.0 / temperature);
  p = p / p.sum(-1, true);
  auto [sorted, order] = p.sort(-1, /*descending=*/true);
  torch::Tensor before = sorted.cumsum(-1) - sorted;  // mass of the more likely tokens
  sorted = sorted.masked_fill(before >= top_p, 0.0);  // the most likely token always stays
  torch::Tensor cdf = sorted.cumsum(-1);
  torch::Tensor target = uniform.to(cdf.device(), torch::kFloat64).unsqueeze(-1) * cdf.narrow(-1, cdf.size(-1) - 1, 1);
  torch::Tensor index = torch::searchsorted(cdf, target).clamp_max(cdf.size(-1) - 1);
  return order.gather(-1, index).squeeze(-1);
}

}  // namespace moelab
