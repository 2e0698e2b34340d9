// RoMA on the built-in tiny model: the manifold term's gradient against finite differences, the
// neighbour graph, padding that is never read, the letter evaluation, checkpoints, and the main
// config end to end through runexp.
#include "moe_model.h"
#include "moelab/moelab.h"
#include "moelab/lib/files.h"
#include "moelab/lib/multiple_choice.h"
#include "moelab/lib/neighbours.h"
#include "moelab/lib/router_checkpoint.h"
#include "moelab/lib/safetensors.h"
#include "test_run.h"

#include <gmock/gmock.h>
#include <torch/csrc/autograd/autograd.h>

using moelab::test::TempDir;
using testing::HasSubstr;

namespace {

namespace fs = std::filesystem;

const fs::path kTiny = fs::path(MOELAB_BINARY_DIR) / "models" / "tiny-olmoe";
const std::vector<int> kLayers = {1, 2, 3, 4, 5};

const std::vector<std::string> kQuestions = {
    "Which gas do plants take in from the air?", "What is 12 + 6?", "Which planet is closest to the sun?",
    "What do bees make?", "What is 3 times 4?", "Which metal is liquid at room temperature?"};

// A routing-results file for kQuestions with random recorded softmax routing, all answered correctly.
std::string routing_results(const moelab::Tokenizer& tokenizer) {
  torch::manual_seed(3);
  nlohmann::json results = nlohmann::json::object();
  for (std::size_t i = 0; i < kQuestions.size(); ++i) {
    nlohmann::json layers = nlohmann::json::array();
    for (int l : kLayers) {
      torch::Tensor p = torch::randn({8}).softmax(0);
      nlohmann::json w;
      for (int e = 0; e < 8; ++e) w["expert_" + std::to_string(e)] = p[e].item<double>();
      layers.push_back({{"layer", l}, {"routing_weights", w}});
    }
    std::string prompt = "Question: " + kQuestions[i] + "\nAnswer:";
    results["q" + std::to_string(i)] = {{"input_text", prompt},
                                        {"last_token_routing", {{"token_id", tokenizer.encode(prompt).back()}, {"token_text", ":"}, {"layers", layers}}},
                                        {"correct_answer", std::string(1, static_cast<char>('A' + i % 4))},
                                        {"model_answer", "A"},
                                        {"is_correct", true}};
  }
  return results.dump();
}

struct RomaSetup {
  TempDir dir;
  std::unique_ptr<moelab::ExperimentRun> run;
  std::shared_ptr<moelab::Objective> roma;
  std::unique_ptr<moelab::Model> model;  // float64, for finite differences
  std::vector<moelab::McItem> items;

  explicit RomaSetup(const std::string& representation = "softmax", const std::string& neighbours = "recorded") {
    std::unique_ptr<moelab::Tokenizer> tokenizer = moelab::Tokenizer::from_file(kTiny / "tokenizer.json");
    dir.write("rr.json", routing_results(*tokenizer));
    run = moelab::test::start_run(dir, "stages = []\n[task]\nplugin = \"task_ce\"\n[embed]\nplugin = \"hashed_bow\"\n"
                                       "[roma]\nplugin = \"roma\"\nrouting_results = \"rr.json\"\ntask = \"task\"\nembedder = \"embed\"\n"
                                       "k = 3\nlambda = 1.0\nlambda_warmup_steps = 1\nrepresentation = \"" + representation +
                                       "\"\nneighbours = \"" + neighbours + "\"\n");
    roma = run->make<moelab::Objective>("roma");
    model = moelab::load_model(kTiny, torch::kCPU, torch::kFloat64);
    for (std::size_t i = 0; i < kQuestions.size(); ++i) {
      moelab::Example ex;
      ex.id = "q" + std::to_string(i);
      ex.letters = {"A", "B", "C", "D"};
      ex.answer = static_cast<long long>(i % 4);
      ex.record = {{"prompt", "Question: " + kQuestions[i] + "\nAnswer:"}};
      items.push_back(moelab::prepare_item(ex, *tokenizer, {}, 1024));
    }
  }

