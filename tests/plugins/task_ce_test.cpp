// task_ce: the loss value, masking of absent options, and its gradient against finite differences.
#include "moelab/moelab.h"
#include "test_run.h"

namespace {

std::shared_ptr<moelab::Objective> make_task_ce(const moelab::test::TempDir& dir, std::unique_ptr<moelab::ExperimentRun>& run,
                                                double smoothing = 0) {
  run = moelab::test::start_run(dir, "stages = []\n[loss]\nplugin = \"task_ce\"\nlabel_smoothing = " + std::to_string(smoothing) + "\n");
  return run->make<moelab::Objective>("loss");
}

TEST(TaskCe, EqualsCrossEntropyOverOptionLogits) {
  moelab::test::TempDir dir;
  std::unique_ptr<moelab::ExperimentRun> run;
  auto objective = make_task_ce(dir, run);
  moelab::ObjectiveBatch batch;
  batch.last_logits = torch::tensor({{0.0f, 1.0f, 2.0f, 3.0f, 4.0f}, {1.0f, 0.5f, -1.0f, 2.0f, 0.0f}});
  batch.choice_ids = torch::tensor({{1, 2, 3}, {0, 3, -1}}, torch::kInt64);
  batch.labels = torch::tensor({2, 0}, torch::kInt64);
  auto terms = objective->compute(batch);
  // Row 0: options logits (1, 2, 3), gold 3. Row 1: options (1, 2), gold 1; the absent option is ignored.
  double row0 = -(3 - std::log(std::exp(1.0) + std::exp(2.0) + std::exp(3.0)));
  double row1 = -(1 - std::log(std::exp(1.0) + std::exp(2.0)));
  EXPECT_NEAR(terms.total.item<double>(), (row0 + row1) / 2, 1e-6);
  EXPECT_EQ(terms.parts.size(), 2u);
  EXPECT_NEAR(terms.parts[1].second.item<double>(), 0.5, 1e-6);  // row 0 right, row 1 wrong
}

TEST(TaskCe, GradientMatchesFiniteDifferences) {
  moelab::test::TempDir dir;
  std::unique_ptr<moelab::ExperimentRun> run;
  for (double smoothing : {0.0, 0.1}) {
    auto objective = make_task_ce(dir, run, smoothing);
    torch::manual_seed(0);
    moelab::ObjectiveBatch batch;
    batch.last_logits = torch::randn({3, 7}, torch::kFloat64).requires_grad_(true);
    batch.choice_ids = torch::tensor({{1, 4, 6, 0}, {2, 3, -1, -1}, {5, 1, 2, -1}}, torch::kInt64);
    batch.labels = torch::tensor({3, 1, 0}, torch::kInt64);
    objective->compute(batch).total.to(torch::kFloat64).backward();
    torch::Tensor analytic = batch.last_logits.grad().clone();
    torch::Tensor x = batch.last_logits.detach().clone();
    const double h = 1e-5;
    for (long long i = 0; i < x.numel(); ++i) {
      auto at = [&](double delta) {
        moelab::ObjectiveBatch b = batch;
        b.last_logits = x.clone();
        b.last_logits.view(-1)[i] += delta;
        return objective->compute(b).total.item<double>();
      };
      double numeric = (at(h) - at(-h)) / (2 * h);
      EXPECT_NEAR(analytic.view(-1)[i].item<double>(), numeric, 1e-8) << "element " << i << " smoothing " << smoothing;
    }
  }
}

}  // namespace
