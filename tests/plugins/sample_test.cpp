// Sampling helpers and the sample plugin: counter-based uniforms, nucleus draws at the rates the
// distribution implies, and the paired statistics shared by evaluate and generate.
#include "moe_model.h"
#include "moelab/moelab.h"
#include "test_run.h"

namespace {

TEST(CounterUniform, ReproducibleOpenIntervalAndRoughlyUniform) {
  torch::Tensor a = moelab::counter_uniform(7, 0, {100000}, torch::kCPU), b = moelab::counter_uniform(7, 0, {100000}, torch::kCPU);
  EXPECT_TRUE(torch::equal(a, b));
  EXPECT_FALSE(torch::equal(a, moelab::counter_uniform(8, 0, {100000}, torch::kCPU)));
  EXPECT_GT(a.min().item<double>(), 0.0);
  EXPECT_LT(a.max().item<double>(), 1.0);
  EXPECT_NEAR(a.mean().item<double>(), 0.5, 0.005);
  EXPECT_NEAR(a.lt(0.25).to(torch::kFloat64).mean().item<double>(), 0.25, 0.005);
}

TEST(PickToken, GreedyNucleusAndDrawRates) {
  torch::Tensor probs = torch::tensor({0.6, 0.3, 0.1}, torch::kFloat64).expand({20000, 3});
  torch::Tensor u = moelab::counter_uniform(1, 0, {20000}, torch::kCPU);
  EXPECT_TRUE(moelab::pick_token(probs, 0.0, 1.0, u).eq(0).all().item<bool>());    // temperature 0: argmax
  EXPECT_TRUE(moelab::pick_token(probs, 1.0, 0.5, u).eq(0).all().item<bool>());    // nucleus 0.5 holds only the top token
  torch::Tensor drawn = moelab::pick_token(probs, 1.0, 1.0, u);
  EXPECT_NEAR(drawn.eq(1).to(torch::kFloat64).mean().item<double>(), 0.3, 0.015);
  EXPECT_NEAR(drawn.eq(2).to(torch::kFloat64).mean().item<double>(), 0.1, 0.01);
  torch::Tensor nucleus = moelab::pick_token(probs, 1.0, 0.8, u);  // keeps 0.6 and 0.3, renormalized
  EXPECT_TRUE(nucleus.ne(2).all().item<bool>());
  EXPECT_NEAR(nucleus.eq(1).to(torch::kFloat64).mean().item<double>(), 1.0 / 3, 0.015);
}

TEST(SampleSampler, TemperatureZeroIsGreedyAndSeedsReproduce) {
  moelab::test::TempDir dir;
  auto model = moelab::load_model(std::filesystem::path(MOELAB_BINARY_DIR) / "models" / "tiny-olmoe", torch::kCPU, torch::kFloat32);
  auto run = moelab::test::start_run(dir, "stages = []\n[cold]\nplugin = \"sample\"\ntemperature = 0.0\n[hot]\nplugin = \"sample\"\ntemperature = 1.5\n");
  torch::Tensor tokens = torch::tensor({{5}, {9}, {11}}, torch::kInt64);
  auto next = [&](const std::string& id, std::int64_t step) {
    moelab::KVCache cache;
    return run->make<moelab::Sampler>(id)->next(*model, tokens, cache, step);
  };
  EXPECT_TRUE(torch::equal(next("cold", 0), model->forward(tokens, {}).select(1, 0).argmax(-1)));
  EXPECT_TRUE(torch::equal(next("hot", 3), next("hot", 3)));
  std::set<std::int64_t> seen;
  for (int step = 0; step < 20; ++step) seen.insert(next("hot", step)[0].item<std::int64_t>());
  EXPECT_GT(seen.size(), 1u);
}

TEST(Paired, McNemarAndBootstrapOnKnownScores) {
  EXPECT_NEAR(moelab::mcnemar_exact(0, 5), 2.0 / 32, 1e-12);
  EXPECT_NEAR(moelab::mcnemar_exact(3, 3), 1.0, 1e-12);
  std::vector<double> a(40, 0.0), b(40, 0.0);
  for (int i = 0; i < 10; ++i) b[i] = 1.0;  // b right on 10 more items
  auto p = moelab::paired_comparison(a, b, 1);
  EXPECT_NEAR(p["difference"].get<double>(), 0.25, 1e-12);
  EXPECT_EQ(p["b_only"], 10);
  EXPECT_EQ(p["a_only"], 0);
  EXPECT_LT(p["bootstrap_95"][0].get<double>(), 0.25);
  EXPECT_GT(p["bootstrap_95"][0].get<double>(), 0.0);
  EXPECT_NEAR(p["mcnemar_p"].get<double>(), 2.0 / 1024, 1e-12);
}

}  // namespace