  moelab::LossTerms loss(const std::vector<std::size_t>& rows, moelab::Padding padding = moelab::Padding::left) {
    std::vector<const moelab::McItem*> chosen;
    for (auto r : rows) chosen.push_back(&items[r]);
    moelab::ObjectiveBatch batch = moelab::objective_batch(*model, moelab::make_batch(chosen, 1, padding), roma->needs());
    batch.trained_layers = kLayers;
    batch.top_k = model->info().top_k;
    return roma->compute(batch);
  }
};

torch::Tensor part(const moelab::LossTerms& terms, const std::string& name) {
  for (const auto& [n, v] : terms.parts)
    if (n == name) return v;
  ADD_FAILURE() << "no loss part " << name;
  return {};
}

TEST(Roma, ManifoldGradientOnTheRoutersMatchesFiniteDifferences) {
  for (const char* representation : {"softmax", "topk_renorm"}) {
    RomaSetup s(representation);
    const std::vector<std::size_t> rows = {0, 2, 3};
    std::vector<torch::Tensor> gates;
    for (int l : kLayers) gates.push_back(s.model->router_weight(l).requires_grad_(true));
    torch::Tensor reg = part(s.loss(rows), "reg");
    ASSERT_TRUE(reg.requires_grad()) << "the regularizer must be computed from the live model";
    auto grads = torch::autograd::grad({reg}, gates);
    double norm = 0;
    for (const auto& g : grads) norm += g.pow(2).sum().item<double>();
    EXPECT_GT(std::sqrt(norm), 1e-6) << representation;

    torch::NoGradGuard no_grad;
    const double h = 1e-6;
    for (std::size_t g = 0; g < gates.size(); g += 2) {
      for (long long element : {0LL, 77LL, 301LL, 511LL}) {
        double& w = gates[g].view(-1).data_ptr<double>()[element];
        const double original = w;
        w = original + h;
        double up = part(s.loss(rows), "reg").item<double>();
        w = original - h;
        double down = part(s.loss(rows), "reg").item<double>();
        w = original;
        double numeric = (up - down) / (2 * h);
        EXPECT_NEAR(grads[g].view(-1)[element].item<double>(), numeric, 1e-6 + 1e-4 * std::abs(numeric))
            << representation << " layer " << kLayers[g] << " element " << element;
      }
    }
  }
}

TEST(Roma, LeftAndRightPaddingGiveTheLossOfUnpaddedRows) {
  RomaSetup s;
  const std::vector<std::size_t> rows = {0, 1, 5};  // prompts of different lengths
  ASSERT_NE(s.items[0].prompt_ids.size(), s.items[1].prompt_ids.size());
  double left = s.loss(rows, moelab::Padding::left).total.item<double>();
  double right = s.loss(rows, moelab::Padding::right).total.item<double>();
  double alone = 0;
  for (auto r : rows) alone += s.loss({r}).total.item<double>();
  // Each row's task and manifold terms are means over the batch, so single rows average to the batch loss.
  EXPECT_NEAR(left, right, 1e-9);
  EXPECT_NEAR(left, alone / rows.size(), 1e-9);
}

TEST(Roma, LiveNeighboursAreRecomputedByTheModel) {
  RomaSetup recorded("softmax", "recorded"), live("softmax", "live");
  double a = part(recorded.loss({0, 1}), "reg").item<double>(), b = part(live.loss({0, 1}), "reg").item<double>();
  EXPECT_GT(std::abs(a - b), 1e-6);  // random recorded routing differs from the model's own
}

TEST(Neighbours, OnlyCandidatesNeverSelfWeightsSumToOne) {
  torch::manual_seed(1);
  torch::Tensor e = torch::randn({8, 5});
  e = e / e.norm(2, 1, true);
  std::vector<std::int64_t> candidates = {1, 3, 4, 6};
  moelab::NeighbourGraph g = moelab::nearest_neighbours(e, candidates, 5, 0.4);
  ASSERT_EQ(g.index.size(1), 3);  // k capped at the candidates other than the sample itself
  for (long long i = 0; i < 8; ++i) {
    EXPECT_NEAR(g.weight[i].sum().item<double>(), 1.0, 1e-6);
    for (long long j = 0; j < 3; ++j) {
      long long n = g.index[i][j].item<int64_t>();
      EXPECT_NE(n, i);
      EXPECT_TRUE(std::find(candidates.begin(), candidates.end(), n) != candidates.end());
      EXPECT_NEAR(g.cosine[i][j].item<double>(), e[i].dot(e[n]).item<double>(), 1e-6);
    }
  }
}


// Identical questions embed identically; which of them become neighbours must not depend on the
// LibTorch version or device (topk orders ties arbitrarily): the lower index wins.
TEST(Neighbours, TiesGoToTheLowerIndex) {
  torch::Tensor e = torch::zeros({40, 4});
  e.select(1, 0).fill_(1.0);               // 40 identical rows: every candidate ties with every other
  e[0] = torch::tensor({0.6, 0.8, 0.0, 0.0});  // the query row differs, so its similarity to each is 0.6
  moelab::NeighbourGraph g = moelab::nearest_neighbours(e, {}, 5, 0.4);
  EXPECT_TRUE(torch::equal(g.index[0], torch::tensor({1, 2, 3, 4, 5}, torch::kInt64))) << g.index[0];
  EXPECT_TRUE(torch::equal(g.index[39], torch::tensor({1, 2, 3, 4, 5}, torch::kInt64))) << g.index[39];
  EXPECT_TRUE(torch::equal(g.index[2], torch::tensor({1, 3, 4, 5, 6}, torch::kInt64))) << g.index[2];
  // Cosines a rounding error apart (another BLAS's summation order) are ties too.
  e[3][0] = 1.0f + 3e-7f;  // row 3 is now a hair closer to every other than they are to each other
  g = moelab::nearest_neighbours(e, {}, 5, 0.4);
  EXPECT_TRUE(torch::equal(g.index[39], torch::tensor({1, 2, 3, 4, 5}, torch::kInt64))) << g.index[39];
}
// The public evaluation read the first letter of prompt + answer, so a prompt starting with "A" made
// every prediction "A". Ours reads the answer letters' logits at the last prompt token.
TEST(Evaluate, PromptStartingWithAIsNotReadAsTheAnswerAndChanceIsFlagged) {
  TempDir dir;
  std::string rows;
  for (int i = 0; i < 24; ++i)
    rows += R"({"id": "e)" + std::to_string(i) + R"(", "question": "Answer with only a single letter (A, B, C, D). What is )" +
            std::to_string(i) + R"( plus one?", "choices": ["A) )" + std::to_string(i + 1) + R"(", "B) 7", "C) 40", "D) 2"], "answer": ")" +
            std::string(1, static_cast<char>('A' + i % 4)) + "\"}\n";
  dir.write("eval.jsonl", rows);
  auto run = moelab::test::start_run(dir, "stages = [\"eval\"]\n[data]\nplugin = \"jsonl\"\npath = \"eval.jsonl\"\n"
                                          "[eval]\nplugin = \"evaluate\"\ndataset = \"data\"\nbatch_size = 5\n");
  auto stage = run->make<moelab::Stage>("eval");
  fs::create_directories(dir.path() / "out");
  nlohmann::json summary;
  stage->run(dir.path() / "out", summary);
  auto predictions = nlohmann::json::parse(moelab::read_file(dir.path() / "out" / "predictions.json"));
  ASSERT_EQ(predictions.size(), 24u);

