// router_geometry: identical layers have similarity 1 and zero principal angles; orthogonal row
// spaces are 90 degrees apart; the effective rank of a flat spectrum is its size.
#include "moelab/moelab.h"
#include "test_run.h"

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

}  // namespace
