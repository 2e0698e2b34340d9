// RoE on the built-in tiny model: tau = 0 is greedy for any K, the shared cache stays the greedy
// run's cache, seeds reproduce, and the noise changes experts at the rate it implies.
#include "moe_model.h"
#include "moelab/moelab.h"
#include "moelab/lib/files.h"
#include "moelab/lib/safetensors.h"
#include "test_run.h"

#include <gmock/gmock.h>

using moelab::test::TempDir;

namespace {

namespace fs = std::filesystem;

const fs::path kTiny = fs::path(MOELAB_BINARY_DIR) / "models" / "tiny-olmoe";

struct Decoded {
  std::vector<std::int64_t> tokens;
  std::vector<std::vector<torch::Tensor>> keys;  // per step: every layer's cached keys
  bool explored = false;                          // in some step, noisy rows chose other experts than the clean row
};

// Prefills all prompt tokens but the last, then decodes `steps` tokens with `sampler`.
Decoded decode(moelab::Sampler& sampler, moelab::Model& model, const std::vector<std::int64_t>& prompt, int steps) {
  torch::NoGradGuard no_grad;
  moelab::KVCache cache;
  torch::Tensor ids = torch::tensor(prompt).unsqueeze(0);
  model.forward(ids.narrow(1, 0, ids.size(1) - 1), {}, &cache);
  torch::Tensor last = ids.narrow(1, ids.size(1) - 1, 1);
  Decoded out;
  for (int step = 0; step < steps; ++step) {
    torch::Tensor next = sampler.next(model, last, cache, step);
    out.tokens.push_back(next[0].item<std::int64_t>());
    for (const auto& trace : model.routing())
      out.explored = out.explored || std::get<0>(trace.topk_ids.sort(-1)).ne(std::get<0>(trace.topk_ids[0].sort(-1))).any().item<bool>();
    std::vector<torch::Tensor> keys;
    for (const auto& k : cache.first) keys.push_back(k.clone());
    out.keys.push_back(keys);
    last = next.unsqueeze(1);
  }
  return out;
}

struct RoeSetup {
  TempDir dir;
  std::unique_ptr<moelab::ExperimentRun> run;
  std::unique_ptr<moelab::Model> model = moelab::load_model(kTiny, torch::kCPU, torch::kFloat32);
  std::vector<std::int64_t> prompt;