  auto data = run->make<moelab::Dataset>("data");
  EXPECT_EQ(data->at(0).choices[0], "1");  // the seed form's "A) " prefix is not part of the choice
  std::set<std::string> letters;
  torch::NoGradGuard no_grad;
  for (std::size_t i = 0; i < 24; ++i) {
    moelab::McItem item = moelab::prepare_item(data->at(i), run->tokenizer(), {}, 1024);
    torch::Tensor ids = torch::tensor(item.prompt_ids).unsqueeze(0);
    torch::Tensor last = run->model().forward(ids, {})[0][-1];
    long long expected = last.index_select(0, torch::tensor(item.letter_ids).to(last.device())).argmax().item<int64_t>();
    EXPECT_EQ(predictions[i]["base"]["letter"], item.letters[expected]) << "question " << i;
    letters.insert(predictions[i]["base"]["letter"].get<std::string>());
  }
  EXPECT_GT(letters.size(), 1u) << "every prediction is the same letter";
  // A random model is at chance on these questions, and the evaluation says so.
  std::string warnings = summary["warnings"].dump();
  EXPECT_THAT(warnings, HasSubstr("within chance")) << warnings;
}

TEST(RoutingResults, BadEntriesNameTheFileAndTheEntry) {
  TempDir dir;
  dir.write("rr.json", R"({"q1": {"input_text": "x", "correct_answer": "A", "last_token_routing": {"layers": [{"layer": 1, "routing_weights": {"e3": 0.5}}]}}})");
  auto run = moelab::test::start_run(dir, "stages = []\n[rr]\nplugin = \"routing_results\"\npath = \"rr.json\"\n");
  EXPECT_THAT(moelab::test::error_of([&] { run->make<moelab::Dataset>("rr"); }), HasSubstr("rr.json [\"q1\"]: routing key \"e3\" is not expert_<e>"));
  dir.write("rr.json", R"({"q1": {"correct_answer": "A", "last_token_routing": {"layers": []}}})");
  EXPECT_THAT(moelab::test::error_of([&] { run->make<moelab::Dataset>("rr"); }), HasSubstr("rr.json [\"q1\"]: missing \"input_text\""));
  dir.write("rr.json", "{not json");
  EXPECT_THAT(moelab::test::error_of([&] { run->make<moelab::Dataset>("rr"); }), HasSubstr("rr.json: not valid JSON"));
}

