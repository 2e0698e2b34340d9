// expert_usage against hand-computed load-balance statistics.
#include "moelab/moelab.h"
#include "test_run.h"

namespace {

nlohmann::json analyze(const moelab::test::TempDir& dir, const torch::Tensor& ids, long long experts) {
  return moelab::test::analyze_with(dir, "expert_usage", {ids, torch::ones(ids.sizes()), experts});
}

TEST(ExpertUsage, UniformRoutingIsPerfectlyBalanced) {
  moelab::test::TempDir dir;
  // 8 tokens, 1 layer, top-2 over 4 experts: every expert chosen 4 times.
  torch::Tensor ids = torch::tensor({0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3}, torch::kInt64).reshape({8, 1, 2});
  auto out = analyze(dir, ids, 4);
  EXPECT_NEAR(out["layers"][0]["cv"].get<double>(), 0.0, 1e-12);
  EXPECT_NEAR(out["layers"][0]["max_over_mean"].get<double>(), 1.0, 1e-12);
  EXPECT_NEAR(out["layers"][0]["normalized_entropy"].get<double>(), 1.0, 1e-12);
  EXPECT_TRUE(std::filesystem::exists(dir.path() / "expert_usage.csv"));
}

TEST(ExpertUsage, OneExpertTakingEverythingIsMaximallyUnbalanced) {
  moelab::test::TempDir dir;
  torch::Tensor ids = torch::full({5, 2, 1}, 3, torch::kInt64);
  auto out = analyze(dir, ids, 4);
  for (int l = 0; l < 2; ++l) {
    // shares (0, 0, 0, 1): mean 1/4, population std sqrt(3)/4, so CV = sqrt(3); max/mean = 4; entropy 0.
    EXPECT_NEAR(out["layers"][l]["cv"].get<double>(), std::sqrt(3.0), 1e-12);
    EXPECT_NEAR(out["layers"][l]["max_over_mean"].get<double>(), 4.0, 1e-12);
    EXPECT_NEAR(out["layers"][l]["normalized_entropy"].get<double>(), 0.0, 1e-12);
  }
}

}  // namespace
