// The model's own next-token distribution: one forward over the newest token of every row (the cache
// grows by exactly it), its logits handed to the pick chain. The default pick = ["greedy"] is greedy decoding.
#include "moelab/moelab.h"
#include "moelab/lib/pickers.h"

namespace {

struct Settings {
  moelab::PickOptions picking;
};

const moelab::Options<Settings>& options() {
  static const auto o = moelab::Options<Settings>("plain", moelab::Kind::sampler, "0.1.0",
                                                  "the model's next-token logits, then the pick chain (greedy by default)")
                            .include(&Settings::picking, moelab::pick_options());
  return o;
}

class PlainSampler final : public moelab::Sampler {
 public:
  PlainSampler(const moelab::Config& config, moelab::RunContext& context)
      : Sampler(moelab::pick_chain(options().read(config).picking, config, context.seed_for(config.id()))) {}
  torch::Tensor next_scores(moelab::Model& model, const torch::Tensor& tokens, moelab::KVCache& cache, std::int64_t) override {
    return model.forward(tokens, {}, &cache, true).select(1, 0);
  }
};

}  // namespace

MOELAB_PLUGIN(options, PlainSampler)
