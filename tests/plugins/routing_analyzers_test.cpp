// routing_entropy, specialization, routing_diff and router_alignment against hand-computed values on
// synthetic routing records; every analyzer's figures must be real PNG files.
#include "moelab/moelab.h"
#include "moelab/lib/files.h"
#include "moelab/lib/plot.h"
#include "test_run.h"

#include <gmock/gmock.h>

#include <fstream>

namespace {

namespace fs = std::filesystem;
using moelab::test::TempDir;

// Each listed figure exists, starts with the PNG signature and is more than a header.
void expect_png_figures(const TempDir& dir, const nlohmann::json& out) {
  ASSERT_TRUE(out.contains("figures"));
  ASSERT_FALSE(out["figures"].empty());
  for (const auto& figure : out["figures"]) {
    fs::path png = dir.path() / figure["file"].get<std::string>();
    ASSERT_TRUE(fs::exists(png)) << png;
    std::ifstream in(png, std::ios::binary);
    char signature[8];
    in.read(signature, 8);
    EXPECT_EQ(std::string(signature, 8), std::string("\x89PNG\r\n\x1a\n", 8)) << png;
    EXPECT_GT(fs::file_size(png), 2000u) << png;
    EXPECT_FALSE(figure["caption"].get<std::string>().empty());
  }
}

TEST(RoutingEntropy, UniformRoutingIsMaximalAndOneHotIsZero) {
  TempDir dir;
  const long long experts = 4;
  // Layer 0: uniform softmax for every token; layer 1: all mass on one expert.
  torch::Tensor probs = torch::zeros({6, 2, experts}, torch::kFloat64);
  probs.select(1, 0).fill_(0.25);
  probs.select(1, 1).select(1, 2).fill_(1.0);
  moelab::RoutingRecords records{torch::zeros({6, 2, 1}, torch::kInt64), torch::ones({6, 2, 1}), experts};
  records.probs = probs;
  auto out = moelab::test::analyze_with(dir, "routing_entropy", records);
  EXPECT_NEAR(out["layers"][0]["mean_normalized_entropy"].get<double>(), 1.0, 1e-9);
  EXPECT_NEAR(out["layers"][0]["mean_margin"].get<double>(), 0.0, 1e-9);
  EXPECT_NEAR(out["layers"][0]["near_uniform_share"].get<double>(), 1.0, 1e-12);
  EXPECT_NEAR(out["layers"][1]["mean_normalized_entropy"].get<double>(), 0.0, 1e-9);
  EXPECT_NEAR(out["layers"][1]["mean_margin"].get<double>(), 1.0, 1e-9);
  expect_png_figures(dir, out);
}

// Figures number layers by their decoder layer index, as the JSON and the logs do (a model whose MoE layers
// are 1, 3 and 5 shows 1, 3, 5 on the axis, not 0, 1, 2).
TEST(RoutingFigures, LayerAxesShowDecoderLayerIndices) {
  TempDir dir;
  torch::manual_seed(5);
  moelab::RoutingRecords records{torch::randint(0, 4, {16, 3, 1}, torch::kInt64), torch::ones({16, 3, 1}), 4};
  records.probs = torch::softmax(torch::randn({16, 3, 4}, torch::kFloat64), -1);
  records.layers = {1, 3, 5};
  for (const std::string plugin : {"routing_entropy", "expert_usage"}) {
    TempDir out_dir;
    auto out = moelab::test::analyze_with(out_dir, plugin, records);
    if (out.contains("layers")) EXPECT_EQ(out["layers"][2]["layer"], 5) << plugin;
    const std::string script = moelab::read_file(out_dir.path() / (out["figures"][0]["file"].get<std::string>().replace(
                                                                       out["figures"][0]["file"].get<std::string>().size() - 4, 4, ".gp")));
    EXPECT_THAT(script, testing::HasSubstr("tics ('1' 0, '3' 1, '5' 2)")) << plugin;
    EXPECT_THAT(script, testing::HasSubstr("'decoder layer'")) << plugin;
  }
}

TEST(RoutingEntropy, ReadsRecordedEntropyAndMarginWithoutProbabilities) {
  TempDir dir;
  moelab::RoutingRecords records{torch::zeros({2, 1, 1}, torch::kInt64), torch::ones({2, 1, 1}), 8};
  // p = (1/2, 1/2, 0...): entropy log 2, normalized log 2 / log 8 = 1/3; margin 0.
  records.entropy = torch::full({2, 1}, std::log(2.0));
  records.margin = torch::zeros({2, 1});
  auto out = moelab::test::analyze_with(dir, "routing_entropy", records);
  EXPECT_NEAR(out["mean_normalized_entropy"].get<double>(), 1.0 / 3, 1e-6);
  moelab::RoutingRecords bare{torch::zeros({2, 1, 1}, torch::kInt64), torch::ones({2, 1, 1}), 8};
  EXPECT_THAT(moelab::test::error_of([&] { moelab::test::analyze_with(dir, "routing_entropy", bare); }), testing::HasSubstr("neither per-token entropy"));
}

TEST(Specialization, KlOfEachSetFromOverallUsage) {
  TempDir dir;
  // One layer, top-1 over 2 experts. Set "a" (2 tokens) always uses expert 0; set "b" (2 tokens) uses 0 and 1.
  // Overall usage (3/4, 1/4); KL(a) = log(4/3); KL(b) = 1/2 log(2/3) + 1/2 log(2).
  moelab::RoutingRecords records{torch::tensor({0, 0, 0, 1}, torch::kInt64).reshape({4, 1, 1}), torch::ones({4, 1, 1}), 2};
  records.set_ids = torch::tensor({0, 0, 1, 1}, torch::kInt64);
  records.set_names = {"a", "b"};
  auto out = moelab::test::analyze_with(dir, "specialization", records, "top_experts = 1\n");
  EXPECT_NEAR(out["sets"]["a"]["mean_kl"].get<double>(), std::log(4.0 / 3.0), 1e-12);
  EXPECT_NEAR(out["sets"]["b"]["mean_kl"].get<double>(), 0.5 * std::log(2.0 / 3.0) + 0.5 * std::log(2.0), 1e-12);
  // Set b's top expert by lift is expert 1 (share 1/2 against 1/4 overall: lift 2).
  EXPECT_EQ(out["sets"]["b"]["layers"][0]["top_experts"][0]["expert"].get<long long>(), 1);
  EXPECT_NEAR(out["sets"]["b"]["layers"][0]["top_experts"][0]["lift"].get<double>(), 2.0, 1e-12);
  expect_png_figures(dir, out);
  records.set_names = {"a"};
  EXPECT_THAT(moelab::test::error_of([&] { moelab::test::analyze_with(dir, "specialization", records); }), testing::HasSubstr("at least two text sets"));
}

TEST(RoutingDiff, ChangedSetsJaccardAndUsageShift) {
  TempDir dir;
  // 4 tokens, 1 layer, top-2 over 4 experts. Token 0 and 1 keep their sets (order may differ); token 2
  // swaps one expert; token 3 swaps both.
  torch::Tensor a = torch::tensor({0, 1, 2, 3, 0, 1, 0, 1}, torch::kInt64).reshape({4, 1, 2});
  torch::Tensor b = torch::tensor({1, 0, 2, 3, 0, 2, 2, 3}, torch::kInt64).reshape({4, 1, 2});
  torch::Tensor weights = torch::tensor({0.6, 0.4}).repeat({4, 1, 1});
  moelab::RoutingRecords first{a, weights, 4}, second{b, weights, 4};
  first.compare = &second;
  auto out = moelab::test::analyze_with(dir, "routing_diff", first);
  EXPECT_NEAR(out["changed_topk_share"].get<double>(), 0.5, 1e-12);
  // Jaccard: 1, 1, 1/3 ({0,1} vs {0,2}), 0.
  EXPECT_NEAR(out["layers"][0]["mean_jaccard"].get<double>(), (1 + 1 + 1.0 / 3 + 0) / 4, 1e-12);
  // Top-1 (weight 0.6, first slot): 0->1 changed, 2->2, 0->0, 0->2 changed.
  EXPECT_NEAR(out["changed_top1_share"].get<double>(), 0.5, 1e-12);
  // Usage a: experts (3, 3, 1, 1)/8; b: (2, 1, 3, 2)/8; TV = 1/2 * (1+2+2+1)/8 = 3/8.
  EXPECT_NEAR(out["mean_usage_shift_tv"].get<double>(), 0.375, 1e-12);
  expect_png_figures(dir, out);
  EXPECT_THAT(moelab::test::error_of([&] { moelab::test::analyze_with(dir, "routing_diff", second); }), testing::HasSubstr("compare_with"));
}

TEST(RouterAlignment, RowInsideTheInputSubspaceIsZeroDegreesAndOrthogonalIsNinety) {
  TempDir dir;
  const long long hidden = 6, inter = 2;
  torch::Tensor eye = torch::eye(hidden, torch::kFloat64);
  moelab::ExpertWeights experts;
  // Expert 0 reads hidden directions 0, 1; expert 1 reads directions 2, 3 (gate and up alike).
  experts.gate = torch::stack({eye.narrow(0, 0, inter), eye.narrow(0, 2, inter)});
  experts.up = experts.gate.clone() * 2;
  experts.down = torch::zeros({2, hidden, inter});
  // Router row 0 lies in expert 0's span; row 1 is direction 5, orthogonal to expert 1's span.
  torch::Tensor router = torch::stack({eye[0] + eye[1], eye[5]});
  moelab::RoutingRecords records{torch::zeros({1, 1, 1}, torch::kInt64), torch::ones({1, 1, 1}), 2};
  records.routers = {router};
  records.experts = {experts};
  auto out = moelab::test::analyze_with(dir, "router_alignment", records, "rank = 2\n");
  EXPECT_NEAR(out["layers"][0]["min_angle_deg"].get<double>(), 0.0, 1e-4);
  EXPECT_NEAR(out["mean_angle_deg"].get<double>(), 45.0, 1e-4);  // (0 + 90) / 2
  EXPECT_NEAR(out["random_baseline_deg"].get<double>(), std::acos(std::sqrt(2.0 / 6.0)) * 180 / M_PI, 1e-9);
  expect_png_figures(dir, out);
}

TEST(RoutingFigures, UsageCoactivationAndGeometryFiguresRender) {
  TempDir dir;
  torch::manual_seed(1);
  torch::Tensor ids = torch::randint(0, 4, {32, 3, 1}, torch::kInt64);
  moelab::RoutingRecords records{ids, torch::ones(ids.sizes()), 4};
  records.routers = {torch::randn({4, 8}), torch::randn({4, 8}), torch::randn({4, 8})};
  for (const std::string plugin : {"expert_usage", "coactivation", "router_geometry"}) {
    TempDir sub;
    expect_png_figures(sub, moelab::test::analyze_with(sub, plugin, records));
  }
}

}  // namespace

