// Language-model loss: the mean next-token cross-entropy over every position that has a target (the
// router finetune on calibration text after quantization).
#include "moelab/moelab.h"

namespace {

struct NoSettings {};

const moelab::Options<NoSettings>& options() {
  static const auto o = moelab::Options<NoSettings>("lm_ce", moelab::Kind::objective, "0.2.0", "next-token cross-entropy (targets -100 ignored)");
  return o;
}

moelab::ObjectiveNeeds own_needs() {
  moelab::ObjectiveNeeds n;
  n.token_loss = true;
  return n;
}

class LmCrossEntropy final : public moelab::Objective {
 public:
  LmCrossEntropy(const moelab::Config&, moelab::RunContext&) : Objective(own_needs()) {}

  moelab::LossTerms compute(const moelab::ObjectiveBatch& batch) override {
    torch::Tensor loss = batch.token_loss.reshape(-1).masked_select(batch.target_ids.reshape(-1).ne(-100).to(batch.token_loss.device())).mean();
    return {loss, {{"ce", loss.detach()}}};
  }
};

}  // namespace

MOELAB_OBJECTIVE_PLUGIN(options, own_needs, LmCrossEntropy)
