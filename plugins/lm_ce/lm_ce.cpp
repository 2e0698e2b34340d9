// Language-model loss: the mean next-token cross-entropy over every position that has a target (the
// router finetune on calibration text after quantization).
#include "moelab/moelab.h"

namespace {

moelab::Descriptor describe() {
  return moelab::Descriptor("lm_ce", moelab::Kind::objective, "0.2.0", "next-token cross-entropy (targets -100 ignored)");
}

class LmCrossEntropy final : public moelab::Objective {
 public:
  LmCrossEntropy(const moelab::Config&, moelab::RunContext&) : Objective(moelab::need::token_loss) {}

  moelab::LossTerms compute(const moelab::ObjectiveBatch& batch) override {
    torch::Tensor scored = batch.target_ids.reshape(-1).ne(-100).to(batch.token_loss.device());
    torch::Tensor loss = batch.token_loss.reshape(-1).masked_select(scored).mean();
    return {loss, {{"ce", loss.detach()}}};
  }
};

}  // namespace

MOELAB_OBJECTIVE_PLUGIN(describe, moelab::need::token_loss, LmCrossEntropy)