TEST(MultipleChoice, AnItemWithoutGoldAnswerIsNamed) {
  auto tokenizer = moelab::Tokenizer::from_file(kTiny / "tokenizer.json");
  moelab::Example ex;
  ex.id = "q7";
  ex.origin = "data.jsonl:7";
  ex.text = "Which?";
  ex.choices = {"a", "b"};
  ex.letters = {"A", "B"};
  EXPECT_THAT(moelab::test::error_of([&] { moelab::prepare_item(ex, *tokenizer, {}, 64); }),
              HasSubstr("data.jsonl:7: item 'q7' has no gold answer"));
}

TEST(RouterCheckpoint, RoundTripChecksTheModelAndReportsTheChange) {
  TempDir dir;
  auto model = moelab::load_model(kTiny, torch::kCPU, torch::kFloat32);
  std::map<int, torch::Tensor> base;
  torch::NoGradGuard no_grad;
  for (int l : {4, 5}) base[l] = model->router_weight(l).clone();
  model->router_weight(5).add_(0.1);
  torch::Tensor tuned = model->router_weight(5).clone();
  fs::path file = dir.path() / "routers.safetensors";
  moelab::save_router_checkpoint(file, *model, {4, 5}, base, {{"steps", "7"}});
  for (auto& [l, w] : base) model->router_weight(l).copy_(w);

  moelab::SafetensorsFile saved(file);
  EXPECT_EQ(saved.metadata().at("steps"), "7");
  EXPECT_EQ(saved.metadata().at("target_layers"), "4,5");
  auto change = moelab::apply_router_checkpoint(file, *model);
  EXPECT_TRUE(torch::equal(model->router_weight(5), tuned));
  EXPECT_EQ(change.at(4), 0.0);
  EXPECT_NEAR(change.at(5), (0.1 * std::sqrt(static_cast<double>(tuned.numel()))) / base[5].norm().item<double>(), 1e-4);

  // Applied again, the model's gates are no longer the base the checkpoint was trained from.
  EXPECT_THAT(moelab::test::error_of([&] { moelab::apply_router_checkpoint(file, *model); }), HasSubstr("other base routers"));
  auto other = moelab::load_model(fs::path(MOELAB_SOURCE_DIR) / "tests/fixtures/models/qwen3_moe", torch::kCPU, torch::kFloat32);
  EXPECT_THAT(moelab::test::error_of([&] { moelab::apply_router_checkpoint(file, *other); }), HasSubstr("made for model"));
}

TEST(RomaLast5, MainConfigRunsEndToEndWithPairedEvaluationAndALiveRegularizer) {
  TempDir dir;
  auto r = moelab::test::run_command(moelab::test::runexp_binary() + " " + MOELAB_SOURCE_DIR + "/configs/roma_last5.toml --set run_dir=" +
                                     dir.path().string());
  ASSERT_EQ(r.status, 0) << r.output;
  fs::path run = fs::directory_iterator(dir.path() / "roma_last5")->path();
  auto summary = nlohmann::json::parse(moelab::read_file(run / "summary.json"));
  const auto& epochs = summary["stages"]["train"]["epochs"];
  ASSERT_EQ(epochs.size(), 3u);
  EXPECT_NE(epochs[0]["reg"], epochs[2]["reg"]);
  const auto& eval = summary["stages"]["eval"];
  EXPECT_TRUE(eval["base"]["letter"].contains("accuracy"));
  EXPECT_TRUE(eval["finetuned"]["letter"].contains("accuracy"));
  EXPECT_TRUE(eval["paired"]["letter"].contains("mcnemar_p"));
  for (const auto& [layer, change] : eval["router_change"].items()) EXPECT_GT(change.get<double>(), 0) << layer;
  std::string log = moelab::read_file(run / "log.txt");
  EXPECT_THAT(log, HasSubstr("reg_grad_norm"));
  EXPECT_THAT(log, testing::Not(HasSubstr("has no gradient")));
  EXPECT_TRUE(fs::exists(run / "collect" / "routing_results.json"));
}

}  // namespace
