// Multiple-choice task loss: cross-entropy over the answer-option tokens (" A", " B", ...) of each
// row, read at the row's last prompt position. Options a row does not have (id -1) are masked out.
#include "moelab/moelab.h"

namespace {

struct Settings {
  double label_smoothing = 0;
};

const moelab::Options<Settings>& options() {
  static const auto o = moelab::Options<Settings>("task_ce", moelab::Kind::objective, "0.2.0",
                                                  "cross-entropy over answer-letter tokens at the last prompt position")
                            .real("label_smoothing", &Settings::label_smoothing, 0.0, "share of the target mass spread uniformly over the row's options")
                            .within(0, 1);
  return o;
}


class TaskCrossEntropy final : public moelab::Objective {
 public:
  TaskCrossEntropy(const moelab::Config& config, moelab::RunContext&) : Objective(moelab::need::choices), settings_(options().read(config)) {}

  moelab::LossTerms compute(const moelab::ObjectiveBatch& batch) override {
    TORCH_CHECK(batch.last_logits.dim() == 2 && batch.choice_ids.dim() == 2, "task_ce needs last_logits [B,V] and choice_ids [B,C]");
    torch::Tensor valid = batch.choice_ids.ge(0);
    torch::Tensor option_logits = batch.last_logits.gather(1, batch.choice_ids.clamp_min(0));
    if (option_logits.scalar_type() != torch::kFloat64) option_logits = option_logits.to(torch::kFloat32);
    option_logits = option_logits.masked_fill(valid.logical_not(), -std::numeric_limits<float>::infinity());
    torch::Tensor log_probs = option_logits.log_softmax(1);
    torch::Tensor nll = -log_probs.gather(1, batch.labels.unsqueeze(1)).squeeze(1);
    torch::Tensor loss = nll;
    if (settings_.label_smoothing > 0) {
      torch::Tensor uniform = -(log_probs.masked_fill(valid.logical_not(), 0).sum(1) / valid.sum(1));
      loss = (1 - settings_.label_smoothing) * nll + settings_.label_smoothing * uniform;
    }
    torch::Tensor total = loss.mean();
    torch::Tensor accuracy = option_logits.argmax(1).eq(batch.labels).to(torch::kFloat32).mean();
    return {total, {{"task", total.detach()}, {"train_accuracy", accuracy}}};
  }

 private:
  Settings settings_;
};

}  // namespace

MOELAB_OBJECTIVE_PLUGIN(options, moelab::need::choices, TaskCrossEntropy)
