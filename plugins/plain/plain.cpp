// The model's own next-token distribution: one forward over the newest token of every row (the cache
// grows by exactly it), its logits handed to the pick chain. The default pick = ["greedy"] is greedy decoding.
#include "moelab/moelab.h"

namespace {

class PlainSampler final : public moelab::Sampler {
 public:
  PlainSampler(const moelab::Config& config, moelab::RunContext& context) : Sampler(moelab::pick_chain(config, context.seed_for(config.id()))) {}
  torch::Tensor next_scores(moelab::Model& model, const torch::Tensor& tokens, moelab::KVCache& cache, std::int64_t) override {
    return model.forward(tokens, {}, &cache, true).select(1, 0);
  }
};

moelab::Descriptor describe() {
  moelab::Descriptor d("plain", moelab::Kind::sampler, "0.1.0", "the model's next-token logits, then the pick chain (greedy by default)");
  return moelab::add_picker_keys(d);
}

}  // namespace

MOELAB_PLUGIN(describe, PlainSampler)