namespace {

TEST(RoutingFigures, WithoutGnuplotTheDataAndScriptStayAndTheFigureSaysItWasNotRendered) {
  TempDir dir;
  const std::string path = std::getenv("PATH") ? std::getenv("PATH") : "";
  setenv("PATH", "/nonexistent", 1);
  nlohmann::json figure = moelab::plot_heatmap(dir.path(), "m", torch::eye(3), {"t", "x", "y"}, "caption");
  setenv("PATH", path.c_str(), 1);
  EXPECT_FALSE(figure.value("rendered", true));
  EXPECT_TRUE(fs::exists(dir.path() / "m.gp"));
  EXPECT_TRUE(fs::exists(dir.path() / "m.dat"));
  EXPECT_FALSE(fs::exists(dir.path() / "m.png"));
  moelab::write_report_html(dir.path() / "index.html", "r", nlohmann::json::array({{{"title", "s"}, {"figures", {figure}}}}));
  EXPECT_THAT(moelab::read_file(dir.path() / "index.html"), testing::HasSubstr("not rendered"));
}

// gnuplot starts without a shell: a run folder named with a quote, a space or a $ needs no quoting.
TEST(RoutingFigures, RenderInAFolderWhosePathHasAQuoteASpaceAndADollar) {
  TempDir dir;
  const fs::path folder = dir.path() / "it's a $HOME run";
  nlohmann::json figure = moelab::plot_heatmap(folder, "m", torch::eye(3), {"t", "x", "y"}, "caption");
  EXPECT_TRUE(figure.value("rendered", true)) << figure;
  EXPECT_GT(fs::file_size(folder / "m.png"), 100u);
  EXPECT_FALSE(fs::exists(folder / "m.gnuplot.log"));
}

}  // namespace
