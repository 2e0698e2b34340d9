// Language-model loss: next-token cross-entropy over every position whose target is not -100
// (the router finetune on calibration text after quantization).
#include "moelab/moelab.h"

namespace {

class LmCrossEntropy final : public moelab::Objective {
 public:
  LmCrossEntropy(const moelab::Config&, moelab::RunContext&) {}

  moelab::LossTerms compute(const moelab::ObjectiveBatch& batch) override {
    if (!batch.logits.defined() || !batch.target_ids.defined())
      throw std::runtime_error("lm_ce needs all logits and next-token targets: use it with a language-model stage (finetune_lm)");
    const int64_t vocab = batch.logits.size(-1);
    torch::Tensor logits = batch.logits.reshape({-1, vocab});
    if (logits.scalar_type() != torch::kFloat64) logits = logits.to(torch::kFloat32);
    torch::Tensor targets = batch.target_ids.reshape(-1).to(logits.device());
    torch::Tensor valid = targets.ne(-100);
    torch::Tensor nll = -logits.log_softmax(-1).gather(1, targets.clamp_min(0).unsqueeze(1)).squeeze(1);
    torch::Tensor loss = nll.masked_select(valid).mean();
    return {loss, {{"ce", loss.detach()}}};
  }
};

moelab::Descriptor describe() {
  return moelab::Descriptor("lm_ce", moelab::Kind::objective, "0.1.0", "next-token cross-entropy (targets -100 ignored)");
}

}  // namespace

MOELAB_PLUGIN(describe, LmCrossEntropy)
