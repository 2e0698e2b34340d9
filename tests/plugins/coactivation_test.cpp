// coactivation against hand-computed values: identical layers are perfectly predictable and
// correlated; independent layers are not; lift over independence is 1 for independent choices and large
// for forced co-selection; the figure says which triangle holds what, each quantity on its own scale.
#include "moelab/moelab.h"
#include "moelab/lib/files.h"
#include "test_run.h"

#include <gmock/gmock.h>

#include <algorithm>
#include <fstream>
#include <sstream>

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

// The lift column of lift_0_1.csv: [E, E], NaN where it is empty (an expert never chosen).
torch::Tensor read_lift(const moelab::test::TempDir& dir, long long experts) {
  std::ifstream in(dir.path() / "lift_0_1.csv");
  std::string line;
  std::getline(in, line);
  EXPECT_EQ(line, "expert_a,expert_b,observed,expected,lift");
  torch::Tensor lift = torch::full({experts, experts}, std::nan(""), torch::kFloat64);
  while (std::getline(in, line)) {
    std::vector<std::string> f;
    std::stringstream fields(line);
    for (std::string x; std::getline(fields, x, ',');) f.push_back(x);
    if (f.size() == 5) lift[std::stoll(f[0])][std::stoll(f[1])] = std::stod(f[4]);
  }
  return lift;
}

// Two layers drawing k = 2 distinct experts each, independently, from skewed distributions: every
// expert pair's lift is 1 up to sampling noise (the baseline follows the uneven marginals), so the KL
// from independence is about 0.
TEST(Coactivation, IndependentTopKChoicesHaveLiftOne) {
  moelab::test::TempDir dir;
  torch::manual_seed(4);
  const long long n = 40000;
  torch::Tensor skew = torch::tensor({8.0, 4.0, 4.0, 2.0, 2.0, 1.0, 1.0, 1.0}).repeat({n, 1});
  torch::Tensor ids = torch::stack({torch::multinomial(skew, 2, false), torch::multinomial(skew, 2, false)}, 1);
  auto out = analyze(dir, ids, 8);
  const auto& pair = out["pairs"][0];
  EXPECT_LT(pair["lift_information_bits"].get<double>(), 0.005);
  EXPECT_LT(pair["max_lift"].get<double>(), 1.25);
  torch::Tensor lift = read_lift(dir, 8);
  EXPECT_FALSE(lift.isnan().any().item<bool>());
  EXPECT_LT((lift - 1).abs().max().item<double>(), 0.25);
  EXPECT_THAT(out["expected"].get<std::string>(), testing::HasSubstr("n_i(l) * n_j(m) / N"));
}

// Layer 1 always picks the expert after layer 0's (k = 1): the pair (i, i + 1) is seen n_i times against
// n_i * n_i / N expected (layer 1 picks i + 1 as often as layer 0 picks i), a lift of N / n_i (about 8
// with 8 experts); every other pair never occurs.
// The KL from independence is then the entropy of layer 0's choice, about 3 bits.
TEST(Coactivation, ForcedCoSelectionHasLiftFarAboveOne) {
  moelab::test::TempDir dir;
  torch::manual_seed(5);
  torch::Tensor first = torch::randint(0, 8, {4000, 1}, torch::kInt64);
  torch::Tensor ids = torch::stack({first, (first + 1).remainder(8)}, 1);  // [N, 2, 1]
  auto out = analyze(dir, ids, 8);
  torch::Tensor counts = torch::bincount(first.reshape(-1), {}, 8).to(torch::kFloat64);  // n_i at layer 0 = n_(i+1) at layer 1
  torch::Tensor lift = read_lift(dir, 8);
  for (long long i = 0; i < 8; ++i) EXPECT_NEAR(lift[i][(i + 1) % 8].item<double>(), 4000 / counts[i].item<double>(), 1e-9);
  EXPECT_EQ((lift > 0).sum().item<int64_t>(), 8);
  const auto& pair = out["pairs"][0];
  EXPECT_GT(pair["max_lift"].get<double>(), 6.0);
  EXPECT_EQ(pair["top_lift"].size(), 5u);
  EXPECT_EQ((pair["top_lift"][0]["expert_b"].get<long long>() - pair["top_lift"][0]["expert_a"].get<long long>() + 8) % 8, 1);
  torch::Tensor p = counts / 4000;
  EXPECT_NEAR(pair["lift_information_bits"].get<double>(), -(p * p.log2()).sum().item<double>(), 1e-9);
}

// Predictability (rows l < columns m), correlation and the KL from independence are three panels, each
// with its own labelled colour box, and the caption places the triangle where gnuplot draws it.
TEST(Coactivation, SummaryFigureHasOnePanelAndColourBoxPerQuantity) {
  moelab::test::TempDir dir;
  torch::manual_seed(6);
  auto out = analyze(dir, torch::randint(0, 4, {64, 3, 1}, torch::kInt64), 4);
  nlohmann::json summary;
  for (const auto& figure : out["figures"])
    if (figure["file"] == "pair_summary.png") summary = figure;
  ASSERT_FALSE(summary.is_null());
  const std::string caption = summary["caption"];
  EXPECT_THAT(caption, testing::HasSubstr("drawn at x = m, y = l (row 0 at the bottom), so only the triangle below the diagonal"));
  EXPECT_THAT(caption, testing::Not(testing::HasSubstr("bove the diagonal")));
  const std::string script = moelab::read_file(dir.path() / "pair_summary.gp");
  EXPECT_THAT(script, testing::HasSubstr("set multiplot layout 1,3"));
  EXPECT_THAT(script, testing::HasSubstr("set xlabel 'later decoder layer m'\nset ylabel 'earlier decoder layer l'\nset xtics ('0' 0, '1' 1, '2' 2)"));
  EXPECT_THAT(script, testing::HasSubstr("set cblabel 'mean over i of max_j P(j at m | i at l)'"));
  EXPECT_THAT(script, testing::HasSubstr("set cblabel 'mean |Pearson correlation| of the expert indicators'"));
  EXPECT_THAT(script, testing::HasSubstr("set cblabel 'KL(observed || independent co-activation), bits'"));
  for (int i = 0; i < 3; ++i) EXPECT_THAT(script, testing::HasSubstr(fmt::format("'pair_summary.dat' index {} matrix with image", i)));
  // The predictability panel holds layer pairs (0,1), (0,2), (1,2) at row l, column m; the rest is NaN.
  const std::string data = moelab::read_file(dir.path() / "pair_summary.dat");
  const std::string first_block = data.substr(0, data.find("\n\n"));
  EXPECT_EQ(std::count(first_block.begin(), first_block.end(), 'N'), 2 * 6);  // six "NaN"
  EXPECT_EQ(first_block.substr(0, 4), "NaN ");
  EXPECT_TRUE(std::filesystem::exists(dir.path() / "lift_first_pair.gp"));
}

}  // namespace
