// The router rule by hand: every architecture's RouterSpec on logits whose scores are round numbers,
// and each architecture's config.json read into its spec (defaults and refused settings).
#include "architecture.h"
#include "route.h"
#include "test_run.h"

#include <gmock/gmock.h>
#include <torch/torch.h>

#include <fstream>

namespace {

namespace fs = std::filesystem;
using torch::Tensor;
using moelab::GroupScore;
using moelab::RouterSpec;
using moelab::Scoring;

const fs::path kFixtures = fs::path(MOELAB_SOURCE_DIR) / "tests" / "fixtures" / "models";

// Logits whose softmax is `probs` (they sum to 1).
Tensor softmax_logits(std::vector<double> probs) { return torch::tensor(probs).log().unsqueeze(0).to(torch::kFloat32); }
// Logits whose sigmoid is `scores`.
Tensor sigmoid_logits(std::vector<double> scores) {
  Tensor s = torch::tensor(scores);
  return (s / (1 - s)).log().unsqueeze(0).to(torch::kFloat32);
}

RouterSpec spec(Scoring scoring, int64_t top_k, bool renormalize, double scale = 1.0) {
  RouterSpec r;
  r.scoring = scoring;
  r.top_k = top_k;
  r.renormalize = renormalize;
  r.scale = scale;
  return r;
}

void expect_routing(const moelab::Routing& r, std::vector<int64_t> ids, std::vector<double> weights) {
  EXPECT_TRUE(torch::equal(r.ids[0], torch::tensor(ids))) << r.ids;
  EXPECT_TRUE(torch::allclose(r.weights[0], torch::tensor(weights).to(torch::kFloat32), 1e-5, 1e-6)) << r.weights;
}

const std::vector<double> kProbs = {0.1, 0.2, 0.3, 0.4};

TEST(Route, SoftmaxTopKAsOlmoeAndQwenWithoutNormTopkProb) {
  expect_routing(moelab::route(softmax_logits(kProbs), spec(Scoring::softmax, 2, false)), {3, 2}, {0.4, 0.3});
}

TEST(Route, SoftmaxTopKRenormalizedAsMixtralAndQwenWithNormTopkProb) {
  expect_routing(moelab::route(softmax_logits(kProbs), spec(Scoring::softmax, 2, true)), {3, 2}, {0.4 / 0.7, 0.3 / 0.7});
}

TEST(Route, SoftmaxGreedyScaledAsDeepseekV2) {
  expect_routing(moelab::route(softmax_logits(kProbs), spec(Scoring::softmax, 2, false, 2.0)), {3, 2}, {0.8, 0.6});
}

// Groups of two; group score = its best expert: groups 0 (0.30) and 2 (0.25) are kept, so expert 6
// (0.20, third overall) loses to expert 1 (0.02) of a kept group.
TEST(Route, GroupLimitedGreedyAsDeepseekV2) {
  RouterSpec r = spec(Scoring::softmax, 3, false, 2.0);
  r.groups = 4;
  r.groups_kept = 2;
  Tensor logits = softmax_logits({0.30, 0.02, 0.03, 0.05, 0.25, 0.01, 0.20, 0.14});
  expect_routing(moelab::route(logits, r), {0, 4, 1}, {0.60, 0.50, 0.04});
}

// Groups of two; group score = sum of its best two biased scores: groups 1 (1.3) and 0 (1.0) are kept,
// so expert 4 (0.8, second overall, in the group summing 0.85) is not chosen. Weights: renormalized, x2.5.
// The bias on experts 6 and 7 lifts group 3 to 1.45 and expert 7 above expert 0; the weights stay the
// unbiased scores (expert 7: 0.3).
TEST(Route, NoauxTcWithCorrectionBiasAsDeepseekV3) {
  RouterSpec r = spec(Scoring::sigmoid, 2, true, 2.5);
  r.groups = 4;
  r.groups_kept = 2;
  r.group_score = GroupScore::top2_sum;
  Tensor logits = sigmoid_logits({0.9, 0.1, 0.6, 0.7, 0.8, 0.05, 0.2, 0.3});
  expect_routing(moelab::route(logits, r), {0, 3}, {2.5 * 0.9 / 1.6, 2.5 * 0.7 / 1.6});
  r.bias = torch::tensor({0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.45, 0.5}, torch::kFloat32);
  expect_routing(moelab::route(logits, r), {7, 3}, {2.5 * 0.3, 2.5 * 0.7});
}

// Kimi-K2: one group (no group limit), sigmoid with bias; without renormalization the weights are the scores.
TEST(Route, SigmoidWithBiasInOneGroupAsKimiK2) {
  RouterSpec r = spec(Scoring::sigmoid, 2, false, 2.0);
  r.bias = torch::tensor({0.0, 0.8, 0.0, 0.0}, torch::kFloat32);
  expect_routing(moelab::route(sigmoid_logits({0.9, 0.2, 0.6, 0.5}), r), {1, 0}, {0.4, 1.8});
}

// A router transform: the choice follows the selection logits, the weights the logits given first.
TEST(Route, SelectionLogitsChooseAndLogitsWeigh) {
  Tensor clean = softmax_logits(kProbs), noisy = softmax_logits({0.4, 0.3, 0.2, 0.1});
  expect_routing(moelab::route(clean, spec(Scoring::softmax, 2, false), noisy), {0, 1}, {0.1, 0.2});
  expect_routing(moelab::route(noisy, spec(Scoring::softmax, 2, false), noisy), {0, 1}, {0.4, 0.3});
  RouterSpec sig = spec(Scoring::sigmoid, 1, false);
  expect_routing(moelab::route(sigmoid_logits({0.9, 0.2}), sig, sigmoid_logits({0.1, 0.8})), {1}, {0.2});
}

// Each fixture's config.json as its RouterSpec.
TEST(RouterSpecFromConfig, EveryArchitecture) {
  struct Row {
    const char* fixture;
    Scoring scoring;
    int64_t top_k;
    bool renormalize;
    double scale;
    int64_t groups, groups_kept;
    GroupScore group_score;
  };
  const Row rows[] = {
      {"olmoe", Scoring::softmax, 2, false, 1.0, 1, 1, GroupScore::max},
      {"olmoe_clip_norm", Scoring::softmax, 3, true, 1.0, 1, 1, GroupScore::max},
      {"mixtral", Scoring::softmax, 2, true, 1.0, 1, 1, GroupScore::max},
      {"qwen2_moe", Scoring::softmax, 2, false, 1.0, 1, 1, GroupScore::max},
      {"qwen3_moe", Scoring::softmax, 2, true, 1.0, 1, 1, GroupScore::max},
      {"deepseek_v2", Scoring::softmax, 2, false, 2.0, 2, 1, GroupScore::max},
      {"deepseek_v3", Scoring::sigmoid, 2, true, 2.5, 4, 2, GroupScore::top2_sum},
  };
  for (const Row& row : rows) {
    RouterSpec r = moelab::read_model_config(kFixtures / row.fixture).router;
    EXPECT_EQ(r.scoring, row.scoring) << row.fixture;
    EXPECT_EQ(r.top_k, row.top_k) << row.fixture;
    EXPECT_EQ(r.renormalize, row.renormalize) << row.fixture;
    EXPECT_EQ(r.scale, row.scale) << row.fixture;
    EXPECT_EQ(r.groups, row.groups) << row.fixture;
    EXPECT_EQ(r.groups_kept, row.groups_kept) << row.fixture;
    EXPECT_EQ(r.group_score, row.group_score) << row.fixture;
  }
}

// The deepseek_v3 fixture's config.json with some keys changed (null removes a key: transformers' default).
fs::path deepseek_v3_with(const moelab::test::TempDir& dir, const nlohmann::json& changes) {
  std::ifstream in(kFixtures / "deepseek_v3" / "config.json");
  nlohmann::json config = nlohmann::json::parse(in);
  for (const auto& [key, value] : changes.items()) {
    if (value.is_null()) config.erase(key);
    else config[key] = value;
  }
  dir.write("config.json", config.dump(1));
  return dir.path();
}

TEST(RouterSpecFromConfig, KimiK2IsDeepseekV3AndV3DefaultsAreTransformers) {
  moelab::test::TempDir dir;
  moelab::ModelConfig kimi = moelab::read_model_config(deepseek_v3_with(dir, {{"model_type", "kimi_k2"}, {"n_group", 1}, {"topk_group", 1}}));
  EXPECT_EQ(kimi.arch.model_type, "kimi_k2");
  EXPECT_EQ(kimi.arch.router_bias, "e_score_correction_bias");
  EXPECT_EQ(kimi.router.scoring, Scoring::sigmoid);
  EXPECT_EQ(kimi.router.groups, 1);
  moelab::ModelConfig defaults = moelab::read_model_config(deepseek_v3_with(
      dir, {{"num_hidden_layers", 5}, {"n_routed_experts", 16}, {"num_experts_per_tok", 4}, {"n_group", nullptr}, {"topk_group", nullptr},
            {"norm_topk_prob", nullptr}, {"routed_scaling_factor", nullptr}, {"first_k_dense_replace", nullptr}, {"rope_interleave", nullptr}}));
  EXPECT_EQ(defaults.router.groups, 8);
  EXPECT_EQ(defaults.router.groups_kept, 4);
  EXPECT_TRUE(defaults.router.renormalize);
  EXPECT_EQ(defaults.router.scale, 2.5);
  EXPECT_TRUE(defaults.rope_interleaved);
  EXPECT_EQ(defaults.moe_layer, (std::vector<bool>{false, false, false, true, true}));
}

TEST(RouterSpecFromConfig, SettingsWithoutAnImplementationAreRefusedByName) {
  moelab::test::TempDir dir;
  auto error = [&](const nlohmann::json& changes) {
    return moelab::test::error_of([&] { moelab::read_model_config(deepseek_v3_with(dir, changes)); });
  };
  EXPECT_THAT(error({{"topk_method", "group_limited_greedy"}}),
              testing::HasSubstr("config.json: topk_method \"group_limited_greedy\" is not supported (supported: noaux_tc)"));
  EXPECT_THAT(error({{"scoring_func", "softmax"}}), testing::HasSubstr("scoring_func \"softmax\" is not supported (supported: sigmoid)"));
  EXPECT_THAT(error({{"attention_bias", true}}), testing::HasSubstr("attention_bias = true is not supported for deepseek_v3"));
  EXPECT_THAT(error({{"quantization_config", {{"quant_method", "fp8"}}}}),
              testing::HasSubstr("quantization_config (fp8) is not supported: moelab loads unquantized weights"));
  EXPECT_THAT(error({{"n_group", 3}}), testing::HasSubstr("n_group 3 does not divide the 8 experts"));
  EXPECT_THAT(error({{"topk_group", 1}, {"num_experts_per_tok", 3}}),
              testing::HasSubstr("num_experts_per_tok 3 exceeds the 2 experts in topk_group 1 groups"));
  EXPECT_THAT(error({{"n_group", 8}, {"topk_group", 2}}), testing::HasSubstr("n_group 8 leaves 1 expert per group"));
  EXPECT_THAT(error({{"model_type", "deepseek_v2"}, {"topk_method", "noaux_tc"}}),
              testing::HasSubstr("topk_method \"noaux_tc\" is not supported (supported: greedy, group_limited_greedy)"));
}

}  // namespace
