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

Sampler::Sampler(PickChain chain) : chain_(std::move(chain)) {}

torch::Tensor Sampler::next(Model& model, const torch::Tensor& tokens, KVCache& cache, std::int64_t step, const torch::Tensor& history) {
  return chain_.pick(next_scores(model, tokens, cache, step), history, step);
}

}  // namespace moelab
