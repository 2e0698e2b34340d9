// router_geometry: identical layers have similarity 1 and zero principal angles; orthogonal row
// spaces are 90 degrees apart; the effective rank of a flat spectrum is its size; CKA takes the hidden
// dimensions as samples, and its figure says so.
#include "moelab/moelab.h"
#include "moelab/lib/files.h"
#include "test_run.h"

#include <gmock/gmock.h>

namespace {

nlohmann::json analyze(const moelab::test::TempDir& dir, std::vector<torch::Tensor> routers) {
  moelab::RoutingRecords records;
  records.routers = std::move(routers);
  return moelab::test::analyze_with(dir, "router_geometry", records);
}

TEST(RouterGeometry, IdenticalLayersAreSimilarWithZeroAngles) {
  moelab::test::TempDir dir;
  torch::manual_seed(0);
  torch::Tensor w = torch::randn({4, 16});
  auto out = analyze(dir, {w, w.clone()});
  const auto& pair = out["pairs"][0];
  EXPECT_NEAR(pair["mean_row_cosine"].get<double>(), 1.0, 1e-6);
  EXPECT_NEAR(pair["cka"].get<double>(), 1.0, 1e-6);
  EXPECT_NEAR(pair["max_principal_angle_deg"].get<double>(), 0.0, 1e-3);
  EXPECT_TRUE(std::filesystem::exists(dir.path() / "router_spectra.csv"));
}

TEST(RouterGeometry, OrthogonalRowSpacesAreNinetyDegreesApartAndFlatSpectraHaveFullEffectiveRank) {
  moelab::test::TempDir dir;
  torch::Tensor eye = torch::eye(8);
  auto out = analyze(dir, {eye.narrow(0, 0, 4), eye.narrow(0, 4, 4)});
  EXPECT_NEAR(out["pairs"][0]["mean_principal_angle_deg"].get<double>(), 90.0, 1e-6);
  EXPECT_NEAR(out["pairs"][0]["mean_row_cosine"].get<double>(), 0.0, 1e-12);
  EXPECT_NEAR(out["layers"][0]["effective_rank"].get<double>(), 4.0, 1e-9);
}

// The same router with its experts renumbered: matched rows no longer match, but CKA over the hidden
// dimensions (experts are features) is still 1. With experts as samples it would not be.
TEST(RouterGeometry, CkaTakesHiddenDimensionsAsSamplesSoExpertOrderDoesNotMatter) {
  moelab::test::TempDir dir;
  torch::manual_seed(1);
  torch::Tensor w = torch::randn({6, 32});
  torch::Tensor renumbered = w.index_select(0, torch::tensor({3, 5, 0, 1, 4, 2}, torch::kInt64));
  auto out = analyze(dir, {w, 2.5 * renumbered});
  EXPECT_NEAR(out["pairs"][0]["cka"].get<double>(), 1.0, 1e-9);
  EXPECT_LT(out["pairs"][0]["mean_row_cosine"].get<double>(), 0.5);
  // A rotation of the hidden space is a change of the samples themselves: CKA drops.
  torch::Tensor rotation = std::get<0>(torch::linalg_qr(torch::randn({32, 32})));
  EXPECT_LT(analyze(dir, {w, w.matmul(rotation)})["pairs"][0]["cka"].get<double>(), 0.9);
}

TEST(RouterGeometry, CkaFigureNamesItsSamplesAndAxes) {
  moelab::test::TempDir dir;
  torch::manual_seed(2);
  auto out = analyze(dir, {torch::randn({4, 16}), torch::randn({4, 16}), torch::randn({4, 16})});
  nlohmann::json cka;
  for (const auto& figure : out["figures"])
    if (figure["file"] == "cka.png") cka = figure;
  ASSERT_FALSE(cka.is_null());
  EXPECT_THAT(cka["caption"].get<std::string>(), testing::HasSubstr("the samples are the hidden dimensions"));
  EXPECT_THAT(cka["caption"].get<std::string>(), testing::Not(testing::HasSubstr("experts as samples")));
  const std::string script = moelab::read_file(dir.path() / "cka.gp");
  EXPECT_THAT(script, testing::HasSubstr("set title 'Router similarity: linear CKA over hidden dimensions'"));
  EXPECT_THAT(script, testing::HasSubstr("set xlabel 'decoder layer (MoE layers only)'\nset ylabel 'decoder layer (MoE layers only)'"));
  EXPECT_THAT(script, testing::HasSubstr("set cblabel 'linear CKA of W_l^T and W_m^T'"));
}

// Layers are named by their decoder layer index in the JSON, the CSV and the figures' ticks, as in the logs.
TEST(RouterGeometry, LayersAreNamedByTheirDecoderLayerIndex) {
  moelab::test::TempDir dir;
  torch::manual_seed(3);
  moelab::RoutingRecords records;
  records.routers = {torch::randn({4, 16}), torch::randn({4, 16}), torch::randn({4, 16})};
  records.layers = {1, 3, 5};
  auto out = moelab::test::analyze_with(dir, "router_geometry", records);
  EXPECT_EQ(out["layers"][2]["layer"], 5);
  EXPECT_EQ(out["pairs"][0]["layer_a"], 1);
  EXPECT_EQ(out["pairs"][0]["layer_b"], 3);
  EXPECT_THAT(moelab::read_file(dir.path() / "router_similarity.csv"), testing::HasSubstr("\n3,5,"));
  EXPECT_THAT(moelab::read_file(dir.path() / "router_spectra.csv"), testing::HasSubstr("\n5,0,"));
  const std::string script = moelab::read_file(dir.path() / "cka.gp");
  EXPECT_THAT(script, testing::HasSubstr("set xtics ('1' 0, '3' 1, '5' 2)\nset ytics ('1' 0, '3' 1, '5' 2)"));
}

}  // namespace
