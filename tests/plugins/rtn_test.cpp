// rtn: levels per group, error bound, selection by name, weights left alone when not matched, 0 on
// every group's grid, and the quantize stage's INT rule bit for bit.
#include "moelab/moelab.h"
#include "moelab/lib/quant.h"
#include "test_run.h"

#include <gmock/gmock.h>

namespace {

TEST(Rtn, QuantizesMatchingWeightsToAtMostTwoToTheBitsLevelsPerGroup) {
  moelab::test::TempDir dir;
  auto run = moelab::test::start_run(dir, "stages = []\n[q]\nplugin = \"rtn\"\nbits = 3\ngroup_size = 8\n");
  torch::manual_seed(1);
  torch::Tensor expert = torch::randn({4, 20});  // 20 columns: the last group has 4
  torch::Tensor router = torch::randn({4, 20});
  torch::Tensor original_expert = expert.clone(), original_router = router.clone();
  moelab::NamedTensors weights = {{"model.layers.0.mlp.experts.0.up_proj.weight", expert},
                                  {"model.layers.0.mlp.gate.weight", router}};
  auto report = run->make<moelab::Transform>("q")->apply(weights);
  EXPECT_EQ(report["matrices"], 1);
  EXPECT_TRUE(torch::equal(router, original_router));
  for (long long r = 0; r < 4; ++r)
    for (long long start = 0; start < 20; start += 8) {
      long long len = std::min<long long>(8, 20 - start);
      torch::Tensor q = expert[r].narrow(0, start, len), w = original_expert[r].narrow(0, start, len);
      EXPECT_LE(std::get<0>(at::_unique(q)).numel(), 8);
      double step = (std::max(w.max().item<double>(), 0.0) - std::min(w.min().item<double>(), 0.0)) / 7;  // the range includes 0
      EXPECT_LE((q - w).abs().max().item<double>(), step * 0.5 * (1 + 1e-3));  // half a step (the scale is float16)
    }
  EXPECT_GT(report["rmse"].get<double>(), 0.0);
}

torch::Tensor apply_rtn(const std::string& settings, const torch::Tensor& w) {
  moelab::test::TempDir dir;
  auto run = moelab::test::start_run(dir, "stages = []\n[q]\nplugin = \"rtn\"\n" + settings);
  moelab::NamedTensors weights = {{"model.layers.0.mlp.experts.0.down_proj.weight", w.clone()}};
  run->make<moelab::Transform>("q")->apply(weights);
  return weights.at(0).second;
}

// A group of one sign is quantized on a grid from 0 to its largest magnitude: within half a step of that
// grid everywhere. A min/max range that leaves 0 out but a zero point clamped to the codes (the old rtn)
// clipped these groups to their spread: values near 10 came back below 1.
TEST(Rtn, GroupsOfOneSignAreQuantizedOnAGridThatIncludesZero) {
  torch::manual_seed(2);
  torch::Tensor w = torch::stack({10 + torch::rand({16}), -10 - torch::rand({16}), torch::linspace(0.5, 8.0, 16)});
  torch::Tensor q = apply_rtn("bits = 4\ngroup_size = 16\n", w);
  for (long long r = 0; r < 3; ++r) {
    const double step = w[r].abs().max().item<double>() / 15;
    EXPECT_LE((q[r] - w[r]).abs().max().item<double>(), step * 0.5 * (1 + 1e-3)) << "row " << r;
  }
  EXPECT_NEAR(q[2][15].item<double>(), 8.0, 8.0 / 1024);  // the top of the grid, not clipped (up to the float16 scale)
}

// rtn and the quantize stage share one rule: the same tensor gives the same values, including a tie
// (0.5 steps above 0 with an odd zero point: round(w / scale) + zero, not round(w / scale + zero)).
TEST(Rtn, MatchesTheQuantizeStagesIntFormatsBitForBit) {
  torch::manual_seed(3);
  torch::Tensor w = torch::randn({6, 64});
  w[1].narrow(0, 16, 16) = torch::rand({16}) + 3;  // one-signed groups
  w[2].narrow(0, 0, 16) = -torch::rand({16}) - 1;
  w[3].narrow(0, 0, 16) = torch::tensor({-1.0, 14.0, 0.5, 2.5, 4.5, 6.5, 1.0, 2.0, 3.0, 0.0, -0.5, 5.0, 7.0, 9.0, 11.0, 13.0});  // scale 1, zero 1
  for (const auto& [bits, format] : std::vector<std::pair<int, moelab::QuantFormat>>{{4, moelab::QuantFormat::int4}, {3, moelab::QuantFormat::int3}}) {
    const moelab::QuantSpec spec{format, 16};
    torch::Tensor expected = moelab::fake_quantize(w, moelab::fit_grids(w, spec), spec);
    torch::Tensor q = apply_rtn(fmt::format("bits = {}\ngroup_size = 16\n", bits), w);
    EXPECT_TRUE(torch::equal(q, expected)) << "bits " << bits << ": max difference " << (q - expected).abs().max().item<double>();
  }
  EXPECT_EQ(apply_rtn("bits = 4\ngroup_size = 16\n", w)[3][2].item<double>(), 0.0);  // the tie: code 1 = zero point
}

TEST(Rtn, RejectsImpossibleBitWidthsWhenTheConfigIsChecked) {
  moelab::test::TempDir dir;
  EXPECT_THAT(moelab::test::error_of([&] { moelab::test::start_run(dir, "stages = []\n[q]\nplugin = \"rtn\"\nbits = 1\n"); }),
              testing::HasSubstr("experiment.toml:5: key 'bits' must be within [2, 8], found integer 1"));
}

}  // namespace
