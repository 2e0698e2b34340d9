// Sampling helpers and the plain sampler: counter-based uniforms, greedy and seeded draws through the
// pick chain, the token history reaching repetition_penalty, and the paired statistics of evaluate and generate.
#include "moe_model.h"
#include "moelab/moelab.h"
#include "moelab/lib/paired.h"
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

TEST(PlainSampler, DefaultPickIsGreedyAndSeedsReproduce) {
  moelab::test::TempDir dir;
  auto model = moelab::load_model(std::filesystem::path(MOELAB_BINARY_DIR) / "models" / "tiny-olmoe", torch::kCPU, torch::kFloat32);
  auto run = moelab::test::start_run(dir, "stages = []\n[cold]\nplugin = \"plain\"\n[hot]\nplugin = \"plain\"\npick = [\"temperature\", \"draw\"]\n"
                                          "temperature = 1.5\n");
  torch::Tensor tokens = torch::tensor({{5}, {9}, {11}}, torch::kInt64);
  auto next = [&](const std::string& id, std::int64_t step) {
    moelab::KVCache cache;
    torch::Tensor picked = run->make<moelab::Sampler>(id)->next(*model, tokens, cache, step);
    EXPECT_EQ(cache.length(), 1);
    return picked;
  };
  EXPECT_TRUE(torch::equal(next("cold", 0), model->forward(tokens, {}).select(1, 0).argmax(-1)));
  EXPECT_TRUE(torch::equal(next("hot", 3), next("hot", 3)));
  std::set<std::int64_t> seen;
  for (int step = 0; step < 20; ++step) seen.insert(next("hot", step)[0].item<std::int64_t>());
  EXPECT_GT(seen.size(), 1u);
}

// A penalty so large that any token the row has seen loses to every unseen token with a positive logit.
TEST(PlainSampler, RepetitionPenaltyReadsEachRowsHistory) {
  moelab::test::TempDir dir;
  auto model = moelab::load_model(std::filesystem::path(MOELAB_BINARY_DIR) / "models" / "tiny-olmoe", torch::kCPU, torch::kFloat32);
  auto run = moelab::test::start_run(dir, "stages = []\n[s]\nplugin = \"plain\"\npick = [\"repetition_penalty\", \"greedy\"]\n"
                                          "repetition_penalty = 1e6\n");
  torch::Tensor tokens = torch::tensor({{5}, {9}}, torch::kInt64);
  torch::Tensor logits = model->forward(tokens, {}).select(1, 0);
  torch::Tensor greedy = logits.argmax(-1);
  ASSERT_GT(logits[0][greedy[0]].item<float>(), 0.0f);
  torch::Tensor history = torch::stack({torch::stack({tokens[0][0], greedy[0]}), torch::full({2}, -1, torch::kInt64)});
  moelab::KVCache cache;
  torch::Tensor picked = run->make<moelab::Sampler>("s")->next(*model, tokens, cache, 0, history);
  torch::Tensor penalized = logits[0].clone();
  for (std::int64_t seen : {tokens[0][0].item<std::int64_t>(), greedy[0].item<std::int64_t>()})
    penalized[seen] = penalized[seen].item<float>() > 0 ? penalized[seen] / 1e6 : penalized[seen] * 1e6;
  EXPECT_EQ(picked[0].item<std::int64_t>(), penalized.argmax().item<std::int64_t>());
  EXPECT_NE(picked[0].item<std::int64_t>(), greedy[0].item<std::int64_t>());
  EXPECT_EQ(picked[1].item<std::int64_t>(), greedy[1].item<std::int64_t>());  // padding penalizes nothing
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
