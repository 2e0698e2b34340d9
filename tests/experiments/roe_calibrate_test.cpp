// RoE's tau from measured top-k change rates on the built-in tiny model: roe_calibrate's curves rise with
// tau from 0 at tau = 0, the pick is the grid value nearest the target and fresh draws at it change the
// top-k at that rate; the roe sampler reads the map from the file; generate reports the observed rates.
#include "moelab/moelab.h"
#include "moelab/lib/calibration.h"
#include "moelab/lib/files.h"
#include "test_run.h"

#include <gmock/gmock.h>

#include <cmath>

using moelab::test::TempDir;
using testing::HasSubstr;

namespace {

namespace fs = std::filesystem;

const std::string kProse = std::string(MOELAB_SOURCE_DIR) + "/configs/data/text/prose.txt";

std::string calibrate_toml(const std::string& keys = "") {
  return "seed = 3\nstages = []\n[text]\nplugin = \"text\"\npath = \"" + kProse +
         "\"\n[cal]\nplugin = \"roe_calibrate\"\ndataset = \"text\"\nseqlen = 32\ndraws = 4\n" + keys;
}

nlohmann::json run_stage(const TempDir& dir, moelab::ExperimentRun& run, const std::string& stage) {
  fs::create_directories(dir.path() / stage);
  nlohmann::json summary;
  run.make<moelab::Stage>(stage)->run(dir.path() / stage, summary);
  return summary;
}

TEST(RoeCalibrate, RatesRiseWithTauAndFreshDrawsAtThePickedTauChangeTheTopkNearTheTarget) {
  TempDir dir;
  auto run = moelab::test::start_run(dir, calibrate_toml());
  run_stage(dir, *run, "cal");
  const nlohmann::json file = moelab::read_json(dir.path() / "cal" / "tau.json");
  EXPECT_TRUE(fs::exists(dir.path() / "cal" / "report.md"));
  const double target = file["target_change_rate"].get<double>();
  EXPECT_EQ(target, 0.10);
  const auto grid = file["tau_grid"].get<std::vector<double>>();
  ASSERT_EQ(grid.front(), 0.0);
  moelab::Model& model = run->model();
  const std::vector<int>& moe = model.info().moe_layers;
  ASSERT_EQ(file["tau"].size(), moe.size());
  // The first and last MoE layers keep tau 0 and are not measured.
  for (int edge : {moe.front(), moe.back()}) {
    EXPECT_EQ(file["tau"][std::to_string(edge)], 0.0);
    EXPECT_FALSE(file["change_rate"].contains(std::to_string(edge)));
  }
  const long long samples = file["tokens"].get<long long>() * file["draws"].get<long long>();
  ASSERT_GE(samples, 1000);

  // Fresh draws, independent of the stage's: top-k of logits + tau * g against the clean top-k, on the
  // clean logits of the same windows (the tiny OLMoE's router is softmax then top-k, no bias).
  torch::NoGradGuard no_grad;
  torch::Tensor stream = moelab::token_stream(*run->make<moelab::Dataset>("text"), run->tokenizer(), true);
  const long long windows = std::min<long long>(stream.numel() / 32, 16);
  model.forward(stream.narrow(0, 0, windows * 32).view({windows, 32}), {});
  torch::manual_seed(11);
  for (std::size_t i = 1; i + 1 < moe.size(); ++i) {
    const std::string layer = std::to_string(moe[i]);
    const auto rate = file["change_rate"][layer].get<std::vector<double>>();
    ASSERT_EQ(rate.size(), grid.size());
    EXPECT_EQ(rate.front(), 0.0) << "layer " << layer << ": tau = 0 must change nothing";
    for (std::size_t g = 1; g < rate.size(); ++g) EXPECT_GE(rate[g], rate[g - 1]) << "layer " << layer << " tau " << grid[g];
    ASSERT_GT(rate.back(), target) << "layer " << layer << ": the grid must reach the target";
    // The pick is the grid value nearest the target: within half the gap of the two values around it.
    std::size_t above = 0;
    while (rate[above] < target) ++above;
    const double tau = file["tau"][layer].get<double>(), picked = file["picked_change_rate"][layer].get<double>();
    EXPECT_TRUE(tau == grid[above] || (above > 0 && tau == grid[above - 1])) << "layer " << layer << " tau " << tau;
    const double gap = rate[above] - (above > 0 ? rate[above - 1] : 0.0);
    EXPECT_LE(std::abs(picked - target), gap / 2 + 1e-12) << "layer " << layer;

    const moelab::RouterTrace& trace = model.routing()[i];
    ASSERT_EQ(trace.layer, moe[i]);
    torch::Tensor logits = trace.logits.to(torch::kCPU, torch::kFloat64).repeat({4, 1});  // the model may sit on the GPU
    torch::Tensor gumbel = -(-torch::rand(logits.sizes(), torch::kFloat64).log()).log();
    torch::Tensor noisy = std::get<0>(std::get<1>((logits + tau * gumbel).topk(model.info().top_k, -1)).sort(-1));
    torch::Tensor clean = std::get<0>(trace.topk_ids.cpu().repeat({4, 1}).sort(-1));
    const double fresh = noisy.ne(clean).any(-1).to(torch::kFloat64).mean().item<double>();
    // Binomial error of both estimates over >= 1000 samples each is below 0.01 near the target.
    EXPECT_NEAR(fresh, picked, 0.04) << "layer " << layer;
    EXPECT_NEAR(fresh, target, gap / 2 + 0.04) << "layer " << layer;
  }
}

TEST(RoeCalibrate, CalibratingTheEdgesMeasuresEveryMoeLayer) {
  TempDir dir;
  auto run = moelab::test::start_run(dir, calibrate_toml("calibrate_edges = true\ntau_grid = [0.0, 1.0, 4.0]\ntarget_change_rate = 0.3\n"));
  auto summary = run_stage(dir, *run, "cal");
  const nlohmann::json file = moelab::read_json(dir.path() / "cal" / "tau.json");
  EXPECT_EQ(file["change_rate"].size(), run->model().info().moe_layers.size());
  for (const auto& [layer, tau] : file["tau"].items()) EXPECT_NE(tau, 0.0) << layer;
  EXPECT_EQ(summary["tau"], file["tau"]);
}

TEST(RoeCalibrate, GridMustAscend) {
  TempDir dir;
  auto run = moelab::test::start_run(dir, calibrate_toml("tau_grid = [0.1, 0.05]\n"));
  EXPECT_THAT(moelab::test::error_of([&] { run->make<moelab::Stage>("cal"); }), HasSubstr("tau_grid"));
}

// Decoding with a sampler built from `keys`; returns every step's scores.
std::vector<torch::Tensor> roe_scores(const TempDir& dir, const std::string& keys) {
  auto run = moelab::test::start_run(dir, "seed = 5\nstages = []\n[roe]\nplugin = \"roe\"\nk = 4\n" + keys);
  auto roe = run->make<moelab::Sampler>("roe");
  moelab::Model& model = run->model();
  torch::NoGradGuard no_grad;
  moelab::KVCache cache;
  torch::Tensor last = torch::tensor({{7}, {21}}, torch::kInt64);
  std::vector<torch::Tensor> scores;
  for (int step = 0; step < 4; ++step) {
    scores.push_back(roe->next_scores(model, last, cache, step));
    last = std::get<1>(scores.back().max(-1)).unsqueeze(1);
  }
  return scores;
}

TEST(RoeTauFile, TheSamplerUsesTheFilesValues) {
  TempDir dir;
  dir.write("tau.json", R"({"tau": {"0": 0.0, "1": 0.7, "2": 0.0, "3": 1.3, "4": 0.2, "5": 0.0}, "target_change_rate": 0.1})");
  auto from_file = roe_scores(dir, "tau_mode = \"file\"\ntau_file = \"tau.json\"\n");
  auto listed = roe_scores(dir, "tau_mode = \"list\"\ntau_list = [0.0, 0.7, 0.0, 1.3, 0.2, 0.0]\n");
  auto other = roe_scores(dir, "tau_mode = \"list\"\ntau_list = [0.0, 0.7, 0.0, 1.3, 0.0, 0.0]\n");
  bool differs = false;
  for (std::size_t step = 0; step < listed.size(); ++step) {
    EXPECT_TRUE(torch::equal(from_file[step], listed[step])) << "step " << step;
    differs = differs || !torch::equal(from_file[step], other[step]);
  }
  EXPECT_TRUE(differs) << "the file's tau of layer 4 had no effect";
}

TEST(RoeTauFile, MissingFileOrLayerIsAnErrorNamingIt) {
  TempDir dir;
  EXPECT_THAT(moelab::test::error_of([&] { roe_scores(dir, ""); }), HasSubstr("needs tau_file"));  // tau_mode = "file" is the default
  EXPECT_THAT(moelab::test::error_of([&] { roe_scores(dir, "tau_file = \"nowhere.json\"\n"); }), HasSubstr("does not exist"));
  EXPECT_THAT(moelab::test::error_of([&] { roe_scores(dir, "tau_mode = \"fixed\"\ntau_file = \"nowhere.json\"\n"); }),
              HasSubstr("is read only with tau_mode = \"file\""));
  dir.write("short.json", R"({"tau": {"0": 0.0, "1": 0.5}})");
  EXPECT_THAT(moelab::test::error_of([&] { roe_scores(dir, "tau_file = \"short.json\"\n"); }), HasSubstr("no tau for MoE layer 2"));
  dir.write("bad.json", R"({"tau": {"one": 0.5}})");
  EXPECT_THAT(moelab::test::error_of([&] { roe_scores(dir, "tau_file = \"bad.json\"\n"); }), HasSubstr("\"one\""));
}

nlohmann::json generate_summary(const TempDir& dir, const std::string& roe_keys) {
  dir.write("qa.jsonl", R"({"question": "Name a color.", "answers": ["red"]})" "\n" R"({"question": "Name a planet.", "answers": ["Mars"]})" "\n");
  auto run = moelab::test::start_run(dir, "stages = []\n[qa]\nplugin = \"jsonl\"\npath = \"qa.jsonl\"\ntext_field = \"question\"\n[greedy]\nplugin = "
                                          "\"plain\"\n[roe]\nplugin = \"roe\"\nk = 4\n" + roe_keys +
                                          "[gen]\nplugin = \"generate\"\ndataset = \"qa\"\nbaseline = \"greedy\"\nsampler = \"roe\"\n"
                                          "max_new_tokens = 8\nstop = []\n");
  return run_stage(dir, *run, "gen");
}

TEST(GenerateChangeRate, TauZeroChangesNothingAndNoiseOnOneLayerStartsThere) {
  TempDir dir;
  auto quiet = generate_summary(dir, "tau_mode = \"list\"\ntau_list = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]\n");
  EXPECT_FALSE(quiet["greedy"].contains("topk_change_rate"));  // no replicas, nothing to compare
  const auto& zero = quiet["roe"]["topk_change_rate"];
  EXPECT_GT(zero["noisy_rows"].get<long long>(), 0);
  EXPECT_EQ(zero["noisy_rows"].get<long long>() % (2 * 4), 0);  // rows x K per step, one token each
  ASSERT_EQ(zero["layers"].size(), 6u);
  for (const auto& [layer, rate] : zero["layers"].items()) EXPECT_EQ(rate, 0.0) << layer;

  auto loud = generate_summary(dir, "tau_mode = \"list\"\ntau_list = [0.0, 0.0, 2.0, 0.0, 0.0, 0.0]\n");
  const auto& rates = loud["roe"]["topk_change_rate"]["layers"];
  EXPECT_EQ(rates["0"], 0.0);
  EXPECT_EQ(rates["1"], 0.0);
  EXPECT_GT(rates["2"].get<double>(), 0.2);
}

TEST(RoeCalibrated, ConfigCalibratesThenDecodesWithTheMap) {
  TempDir dir;
  auto r = moelab::test::run_command(moelab::test::runexp_binary() + " " + MOELAB_SOURCE_DIR + "/configs/roe_calibrated.toml --set run_dir=" +
                                     dir.path().string());
  ASSERT_EQ(r.status, 0) << r.output;
  fs::path run = fs::directory_iterator(dir.path() / "roe_calibrated")->path();
  auto summary = moelab::read_json(run / "summary.json");
  const auto& tau = summary["stages"]["calibrate"]["tau"];
  ASSERT_EQ(tau.size(), 6u);
  EXPECT_GT(tau["1"].get<double>(), 0.0);
  EXPECT_THAT(moelab::read_file(run / "log.txt"), HasSubstr("tau per MoE layer from " + run.string()));
  const auto& observed = summary["stages"]["generate"]["roe"]["topk_change_rate"]["layers"];
  EXPECT_EQ(observed["0"], 0.0);  // tau 0 and nothing before it
  // The first noisy layer sees clean inputs, as in the calibration; decoding positions are other tokens
  // than the calibration text's, so only the order of magnitude is asserted.
  EXPECT_GT(observed["1"].get<double>(), 0.02);
  EXPECT_LT(observed["1"].get<double>(), 0.3);
}

}  // namespace