  RoeSetup() {
    run = moelab::test::start_run(dir, "stages = []\n[greedy]\nplugin = \"plain\"\n");
    prompt = run->tokenizer().encode("Question: What is the capital of France?\nAnswer:");
  }
  std::shared_ptr<moelab::Sampler> roe(const std::string& keys, int seed = 0) {
    run = moelab::test::start_run(dir, "seed = " + std::to_string(seed) + "\nstages = []\n[greedy]\nplugin = \"plain\"\n[roe]\nplugin = \"roe\"\n" + keys);
    return run->make<moelab::Sampler>("roe");
  }
  std::shared_ptr<moelab::Sampler> greedy() { return run->make<moelab::Sampler>("greedy"); }
};

TEST(Roe, TauZeroIsGreedyForAnyK) {
  RoeSetup s;
  Decoded greedy = decode(*s.greedy(), *s.model, s.prompt, 12);
  for (int k : {1, 3, 8}) {
    auto roe = s.roe("k = " + std::to_string(k) + "\ntau_mode = \"list\"\ntau_list = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]\n");
    EXPECT_EQ(decode(*roe, *s.model, s.prompt, 12).tokens, greedy.tokens) << "K = " << k;
  }
}

// With tau = 0 every noisy row routes as the clean row, so RoE's scores, the log of the mean of the K rows'
// probabilities, are the model's own log-probabilities; the cache grows by the one token.
TEST(Roe, ScoresAreTheLogOfTheMeanProbabilities) {
  RoeSetup s;
  auto roe = s.roe("k = 3\ntau_mode = \"list\"\ntau_list = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]\n");
  torch::NoGradGuard no_grad;
  torch::Tensor tokens = torch::tensor({{5}, {9}}, torch::kInt64);
  moelab::KVCache cache;
  torch::Tensor scores = roe->next_scores(*s.model, tokens, cache, 0);
  EXPECT_EQ(scores.scalar_type(), torch::kFloat64);
  EXPECT_EQ(cache.length(), 1);
  torch::Tensor want = s.model->forward(tokens, {}).select(1, 0).log_softmax(-1).to(torch::kFloat64);
  EXPECT_TRUE(torch::allclose(scores, want, 1e-5, 1e-5));
}

// Greedy fed RoE's tokens through the clean path; returns the cached keys after each step.
std::vector<std::vector<torch::Tensor>> teacher_forced_keys(moelab::Model& model, const std::vector<std::int64_t>& prompt,
                                                            const std::vector<std::int64_t>& tokens) {
  torch::NoGradGuard no_grad;
  moelab::KVCache cache;
  torch::Tensor ids = torch::tensor(prompt).unsqueeze(0);
  model.forward(ids.narrow(1, 0, ids.size(1) - 1), {}, &cache);
  torch::Tensor last = ids.narrow(1, ids.size(1) - 1, 1);
  std::vector<std::vector<torch::Tensor>> keys;
  for (std::int64_t token : tokens) {
    model.forward(last, {}, &cache);
    keys.emplace_back(cache.first.begin(), cache.first.end());
    last = torch::tensor({{token}});
  }
  return keys;
}

// Large noise on the middle layers: the prediction explores, the history must not. history = "exact"
// makes the cache greedy's bit for bit. The default "shared" takes the clean row from the batch of
// K + 1 rows, where BLAS may round differently than for greedy's 1 row (pip LibTorch's MKL: 4e-7), so
// it is compared within float32 rounding; a noisy row leaking into the history differs by O(1).
TEST(Roe, SharedCacheIsTheGreedyRunsCacheAfterEveryStep) {
  RoeSetup s;
  for (const char* history : {"exact", "shared"}) {
    auto roe = s.roe(std::string("k = 6\ntau_mode = \"fixed\"\ntau_middle = 2.0\nhistory = \"") + history + "\"\n");
    Decoded explored = decode(*roe, *s.model, s.prompt, 10);
    auto greedy = teacher_forced_keys(*s.model, s.prompt, explored.tokens);
    for (std::size_t step = 0; step < explored.tokens.size(); ++step)
      for (std::size_t layer = 0; layer < greedy[step].size(); ++layer) {
        const torch::Tensor &want = greedy[step][layer], &got = explored.keys[step][layer];
        if (std::string(history) == "exact") EXPECT_TRUE(torch::equal(got, want)) << "step " << step << " layer " << layer;
        else EXPECT_TRUE(torch::allclose(got, want, 1e-5, 1e-5)) << "step " << step << " layer " << layer;
      }
  }
}

TEST(Roe, SameSeedSameTokensOtherSeedOtherDraws) {
  RoeSetup s;
  const std::string keys = "k = 4\ntau_mode = \"fixed\"\ntau_middle = 3.0\npick = [\"temperature\", \"draw\"]\ntemperature = 1.0\n";
  auto a = decode(*s.roe(keys, 1), *s.model, s.prompt, 16).tokens;
  auto b = decode(*s.roe(keys, 1), *s.model, s.prompt, 16).tokens;
  auto c = decode(*s.roe(keys, 2), *s.model, s.prompt, 16).tokens;
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
}

// With noise on one layer only, the noisy rows' router logits there equal the clean row's, so the
// share of rows whose top-k set changes must match P(topk(l + tau g) != topk(l)) estimated directly.
TEST(Roe, NoiseChangesExpertsAtTheRateItImplies) {
  RoeSetup s;
  const int k = 64, layer = 2;
  const double tau = 0.3;
  auto roe = s.roe("k = " + std::to_string(k) + "\ntau_mode = \"list\"\ntau_list = [0.0, 0.0, " + std::to_string(tau) + ", 0.0, 0.0, 0.0]\n");
  torch::NoGradGuard no_grad;
  moelab::KVCache cache;
  torch::Tensor ids = torch::tensor(s.prompt).unsqueeze(0);
  s.model->forward(ids.narrow(1, 0, ids.size(1) - 1), {}, &cache);
  torch::Tensor last = ids.narrow(1, ids.size(1) - 1, 1);
  double observed = 0, expected = 0;
  const int steps = 8;
  torch::manual_seed(0);
  for (int step = 0; step < steps; ++step) {
    torch::Tensor next = roe->next(*s.model, last, cache, step);
    const moelab::RouterTrace& trace = s.model->routing()[layer];
    ASSERT_EQ(trace.layer, layer);
    ASSERT_EQ(trace.logits.size(0), k + 1);
    EXPECT_TRUE(torch::allclose(trace.logits.narrow(0, 1, k), trace.logits[0].expand({k, -1}), 1e-5, 1e-5));
    auto sorted_set = [](const torch::Tensor& ids) { return std::get<0>(ids.sort(-1)); };
    torch::Tensor clean = sorted_set(trace.topk_ids[0]);
    observed += sorted_set(trace.topk_ids.narrow(0, 1, k)).ne(clean).any(1).to(torch::kFloat64).mean().item<double>() / steps;
    torch::Tensor gumbel = -(-torch::rand({20000, trace.logits.size(1)}, torch::kFloat64).log()).log();
    torch::Tensor draws = std::get<1>((trace.logits[0].to(torch::kFloat64) + tau * gumbel).topk(s.model->info().top_k, -1));
    expected += sorted_set(draws).ne(clean).any(1).to(torch::kFloat64).mean().item<double>() / steps;
    last = next.unsqueeze(1);
  }
  EXPECT_GT(expected, 0.05) << "tau too small to test anything";
  // 8 x 64 noisy rows: binomial standard error below 0.025.
  EXPECT_NEAR(observed, expected, 0.075);
}

// Every architecture (GQA, shared experts, dense layers, DeepSeek's latent attention) reads the shared
// prefix through KVCache::replicas: tau = 0 is greedy, and noisy rows never reach the cache.
class RoeArchitectures : public testing::TestWithParam<std::string> {};

TEST_P(RoeArchitectures, TauZeroIsGreedyAndNoiseStaysOutOfTheCache) {
  const fs::path folder = fs::path(MOELAB_SOURCE_DIR) / "tests" / "fixtures" / "models" / GetParam();
  auto model = moelab::load_model(folder, torch::kCPU, torch::kFloat32);
  torch::Tensor prompt = moelab::SafetensorsFile(folder / "expected.safetensors").get("prompt_ids")[0];
  std::vector<std::int64_t> ids(prompt.data_ptr<std::int64_t>(), prompt.data_ptr<std::int64_t>() + prompt.numel());
  std::string zeros, loud_taus;
  for (std::size_t i = 0; i < model->info().moe_layers.size(); ++i) {
    zeros += std::string(i ? ", " : "") + "0.0";
    loud_taus += std::string(i ? ", " : "") + "1.5";
  }
  TempDir dir;
  auto run = moelab::test::start_run(dir, "stages = []\n[greedy]\nplugin = \"plain\"\n[quiet]\nplugin = \"roe\"\nk = 3\ntau_mode = \"list\"\n"
                                          "tau_list = [" + zeros + "]\n[loud]\nplugin = \"roe\"\nk = 3\ntau_mode = \"list\"\ntau_list = [" + loud_taus + "]\n");
  Decoded greedy = decode(*run->make<moelab::Sampler>("greedy"), *model, ids, 6);
  EXPECT_EQ(decode(*run->make<moelab::Sampler>("quiet"), *model, ids, 6).tokens, greedy.tokens);
  Decoded loud = decode(*run->make<moelab::Sampler>("loud"), *model, ids, 6);
  EXPECT_TRUE(loud.explored) << GetParam();
  torch::NoGradGuard no_grad;
  moelab::KVCache cache;
  torch::Tensor t = torch::tensor(ids).unsqueeze(0);
  model->forward(t.narrow(1, 0, t.size(1) - 1), {}, &cache);
  torch::Tensor last = t.narrow(1, t.size(1) - 1, 1);
  for (std::size_t step = 0; step < loud.tokens.size(); ++step) {
    model->forward(last, {}, &cache);
    for (std::size_t layer = 0; layer < cache.first.size(); ++layer)
      EXPECT_TRUE(torch::allclose(cache.first[layer], loud.keys[step][layer], 1e-5, 1e-5)) << GetParam() << " step " << step << " layer " << layer;
    last = torch::tensor({{loud.tokens[step]}});
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, RoeArchitectures,
                         testing::Values("olmoe", "mixtral", "qwen2_moe", "qwen3_moe", "deepseek_v2", "deepseek_v3"));

TEST(RoeK8, ConfigRunsGreedyAndRoeWithPairedMetrics) {
  TempDir dir;
  auto r = moelab::test::run_command(moelab::test::runexp_binary() + " " + MOELAB_SOURCE_DIR + "/configs/roe_k8.toml --set run_dir=" +
                                     dir.path().string());
  ASSERT_EQ(r.status, 0) << r.output;
  fs::path run = fs::directory_iterator(dir.path() / "roe_k8")->path();
  auto summary = nlohmann::json::parse(moelab::read_file(run / "summary.json"));
  const auto& g = summary["stages"]["generate"];
  EXPECT_GT(g["greedy"]["generated_tokens"].get<long long>(), 0);
  EXPECT_GT(g["roe"]["tokens_per_second"].get<double>(), 0);
  EXPECT_TRUE(g["paired"]["f1"].contains("bootstrap_95"));
  EXPECT_TRUE(fs::exists(run / "generate" / "generations.jsonl"));
}

}  // namespace
