// The pickers one by one on hand-computed cases, the chain's checks, and the chain
// ["temperature", "top_p", "draw"] against the fused temperature/top-p function it replaced.
#include "moelab/moelab.h"
#include "moelab/lib/pickers.h"
#include "test_run.h"

#include <gmock/gmock.h>

using moelab::test::error_of;
using testing::HasSubstr;

namespace {

// The fused function the samplers called before the pick chain (moelab 0.x pick_token), kept here as
// the oracle: the chain must give its tokens, token for token.
torch::Tensor fused_pick_token(const torch::Tensor& probs, double temperature, double top_p, const torch::Tensor& uniform) {
  if (temperature <= 0) return probs.argmax(-1);
  torch::Tensor p = probs.to(torch::kFloat64).clamp_min(0).pow(1.0 / temperature);
  p = p / p.sum(-1, true);
  auto [sorted, order] = p.sort(-1, /*descending=*/true);
  torch::Tensor before = sorted.cumsum(-1) - sorted;
  sorted = sorted.masked_fill(before >= top_p, 0.0);
  torch::Tensor cdf = sorted.cumsum(-1);
  torch::Tensor target = uniform.to(cdf.device(), torch::kFloat64).unsqueeze(-1) * cdf.narrow(-1, cdf.size(-1) - 1, 1);
  torch::Tensor index = torch::searchsorted(cdf, target).clamp_max(cdf.size(-1) - 1);
  return order.gather(-1, index).squeeze(-1);
}

torch::Tensor f64(const std::vector<double>& values) { return torch::tensor(values, torch::kFloat64).unsqueeze(0); }

moelab::PickState state_of(const torch::Tensor& scores) {
  moelab::PickState state;
  state.scores = scores;
  return state;
}

void apply(const std::string& name, moelab::PickState& state, const moelab::PickSettings& settings = {}) {
  moelab::make_picker(name, settings)->apply(state);
}

torch::Tensor normalized(const torch::Tensor& p) { return p / p.sum(-1, true); }

TEST(Pickers, TemperatureRaisesProbabilitiesToOneOverT) {
  moelab::PickState state = state_of(f64({0.5, 0.3, 0.2}).log());
  apply("temperature", state, {0.5});
  EXPECT_TRUE(torch::allclose(normalized(state.probs), f64({0.25, 0.09, 0.04}) / 0.38, 0, 1e-12)) << state.probs;
  moelab::PickState hot = state_of(f64({0.5, 0.3, 0.2}).log());
  apply("temperature", hot, {2.0});
  EXPECT_TRUE(torch::allclose(normalized(hot.probs), normalized(f64({0.5, 0.3, 0.2}).sqrt()), 0, 1e-12)) << hot.probs;
  moelab::PickState cold = state_of(f64({0.2, 0.5, 0.3}).log());
  apply("temperature", cold, {0.0});
  EXPECT_TRUE(torch::equal(cold.probs, f64({0.0, 1.0, 0.0})));
}

TEST(Pickers, TopKKeepsTheKMostLikelyAndTheirTies) {
  auto cut = [](const torch::Tensor& probs, long long k) {
    moelab::PickState state;
    state.probs = probs;
    apply("top_k", state, {1.0, k});
    return state.probs;
  };
  EXPECT_TRUE(torch::equal(cut(f64({0.1, 0.4, 0.3, 0.2}), 2), f64({0.0, 0.4, 0.3, 0.0})));
  EXPECT_TRUE(torch::equal(cut(f64({0.25, 0.375, 0.125, 0.25}), 2), f64({0.25, 0.375, 0.0, 0.25})));
  EXPECT_TRUE(torch::equal(cut(f64({0.25, 0.375, 0.125, 0.25}), 0), f64({0.25, 0.375, 0.125, 0.25})));
  moelab::PickState from_scores = state_of(torch::tensor({{0.0f, 2.0f, 1.0f}}));  // makes the probabilities first
  apply("top_k", from_scores, {1.0, 1});
  EXPECT_TRUE(torch::equal(from_scores.probs, f64({0.0, 1.0, 0.0}) * torch::tensor({{0.0f, 2.0f, 1.0f}}).softmax(-1).to(torch::kFloat64)));
}

TEST(Pickers, TopPKeepsTokensWhileTheMoreLikelyHoldLessThanTopP) {
  // Unnormalised {1, 8, 4, 3} / 16: by descending probability 0.5, 0.25, 0.1875, 0.0625 with 0, 0.5, 0.75,
  // 0.9375 of the mass before them.
  auto cut = [](double top_p) {
    moelab::PickState state;
    state.probs = f64({1, 8, 4, 3});
    apply("top_p", state, {1.0, 0, top_p});
    EXPECT_TRUE(torch::equal(state.order, torch::tensor({{1, 2, 3, 0}}, torch::kInt64)));
    return state.probs;
  };
  EXPECT_TRUE(torch::equal(cut(0.6), f64({0.0, 0.5, 0.25, 0.0})));
  EXPECT_TRUE(torch::equal(cut(0.5), f64({0.0, 0.5, 0.0, 0.0})));  // the most likely token always stays
  EXPECT_TRUE(torch::equal(cut(0.76), f64({0.0, 0.5, 0.25, 0.1875})));
  EXPECT_TRUE(torch::equal(cut(1.0), f64({0.0625, 0.5, 0.25, 0.1875})));
}

// Hugging Face's RepetitionPenaltyLogitsProcessor: score = gather(scores, input_ids); score = where(score < 0,
// score * penalty, score / penalty); scatter back. Row 0 has seen tokens 0, 1 (twice) and 4; row 1 tokens 2
// and 3; -1 is padding and penalizes nothing.
TEST(Pickers, RepetitionPenaltyIsHuggingFaces) {
  moelab::PickState state = state_of(torch::tensor({{2.0, -1.0, 0.5, -3.0, 0.0}, {2.0, -1.0, 0.5, -3.0, 0.0}}, torch::kFloat64));
  state.history = torch::tensor({{-1, 0, 1, 1, 4}, {-1, -1, -1, 2, 3}}, torch::kInt64);
  apply("repetition_penalty", state, {1.0, 0, 1.0, 2.0});
  EXPECT_TRUE(torch::equal(state.scores, torch::tensor({{1.0, -2.0, 0.5, -3.0, 0.0}, {2.0, -1.0, 0.25, -6.0, 0.0}}, torch::kFloat64)))
      << state.scores;
  EXPECT_FALSE(state.probs.defined());
  moelab::PickState no_history = state_of(f64({1.0, 2.0}));
  EXPECT_THAT(error_of([&] { apply("repetition_penalty", no_history, {1.0, 0, 1.0, 2.0}); }), HasSubstr("history"));
}

TEST(Pickers, GreedyTakesTheArgmaxLowestIdOnTies) {
  moelab::PickState state = state_of(torch::tensor({{1.0f, 3.0f, 3.0f, 2.0f}, {4.0f, 0.0f, 1.0f, 4.5f}}));
  apply("greedy", state);
  EXPECT_TRUE(torch::equal(state.tokens, torch::tensor({1, 3}, torch::kInt64)));
  moelab::PickState cut = state_of(torch::tensor({{1.0f, 3.0f, 2.0f}}));  // probabilities, once made, decide
  cut.probs = f64({0.5, 0.2, 0.3});
  apply("greedy", cut);
  EXPECT_EQ(cut.tokens.item<std::int64_t>(), 0);
}

TEST(Pickers, DrawWalksTheCdfByDescendingProbability) {
  // {0.2, 0.5, 0.3}: by descending probability tokens 1, 2, 0 with the CDF 0.5, 0.8, 1.
  moelab::PickState state = state_of(f64({0.2, 0.5, 0.3}).log().expand({6, 3}));
  state.uniform = torch::tensor({0.1, 0.49, 0.51, 0.79, 0.81, 0.999}, torch::kFloat64);
  apply("draw", state);
  EXPECT_TRUE(torch::equal(state.tokens, torch::tensor({1, 1, 2, 2, 0, 0}, torch::kInt64))) << state.tokens;
  // Draws from what the pickers before left: here the nucleus {1, 2} of 0.5 + 0.25.
  moelab::PickState nucleus;
  nucleus.probs = f64({1, 8, 4, 3}).expand({3, 4});
  nucleus.uniform = torch::tensor({0.1, 0.66, 0.67}, torch::kFloat64);
  apply("top_p", nucleus, {1.0, 0, 0.6});
  apply("draw", nucleus);
  EXPECT_TRUE(torch::equal(nucleus.tokens, torch::tensor({1, 1, 2}, torch::kInt64))) << nucleus.tokens;
}

TEST(Pickers, DrawRatesFollowTheDistribution) {
  const std::int64_t rows = 20000;
  torch::Tensor logits = torch::tensor({0.6, 0.3, 0.1}, torch::kFloat64).log().expand({rows, 3});
  torch::Tensor drawn = moelab::PickChain({"draw"}, {}, 1).pick(logits, {}, 0);
  EXPECT_NEAR(drawn.eq(1).to(torch::kFloat64).mean().item<double>(), 0.3, 0.015);
  EXPECT_NEAR(drawn.eq(2).to(torch::kFloat64).mean().item<double>(), 0.1, 0.01);
  torch::Tensor nucleus = moelab::PickChain({"top_p", "draw"}, {1.0, 0, 0.8}, 1).pick(logits, {}, 0);  // 0.6 and 0.3, renormalised
  EXPECT_TRUE(nucleus.ne(2).all().item<bool>());
  EXPECT_NEAR(nucleus.eq(1).to(torch::kFloat64).mean().item<double>(), 1.0 / 3, 0.015);
  EXPECT_TRUE(torch::equal(moelab::PickChain({"draw"}, {}, 1).pick(logits, {}, 3), moelab::PickChain({"draw"}, {}, 1).pick(logits, {}, 3)));
  EXPECT_FALSE(torch::equal(moelab::PickChain({"draw"}, {}, 1).pick(logits, {}, 3), moelab::PickChain({"draw"}, {}, 2).pick(logits, {}, 3)));
}

// Random distributions of many shapes (flat, peaked, with ties, a single token holding almost all the
// mass), every temperature and top_p the samplers used, several seeds and steps: the chain on the model's
// float32 logits gives the fused function's tokens on their float32 softmax, and on RoE's log of a mean of
// probabilities the fused function's tokens on the mean (there equal up to float64 rounding of the
// softmax, which moves a CDF boundary by about 1e-16).
TEST(PickChain, TemperatureTopPDrawGivesTheFusedFunctionsTokens) {
  torch::manual_seed(0);
  const std::int64_t rows = 64;
  std::int64_t compared = 0, changed_by_seed = 0;
  for (std::int64_t vocab : {2, 3, 17, 300}) {
    std::vector<torch::Tensor> kinds = {torch::randn({rows, vocab}), 8 * torch::randn({rows, vocab}),
                                        torch::randint(-2, 3, {rows, vocab}).to(torch::kFloat32), 0.01 * torch::randn({rows, vocab})};
    kinds.push_back(kinds[0].clone().index_fill_(1, torch::tensor({0}), 40.0f));
    for (const torch::Tensor& logits : kinds) {
      torch::Tensor mean = (4 * torch::randn({rows, 4, vocab})).softmax(-1).mean(1);  // float32, as RoE's
      for (double temperature : {0.0, 0.25, 0.7, 1.0, 1.8})
        for (double top_p : {0.05, 0.5, 0.9, 1.0}) {
          torch::Tensor before;
          for (auto [seed, step] : {std::pair<std::uint64_t, std::int64_t>{0, 0}, {77, 5}}) {
            moelab::PickChain chain({"temperature", "top_p", "draw"}, {temperature, 0, top_p}, seed);
            torch::Tensor u = moelab::counter_uniform(seed, static_cast<std::uint64_t>(step) * rows, {rows}, torch::kCPU);
            torch::Tensor want = fused_pick_token(logits.softmax(-1), temperature, top_p, u);
            ASSERT_TRUE(torch::equal(chain.pick(logits, {}, step), want)) << "V " << vocab << " T " << temperature << " top_p " << top_p;
            ASSERT_TRUE(torch::equal(chain.pick(mean.to(torch::kFloat64).log(), {}, step), fused_pick_token(mean, temperature, top_p, u)))
                << "RoE-style, V " << vocab << " T " << temperature << " top_p " << top_p;
            compared += 2 * rows;
            if (before.defined()) changed_by_seed += before.ne(want).sum().item<std::int64_t>();
            before = want;
          }
        }
      ASSERT_TRUE(torch::equal(moelab::PickChain({"greedy"}, {}, 0).pick(logits, {}, 0), logits.argmax(-1)));
    }
  }
  // A real model's vocabulary: most tokens hold almost nothing, and the CDF runs over 50k of them.
  torch::Tensor logits = 3 * torch::randn({8, 50304});
  for (double temperature : {0.7, 1.0})
    for (double top_p : {0.9, 1.0}) {
      moelab::PickChain chain({"temperature", "top_p", "draw"}, {temperature, 0, top_p}, 9);
      torch::Tensor u = moelab::counter_uniform(9, 3 * 8, {8}, torch::kCPU);
      ASSERT_TRUE(torch::equal(chain.pick(logits, {}, 3), fused_pick_token(logits.softmax(-1), temperature, top_p, u))) << temperature << " " << top_p;
    }
  EXPECT_GT(compared, 50000);
  EXPECT_GT(changed_by_seed, 1000) << "the draws must depend on the uniforms, or the comparison proves little";
}

TEST(PickChain, RefusesChainsThatDoNotEndInOnePick) {
  auto error = [](const std::vector<std::string>& names) { return error_of([&] { moelab::PickChain(names, {}, 0); }); };
  EXPECT_THAT(error({"temperature", "topp", "draw"}), HasSubstr("pick[1]: \"topp\" is not a picker"));
  EXPECT_THAT(error({"greedy", "temperature", "draw"}), HasSubstr("pick[0] = \"greedy\" picks the token, so it must come last"));
  EXPECT_THAT(error({"temperature", "top_p"}), HasSubstr("pick[1] = \"top_p\" is last, but the chain must end with greedy or draw"));
  EXPECT_THAT(error({"top_k", "repetition_penalty", "draw"}), HasSubstr("pick[1] = \"repetition_penalty\" rescales raw scores"));
  EXPECT_THAT(error({}), HasSubstr("empty"));
}

TEST(PickChain, ConfigErrorsNameTheKeyAndWhereItWasSet) {
  moelab::test::TempDir dir;
  auto error = [&](const std::string& keys) {
    return error_of([&] {
      auto run = moelab::test::start_run(dir, "stages = []\n[s]\nplugin = \"plain\"\n" + keys);
      run->make<moelab::Sampler>("s");
    });
  };
  // "[s] <key> (<folder>/experiment.toml:<line>): <what>"; start_run writes run_dir on line 1, so the keys start on line 5.
  auto names = [](const std::string& key, int line, const std::string& what) {
    return testing::AllOf(HasSubstr("[s] " + key + " ("), HasSubstr("experiment.toml:" + std::to_string(line) + "): " + what));
  };
  EXPECT_THAT(error("pick = [\"temperature\", \"nucleus\", \"draw\"]\n"), names("pick", 5, "pick[1]: \"nucleus\" is not a picker"));
  EXPECT_THAT(error("pick = [\"draw\", \"temperature\"]\n"), names("pick", 5, "pick[0] = \"draw\" picks the token"));
  EXPECT_THAT(error("temperature = 0.7\n"), names("temperature", 5, "is set, but pick = [\"greedy\"] has no temperature picker"));
  // Ranges are the typed options' own, checked by the host when it validates the table (also at --dry-run).
  auto range = [](const std::string& key, int line, const std::string& what) {
    return testing::AllOf(HasSubstr("experiment.toml:" + std::to_string(line)), HasSubstr("key '" + key + "' must be " + what));
  };
  EXPECT_THAT(error("pick = [\"top_p\", \"draw\"]\ntop_p = 0.0\n"), range("top_p", 6, "within (0, 1], found"));
  EXPECT_THAT(error("pick = [\"temperature\", \"draw\"]\ntemperature = -1.0\n"), range("temperature", 6, "at least 0, found"));
  EXPECT_THAT(error("pick = [\"repetition_penalty\", \"greedy\"]\nrepetition_penalty = 0.0\n"),
              range("repetition_penalty", 6, "greater than 0, found"));
  EXPECT_THAT(error("pick = [\"top_k\", \"greedy\"]\ntop_k = -3\n"), range("top_k", 6, "at least 0, found"));
}

}  // namespace
