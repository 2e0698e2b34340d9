// coactivation against hand-computed values: identical layers are perfectly predictable and
// correlated; independent layers are not.
#include "moelab/moelab.h"
#include "moelab/lib/files.h"
#include "test_run.h"

namespace {

nlohmann::json analyze(const moelab::test::TempDir& dir, const torch::Tensor& ids, long long experts) {
  return moelab::test::analyze_with(dir, "coactivation", {ids, torch::ones(ids.sizes()), experts});
}

TEST(Coactivation, IdenticalLayersArePerfectlyPredictableAndCorrelated) {
  moelab::test::TempDir dir;
  torch::Tensor layer = torch::tensor({0, 1, 2, 3, 1, 2, 0, 3}, torch::kInt64).reshape({8, 1, 1});
  auto out = analyze(dir, torch::cat({layer, layer}, 1), 4);
  ASSERT_EQ(out["pairs"].size(), 1u);
  EXPECT_NEAR(out["pairs"][0]["mean_max_conditional"].get<double>(), 1.0, 1e-12);
  // Correlation of identical indicator columns is 1 on the diagonal; off the diagonal, with each expert
  // used by 2 of 8 tokens and never together, corr = (0 - 1/16) / (3/16) = -1/3.
  EXPECT_NEAR(out["pairs"][0]["mean_abs_correlation"].get<double>(), (4 * 1.0 + 12 * (1.0 / 3)) / 16, 1e-12);
  EXPECT_TRUE(std::filesystem::exists(dir.path() / "conditional_0_1.csv"));
}

TEST(Coactivation, ConditionalProbabilitiesOfAKnownPairing) {
  moelab::test::TempDir dir;
  // Layer 0 expert 0 is followed by expert 1 twice and expert 2 twice; layer 0 expert 1 always by expert 3.
  torch::Tensor ids = torch::tensor({0, 1, 0, 1, 0, 2, 0, 2, 1, 3, 1, 3}, torch::kInt64).reshape({6, 2, 1});
  auto out = analyze(dir, ids, 4);
  EXPECT_NEAR(out["pairs"][0]["mean_max_conditional"].get<double>(), (0.5 + 1.0) / 2, 1e-12);
  std::string matrix = moelab::read_file(dir.path() / "conditional_0_1.csv");
  EXPECT_EQ(matrix.substr(0, matrix.find('\n')), "0,0.5,0.5,0");
}

TEST(Coactivation, IndependentLayersAreNeitherPredictableNorCorrelated) {
  moelab::test::TempDir dir;
  torch::manual_seed(0);
  torch::Tensor ids = torch::randint(0, 8, {20000, 2, 1}, torch::kInt64);
  auto out = analyze(dir, ids, 8);
  EXPECT_LT(out["pairs"][0]["mean_max_conditional"].get<double>(), 0.16);  // 1/8 plus sampling noise
  EXPECT_LT(out["pairs"][0]["mean_abs_correlation"].get<double>(), 0.03);
}

}  // namespace
