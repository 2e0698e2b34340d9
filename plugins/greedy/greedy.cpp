// Greedy decoding: the most likely token of each row (ties go to the lowest id).
#include "moelab/moelab.h"

namespace {

class GreedySampler final : public moelab::Sampler {
 public:
  GreedySampler(const moelab::Config&, moelab::RunContext&) {}
  torch::Tensor choose(const torch::Tensor& logits) override { return logits.argmax(-1); }
};

moelab::Descriptor describe() {
  return moelab::Descriptor("greedy", moelab::Kind::sampler, "0.1.0", "argmax of the next-token logits");
}

}  // namespace

MOELAB_PLUGIN(describe, GreedySampler)
