// z_loss and load_balancing against transformers' router_z_loss_func and load_balancing_loss_func on
// fixed router logits (tests/fixtures/objectives/make_router_losses.py), their gradients against finite
// differences, padding left out, and the composition with another objective (add_to).
#include "moelab/moelab.h"
#include "moelab/lib/safetensors.h"
#include "test_run.h"

#include <gmock/gmock.h>

namespace {

namespace fs = std::filesystem;
using moelab::test::TempDir;

const fs::path kFixture = fs::path(MOELAB_SOURCE_DIR) / "tests" / "fixtures" / "objectives" / "router_losses.safetensors";

struct RouterLosses {
  TempDir dir;
  std::unique_ptr<moelab::ExperimentRun> run;
  moelab::SafetensorsFile fixture{kFixture};

  explicit RouterLosses(const std::string& tables = "")
      : run(moelab::test::start_run(dir, "stages = []\n[z]\nplugin = \"z_loss\"\ncoef = 1.0\n[lb]\nplugin = \"load_balancing\"\ncoef = 1.0\n"
                                         "[task]\nplugin = \"task_ce\"\n" + tables)) {}

  double reference(const std::string& name) const { return fixture.get(name).item<double>(); }

  // The fixture's 3 layers of router logits [B*T, E] (B = 2, T = 6), with its attention mask or none.
  moelab::ObjectiveBatch batch(bool masked, torch::ScalarType dtype = torch::kFloat32) const {
    moelab::ObjectiveBatch b;
    for (int layer = 0; layer < 3; ++layer) {
      moelab::RouterTrace trace;
      trace.layer = layer;
      trace.logits = fixture.get("router_logits." + std::to_string(layer)).to(dtype).clone().requires_grad_(true);
      b.routers.push_back(trace);
    }
    b.attention_mask = masked ? fixture.get("attention_mask").clone() : torch::ones({2, 6}, torch::kInt64);
    b.top_k = fixture.get("top_k").item<int64_t>();
    return b;
  }

  double loss(const std::string& id, const moelab::ObjectiveBatch& b) { return run->make<moelab::Objective>(id)->compute(b).total.item<double>(); }
};

TEST(RouterLosses, LoadBalancingEqualsTransformersWithAndWithoutTheMask) {
  RouterLosses t;
  EXPECT_NEAR(t.loss("lb", t.batch(false)), t.reference("lb_unmasked"), 1e-5);
  EXPECT_NEAR(t.loss("lb", t.batch(true)), t.reference("lb_masked"), 1e-5);
  EXPECT_NEAR(t.loss("lb", t.batch(true)), t.reference("lb_mixtral_masked"), 1e-5);
  EXPECT_GT(std::abs(t.reference("lb_masked") - t.reference("lb_unmasked")), 1e-4) << "the fixture's mask must matter";
}

TEST(RouterLosses, ZLossEqualsTransformersOverAllLayersAndEachLayer) {
  RouterLosses t;
  EXPECT_NEAR(t.loss("z", t.batch(false)), t.reference("z_loss"), 1e-5);
  for (int layer = 0; layer < 3; ++layer) {
    moelab::ObjectiveBatch one = t.batch(false);
    one.routers = {one.routers[layer]};
    EXPECT_NEAR(t.loss("z", one), t.reference("z_loss_per_layer." + std::to_string(layer)), 1e-5) << "layer " << layer;
  }
}

TEST(RouterLosses, ZLossLeavesPaddedPositionsOut) {
  RouterLosses t;
  moelab::ObjectiveBatch b = t.batch(true);
  torch::Tensor flat_mask = b.attention_mask.reshape(-1);
  auto mask = flat_mask.accessor<int64_t, 1>();
  double sum = 0;
  long long count = 0;
  for (const auto& trace : b.routers) {
    torch::Tensor values = trace.logits.detach();
    auto logits = values.accessor<float, 2>();
    for (long long n = 0; n < 12; ++n) {
      if (mask[n] == 0) continue;
      double z = 0;
      for (long long e = 0; e < 8; ++e) z += std::exp(static_cast<double>(logits[n][e]));
      sum += std::pow(std::log(z), 2);
      ++count;
    }
  }
  EXPECT_EQ(count, 3 * 10);
  EXPECT_NEAR(t.loss("z", b), sum / static_cast<double>(count), 1e-5);
}

TEST(RouterLosses, GradientsOnTheRouterLogitsMatchFiniteDifferences) {
  RouterLosses t;
  for (const char* id : {"z", "lb"}) {
    auto objective = t.run->make<moelab::Objective>(id);
    moelab::ObjectiveBatch b = t.batch(true, torch::kFloat64);
    objective->compute(b).total.backward();
    for (int layer : {0, 2}) {
      torch::Tensor analytic = b.routers[layer].logits.grad();
      for (long long element : {0LL, 13LL, 50LL, 95LL}) {
        auto at = [&](double delta) {
          moelab::ObjectiveBatch moved = b;
          moved.routers[layer].logits = b.routers[layer].logits.detach().clone();
          moved.routers[layer].logits.view(-1)[element] += delta;
          return objective->compute(moved).total.item<double>();
        };
        const double h = 1e-6, numeric = (at(h) - at(-h)) / (2 * h);
        EXPECT_NEAR(analytic.view(-1)[element].item<double>(), numeric, 1e-7) << id << " layer " << layer << " element " << element;
      }
    }
  }
}

TEST(RouterLosses, AddToJoinsAnotherObjectivesLossAndNeeds) {
  RouterLosses t("[both]\nplugin = \"load_balancing\"\ncoef = 0.25\nadd_to = \"zt\"\n[zt]\nplugin = \"z_loss\"\ncoef = 0.5\nadd_to = \"task\"\n");
  auto both = t.run->make<moelab::Objective>("both");
  EXPECT_TRUE(both->needs().choices && both->needs().router_logits);
  EXPECT_FALSE(both->needs().token_loss || both->needs().token_logits || both->needs().hidden_states);
  moelab::ObjectiveBatch b = t.batch(true);
  b.last_logits = torch::tensor({{0.0f, 1.0f, 2.0f}, {1.0f, 0.5f, -1.0f}});
  b.choice_ids = torch::tensor({{0, 1, 2}, {0, 1, 2}});
  b.labels = torch::tensor({2, 0});
  moelab::LossTerms terms = both->compute(b);
  const double task = t.loss("task", b), z = t.loss("z", b), lb = t.loss("lb", b);
  EXPECT_NEAR(terms.total.item<double>(), task + 0.5 * z + 0.25 * lb, 1e-6);
  std::vector<std::string> names;
  for (const auto& [name, value] : terms.parts) names.push_back(name);
  EXPECT_THAT(names, testing::ElementsAre("task", "train_accuracy", "z_loss", "load_balancing"));
  EXPECT_NEAR(terms.parts[2].second.item<double>(), z, 1e-6);
  EXPECT_NEAR(terms.parts[3].second.item<double>(), lb, 1e-6);
}

}  // namespace
