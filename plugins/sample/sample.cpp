// Ancestral sampling with temperature and top-p (nucleus), seeded from the run seed.
#include "moelab/moelab.h"

namespace {

class SampleSampler final : public moelab::Sampler {
 public:
  SampleSampler(const moelab::Config& config, moelab::RunContext& context)
      : temperature_(config.get_real("temperature")), top_p_(config.get_real("top_p")), seed_(context.seed_for(config.id())) {
    if (temperature_ < 0 || top_p_ <= 0 || top_p_ > 1)
      throw std::runtime_error(fmt::format("[{}] needs temperature >= 0 and 0 < top_p <= 1", config.id()));
  }

  torch::Tensor next(moelab::Model& model, const torch::Tensor& tokens, moelab::KVCache& cache, std::int64_t step) override {
    torch::Tensor probs = model.forward(tokens, {}, &cache, true).select(1, 0).softmax(-1);
    torch::Tensor u = moelab::counter_uniform(seed_, static_cast<std::uint64_t>(step) * tokens.size(0), {tokens.size(0)}, probs.device());
    return moelab::pick_token(probs, temperature_, top_p_, u);
  }

 private:
  double temperature_, top_p_;
  std::uint64_t seed_;
};

moelab::Descriptor describe() {
  return moelab::Descriptor("sample", moelab::Kind::sampler, "0.1.0", "temperature and top-p sampling")
      .real("temperature", 1.0, "probabilities are raised to 1/temperature (0: greedy)")
      .real("top_p", 1.0, "keep the smallest set of tokens holding this much probability");
}

}  // namespace

MOELAB_PLUGIN(describe, SampleSampler)
