// Greedy decoding: the most likely next token of each row (ties go to the lowest id).
#include "moelab/moelab.h"

namespace {

class GreedySampler final : public moelab::Sampler {
 public:
  GreedySampler(const moelab::Config&, moelab::RunContext&) {}
  torch::Tensor next(moelab::Model& model, const torch::Tensor& tokens, moelab::KVCache& cache, std::int64_t) override {
    return model.forward(tokens, {}, &cache, true).select(1, 0).argmax(-1);
  }
};

moelab::Descriptor describe() {
  return moelab::Descriptor("greedy", moelab::Kind::sampler, "0.2.0", "argmax of the next-token logits");
}

}  // namespace

MOELAB_PLUGIN(describe, GreedySampler)
