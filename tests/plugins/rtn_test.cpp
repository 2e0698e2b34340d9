// rtn: levels per group, error bound, selection by name, and weights left alone when not matched.
#include "moelab/moelab.h"
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
      double step = (w.max() - w.min()).item<double>() / 7;
      EXPECT_LE((q - w).abs().max().item<double>(), step * 0.5 + step * 0.5 + 1e-6);  // rounding plus zero-point rounding
    }
  EXPECT_GT(report["rmse"].get<double>(), 0.0);
}

TEST(Rtn, RejectsImpossibleBitWidthsWhenTheConfigIsChecked) {
  moelab::test::TempDir dir;
  EXPECT_THAT(moelab::test::error_of([&] { moelab::test::start_run(dir, "stages = []\n[q]\nplugin = \"rtn\"\nbits = 1\n"); }),
              testing::HasSubstr("experiment.toml:5: key 'bits' must be within [2, 8], found integer 1"));
}

}  // namespace
