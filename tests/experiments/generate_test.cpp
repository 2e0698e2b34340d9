// The generate stage's QA metrics, lm-eval-style loglik scoring in evaluate, and the model_mean
// embedder, each against values recomputed here from the model.
#include "moelab/moelab.h"
#include "test_run.h"

#include <gmock/gmock.h>

#include <sstream>

using moelab::test::TempDir;

namespace {

namespace fs = std::filesystem;

nlohmann::json run_stage(const TempDir& dir, std::unique_ptr<moelab::ExperimentRun>& run, const std::string& toml, const std::string& stage,
                         const std::string& folder) {
  run = moelab::test::start_run(dir, toml);
  fs::create_directories(dir.path() / folder);
  nlohmann::json summary;
  run->make<moelab::Stage>(stage)->run(dir.path() / folder, summary);
  return summary;
}

TEST(Generate, ExactMatchAndF1AreOneWhenTheAnswersAreWhatGreedySays) {
  TempDir dir;
  dir.write("qa.jsonl", R"({"id": "a", "question": "Name a color.", "answers": ["none"]})" "\n"
                        R"({"id": "b", "question": "Name a planet.", "answers": ["none"]})" "\n");
  auto toml = [](const std::string& data) {
    return "stages = []\n[qa]\nplugin = \"jsonl\"\npath = \"" + data + "\"\ntext_field = \"question\"\n[greedy]\nplugin = \"plain\"\n"
           "[gen]\nplugin = \"generate\"\ndataset = \"qa\"\nsampler = \"greedy\"\nmax_new_tokens = 6\nstop = []\n";
  };
  std::unique_ptr<moelab::ExperimentRun> run;
  auto first = run_stage(dir, run, toml("qa.jsonl"), "gen", "first");
  EXPECT_EQ(first["greedy"]["generated_tokens"], 12);
  // The same prompts, answered with greedy's own text (and a wrong alternative).
  std::istringstream first_lines(moelab::read_file(dir.path() / "first" / "generations.jsonl"));
  std::string rows;
  for (std::string line; std::getline(first_lines, line);) {
    auto g = nlohmann::json::parse(line);
    rows += nlohmann::json({{"id", g["id"]}, {"question", "-"}, {"prompt", g["prompt"]}, {"answers", {g["greedy"], "something else"}}}).dump() + "\n";
  }
  dir.write("gold.jsonl", rows);
  auto second = run_stage(dir, run, toml("gold.jsonl"), "gen", "second");
  EXPECT_EQ(second["greedy"]["exact_match"], 1.0);
  EXPECT_EQ(second["greedy"]["f1"], 1.0);
}

TEST(Evaluate, LoglikScoringPicksTheMostLikelyContinuation) {
  TempDir dir;
  dir.write("mc.jsonl", R"({"id": "q1", "question": {"stem": "What do bees make?", "choices": [{"text": "honey", "label": "A"}, {"text": "steel beams", "label": "B"}, {"text": "rain", "label": "C"}]}, "answerKey": "A"})" "\n"
                        R"({"id": "q2", "question": {"stem": "Which is a planet?", "choices": [{"text": "Mars", "label": "A"}, {"text": "a small blue chair", "label": "B"}]}, "answerKey": "A"})" "\n");
  std::unique_ptr<moelab::ExperimentRun> run;
  run_stage(dir, run, "stages = []\n[mc]\nplugin = \"jsonl\"\npath = \"mc.jsonl\"\n[eval]\nplugin = \"evaluate\"\ndataset = \"mc\"\nscoring = \"loglik\"\n",
            "eval", "out");
  auto predictions = nlohmann::json::parse(moelab::read_file(dir.path() / "out" / "predictions.json"));
  auto data = run->make<moelab::Dataset>("mc");
  torch::NoGradGuard no_grad;
  for (std::size_t i = 0; i < data->size(); ++i) {
    const auto& ex = data->at(i);
    std::vector<std::int64_t> context = run->tokenizer().encode("Question: " + ex.text + "\nAnswer:");
    std::vector<double> sum, per_byte;
    for (const auto& choice : ex.choices) {
      std::vector<std::int64_t> cont = run->tokenizer().encode(" " + choice), ids = context;
      ids.insert(ids.end(), cont.begin(), cont.end());
      torch::Tensor logp = run->model().forward(torch::tensor(ids).unsqueeze(0), {})[0].log_softmax(-1).cpu();
      double s = 0;
      for (std::size_t t = 0; t < cont.size(); ++t) s += logp[static_cast<long long>(context.size() + t - 1)][cont[t]].item<double>();
      sum.push_back(s);
      per_byte.push_back(s / static_cast<double>(choice.size() + 1));
    }
    auto best = [&](const std::vector<double>& v) { return ex.letters[std::max_element(v.begin(), v.end()) - v.begin()]; };
    EXPECT_EQ(predictions[i]["base"]["acc"], best(sum)) << ex.id;
    EXPECT_EQ(predictions[i]["base"]["acc_norm"], best(per_byte)) << ex.id;
  }
}

TEST(ModelMean, IsTheUnitMeanOfTheFinalHiddenStates) {
  TempDir dir;
  auto run = moelab::test::start_run(dir, "stages = []\n[e]\nplugin = \"model_mean\"\nbatch_size = 2\n");
  std::vector<std::string> texts = {"Plants need light.", "A much longer sentence about the water cycle and rain."};
  torch::Tensor got = run->make<moelab::Embedder>("e")->embed(texts);
  torch::NoGradGuard no_grad;
  for (std::size_t i = 0; i < texts.size(); ++i) {
    run->model().forward(torch::tensor(run->tokenizer().encode(texts[i])).unsqueeze(0), {});
    torch::Tensor mean = run->model().hidden_states()[0].mean(0).cpu();
    EXPECT_TRUE(torch::allclose(got[static_cast<long long>(i)], mean / mean.norm(), 1e-4, 1e-5)) << i;
  }
}

}  // namespace
