// The generate stage's QA metrics (SQuAD v1.1's normalisation), stop ids and defaults from the checkpoint's
// own files, prompts with the post_processor's special tokens; perplexity's token stream with them;
// lm-eval-style loglik scoring in evaluate, and the model_mean embedder, each against values recomputed
// here from the model.
#include "moelab/moelab.h"
#include "moelab/lib/calibration.h"
#include "moelab/lib/files.h"
#include "moelab/lib/generation_config.h"
#include "moelab/lib/loglik.h"
#include "moelab/lib/python_str.h"
#include "moelab/lib/qa_metrics.h"
#include "test_run.h"

#include <gmock/gmock.h>

#include <chrono>
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

// Expected values are what the official SQuAD v1.1 evaluate-v1.1.py returns for the same strings.
TEST(SquadMetrics, NormaliseAsTheOfficialScript) {
  EXPECT_EQ(moelab::squad_normalize("The U.S. (1,000 km)"), "us 1000 km");
  EXPECT_EQ(moelab::squad_exact_match("U.S.", "US"), 1.0);  // punctuation deleted, not turned into spaces
  EXPECT_EQ(moelab::squad_exact_match("1,000 km", "1000 km"), 1.0);
  EXPECT_EQ(moelab::squad_exact_match("The Eiffel Tower", "eiffel tower"), 1.0);
  EXPECT_EQ(moelab::squad_exact_match("  an  apple\tpie ", "apple pie"), 1.0);
  EXPECT_EQ(moelab::squad_exact_match("theater", "ater"), 0.0);  // articles only as whole words
  EXPECT_EQ(moelab::squad_normalize("\u201cthe\u201d Caf\u00c9 \u00c0 la carte"), "\u201c \u201d caf\u00e9 \u00e0 la carte");
  EXPECT_EQ(moelab::squad_normalize("self-driving car's"), "selfdriving cars");
  // prediction "the big red fox" -> [big, red, fox]; gold "a red fox jumped" -> [red, fox, jumped]:
  // 2 common tokens, precision 2/3, recall 2/3, F1 2/3.
  EXPECT_DOUBLE_EQ(moelab::squad_f1("the big red fox", "a red fox jumped"), 2.0 / 3.0);
  // Repeated tokens count once per occurrence in both: [fox, fox, fox] vs [fox, fox, den]: common 2,
  // precision 2/3, recall 2/3.
  EXPECT_DOUBLE_EQ(moelab::squad_f1("fox fox fox", "fox fox den"), 2.0 / 3.0);
  EXPECT_DOUBLE_EQ(moelab::squad_f1("U.S. Navy", "the US navy"), 1.0);
  EXPECT_EQ(moelab::squad_f1("The", "a"), 0.0);  // nothing left on either side: v1.1 scores F1 0 (EM 1)
  EXPECT_EQ(moelab::squad_exact_match("The", "a"), 1.0);
}

TEST(GenerationConfig, StopIdsAreEveryEosOfBothFiles) {
  TempDir dir;
  dir.write("config.json", R"({"eos_token_id": [5, 2]})");
  EXPECT_EQ(moelab::stop_token_ids(dir.path()), std::vector<std::int64_t>({5, 2}));
  EXPECT_EQ(moelab::generation_config(dir.path()), nlohmann::json::object());
  dir.write("generation_config.json", R"({"eos_token_id": [2, 7, 9], "max_new_tokens": 3})");
  EXPECT_EQ(moelab::stop_token_ids(dir.path()), std::vector<std::int64_t>({5, 2, 7, 9}));
  EXPECT_EQ(moelab::generation_config(dir.path())["max_new_tokens"], 3);
  dir.write("config.json", R"({"eos_token_id": null})");
  dir.write("generation_config.json", R"({"eos_token_id": 4})");
  EXPECT_EQ(moelab::stop_token_ids(dir.path()), std::vector<std::int64_t>({4}));
  dir.write("generation_config.json", R"({"eos_token_id": ["</s>"]})");
  EXPECT_THAT(moelab::test::error_of([&] { moelab::stop_token_ids(dir.path()); }),
              testing::AllOf(testing::HasSubstr("generation_config.json: eos_token_id: expected an id or a list of ids"),
                             testing::HasSubstr("[\"</s>\"]")));
}

// The tiny model's files in a folder of the test's own, with a generation_config.json and a tokenizer.json
// whose post_processor puts `bos` first when bos >= 0.
fs::path tiny_model_copy(const TempDir& dir, const nlohmann::json& generation_config, std::int64_t bos = -1) {
  const fs::path tiny = fs::path(MOELAB_BINARY_DIR) / "models" / "tiny-olmoe", folder = dir.path() / "model";
  fs::create_directories(folder);
  for (const char* file : {"config.json", "model.safetensors"}) fs::copy_file(tiny / file, folder / file);
  auto tokenizer = nlohmann::json::parse(moelab::read_file(tiny / "tokenizer.json"));
  if (bos >= 0)
    tokenizer["post_processor"] = {{"type", "TemplateProcessing"},
                                   {"single", {{{"SpecialToken", {{"id", "<bos>"}, {"type_id", 0}}}}, {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
                                   {"special_tokens", {{"<bos>", {{"id", "<bos>"}, {"ids", {bos}}, {"tokens", {"<bos>"}}}}}}};
  moelab::write_file_atomic(folder / "tokenizer.json", tokenizer.dump());
  if (!generation_config.is_null()) moelab::write_file_atomic(folder / "generation_config.json", generation_config.dump());
  return folder;
}

// Up to `steps` greedy tokens after `ids`, by full forwards without a cache, ending before `eos`.
std::vector<std::int64_t> greedy(moelab::Model& model, std::vector<std::int64_t> ids, int steps, std::int64_t eos) {
  torch::NoGradGuard no_grad;
  std::vector<std::int64_t> out;
  for (int i = 0; i < steps; ++i) {
    const std::int64_t next = model.forward(torch::tensor(ids).unsqueeze(0), {})[0][-1].argmax().item<std::int64_t>();
    if (next == eos) break;
    out.push_back(next);
    ids.push_back(next);
  }
  return out;
}

std::string generate_toml(const fs::path& model, const std::string& stage_keys) {
  return "stages = []\n[model]\npath = \"" + model.string() + "\"\n[qa]\nplugin = \"jsonl\"\npath = \"qa.jsonl\"\ntext_field = \"question\"\n"
         "[greedy]\nplugin = \"plain\"\n[gen]\nplugin = \"generate\"\ndataset = \"qa\"\nsampler = \"greedy\"\nstop = []\n" + stage_keys;
}

const char* const kPrompt = "Question: Name a color.\nAnswer:";
constexpr std::int64_t kTinyEos = 0;  // the tiny model's config.json

TEST(Generate, StopsAtEveryEosIdOfGenerationConfig) {
  TempDir dir;
  dir.write("qa.jsonl", R"({"id": "a", "question": "Name a color.", "answers": ["red"]})" "\n");
  const fs::path model = tiny_model_copy(dir, nullptr);
  auto run = moelab::test::start_run(dir, generate_toml(model, "max_new_tokens = 6\n"));
  const std::vector<std::int64_t> tokens = greedy(run->model(), run->tokenizer().encode(kPrompt, true), 6, kTinyEos);
  ASSERT_EQ(tokens.size(), 6u);
  ASSERT_TRUE(tokens[0] != tokens[2] && tokens[1] != tokens[2] && tokens[0] != 999 && tokens[1] != 999) << "the test needs another prompt";
  // The first eos id never comes; the second is greedy's third token, so two tokens are kept.
  moelab::write_file_atomic(model / "generation_config.json", nlohmann::json({{"eos_token_id", {999, tokens[2]}}}).dump());
  fs::create_directories(dir.path() / "out");
  nlohmann::json summary;
  run->make<moelab::Stage>("gen")->run(dir.path() / "out", summary);
  EXPECT_EQ(summary["greedy"]["generated_tokens"], 2);
  auto line = nlohmann::json::parse(moelab::read_file(dir.path() / "out" / "generations.jsonl"));
  EXPECT_EQ(line["greedy"], run->tokenizer().decode({tokens[0], tokens[1]}));
}

TEST(Generate, MaxNewTokensComesFromGenerationConfigUnlessTheTableSetsIt) {
  TempDir dir;
  dir.write("qa.jsonl", R"({"id": "a", "question": "Name a color.", "answers": ["red"]})" "\n"
                        R"({"id": "b", "question": "Name a planet.", "answers": ["none"]})" "\n");
  const fs::path model = tiny_model_copy(dir, {{"max_new_tokens", 3}, {"do_sample", true}, {"temperature", 0.6}, {"top_p", 0.95}});
  std::unique_ptr<moelab::ExperimentRun> run;
  EXPECT_EQ(run_stage(dir, run, generate_toml(model, ""), "gen", "from_file")["greedy"]["generated_tokens"], 6);
  EXPECT_EQ(run_stage(dir, run, generate_toml(model, "max_new_tokens = 5\n"), "gen", "from_table")["greedy"]["generated_tokens"], 10);
}

// The decode loop's fast paths change nothing: a static cache or a growing one, the host reading the
// tokens every step or every few, give the same text and token counts, with stop strings that cut rows
// mid-read and RoE (replica forwards over the shared prefix, exact history) as well as greedy.
TEST(Generate, StaticCacheAndReadEveryGiveTheSameText) {
  TempDir dir;
  std::string rows;
  for (const char* q : {"Name a color.", "Name a planet far away from here.", "Why?", "Count to three, please."})
    rows += nlohmann::json({{"id", q}, {"question", q}, {"answers", {"x"}}}).dump() + "\n";
  dir.write("qa.jsonl", rows);
  auto generate = [&](const std::string& keys, const std::string& folder) {
    const std::string toml = "stages = []\n[qa]\nplugin = \"jsonl\"\npath = \"qa.jsonl\"\ntext_field = \"question\"\n"
                             "[greedy]\nplugin = \"plain\"\n[roe]\nplugin = \"roe\"\nk = 3\nhistory = \"exact\"\ntau_mode = \"fixed\"\ntau_middle = 0.5\n"
                             "[gen]\nplugin = \"generate\"\ndataset = \"qa\"\nbaseline = \"greedy\"\nsampler = \"roe\"\n"
                             "max_new_tokens = 12\nbatch_size = 3\nstop = [\"e\", \"a\"]\n" + keys;
    std::unique_ptr<moelab::ExperimentRun> run;
    nlohmann::json summary = run_stage(dir, run, toml, "gen", folder);
    return std::make_pair(summary, moelab::read_file(dir.path() / folder / "generations.jsonl"));
  };
  const auto reference = generate("static_cache = false\nread_every = 1\n", "reference");
  const long long greedy_tokens = reference.first["greedy"]["generated_tokens"], roe_tokens = reference.first["roe"]["generated_tokens"];
  ASSERT_GT(greedy_tokens, 0);
  ASSERT_LT(greedy_tokens, 4 * 12) << "no stop string met: the test needs other stops";
  ASSERT_GT(roe_tokens, 0);
  for (const std::string keys : {"static_cache = true\ncontinuous_batching = false\nread_every = 1\n",
                                  "static_cache = true\ncontinuous_batching = false\nread_every = 5\n",
                                  "static_cache = false\nread_every = 12\n"}) {
    const auto other = generate(keys, "other");
    EXPECT_EQ(other.second, reference.second) << keys;
    EXPECT_EQ(other.first["greedy"]["generated_tokens"], greedy_tokens) << keys;
    EXPECT_EQ(other.first["roe"]["generated_tokens"], roe_tokens) << keys;
  }
}

// Continuous batching: rows whose prompt ended take waiting prompts; greedy text and token counts equal
// decoding the prompts in whole batches, and every prompt gets its text in the dataset's order.
TEST(Generate, ContinuousBatchingGivesGreedysText) {
  TempDir dir;
  std::string rows;
  int n = 0;
  for (const char* q : {"Name a color.", "Name a planet far away from here.", "Why?", "Count to three, please.", "A", "Tell me a story about",
                        "Is water wet?", "Sum 2 and 2."})
    rows += nlohmann::json({{"id", std::to_string(n++)}, {"question", q}, {"answers", {"x"}}}).dump() + "\n";
  dir.write("qa.jsonl", rows);
  auto generate = [&](const std::string& keys, const std::string& folder) {
    const std::string toml = "stages = []\n[qa]\nplugin = \"jsonl\"\npath = \"qa.jsonl\"\ntext_field = \"question\"\n"
                             "[greedy]\nplugin = \"plain\"\n[gen]\nplugin = \"generate\"\ndataset = \"qa\"\nsampler = \"greedy\"\n"
                             "max_new_tokens = 10\nbatch_size = 3\nstop = [\"e\"]\n" + keys;
    std::unique_ptr<moelab::ExperimentRun> run;
    nlohmann::json summary = run_stage(dir, run, toml, "gen", folder);
    return std::make_pair(summary["greedy"]["generated_tokens"].get<long long>(), moelab::read_file(dir.path() / folder / "generations.jsonl"));
  };
  const auto whole = generate("continuous_batching = false\nsort_by_length = false\nread_every = 1\n", "whole");
  ASSERT_LT(whole.first, 8 * 10) << "no row ended early: the test needs another stop";
  for (const std::string keys : {"continuous_batching = true\nread_every = 1\n", "continuous_batching = true\nread_every = 4\n",
                                  "continuous_batching = true\nsort_by_length = false\nread_every = 3\n"}) {
    const auto other = generate(keys, "other");
    EXPECT_EQ(other.second, whole.second) << keys;
    EXPECT_EQ(other.first, whole.first) << keys;
  }
}

// HF's tokenizer(text) puts the post_processor's BOS first; add_special_tokens = false leaves it out.
TEST(Generate, PromptsGetThePostProcessorsSpecialTokens) {
  TempDir dir;
  dir.write("qa.jsonl", R"({"id": "a", "question": "Name a color.", "answers": ["red"]})" "\n");
  const std::int64_t bos = 7;
  const fs::path model = tiny_model_copy(dir, nullptr, bos);
  std::unique_ptr<moelab::ExperimentRun> run;
  std::map<bool, std::string> expected;
  for (bool add : {true, false}) {
    const std::string folder = add ? "with" : "without";
    run_stage(dir, run, generate_toml(model, std::string("max_new_tokens = 4\nadd_special_tokens = ") + (add ? "true" : "false") + "\n"),
              "gen", folder);
    std::vector<std::int64_t> prompt = run->tokenizer().encode(kPrompt);
    ASSERT_EQ(run->tokenizer().encode(kPrompt, true).front(), bos);
    if (add) prompt.insert(prompt.begin(), bos);
    expected[add] = run->tokenizer().decode(greedy(run->model(), prompt, 4, kTinyEos));
    EXPECT_EQ(nlohmann::json::parse(moelab::read_file(dir.path() / folder / "generations.jsonl"))["greedy"], expected[add]) << folder;
  }
  EXPECT_NE(expected[true], expected[false]) << "the BOS must change greedy's text for this test to see it";
}

// token_stream puts the post_processor's tokens once before the documents joined by blank lines, as HF's
// tokenizer("\n\n".join(texts)); perplexity scores the windows of that stream, or of the bare one.
TEST(Perplexity, ScoresTheStreamWithThePostProcessorsTokensUnlessTurnedOff) {
  TempDir dir;
  dir.write("text.txt", "The clockmaker repaired watches.\n\nRain fell on the town all night.\n");
  const std::int64_t bos = 7;
  const fs::path model = tiny_model_copy(dir, nullptr, bos);
  const std::string toml = "stages = []\n[model]\npath = \"" + model.string() + "\"\n[text]\nplugin = \"text\"\npath = \"text.txt\"\n"
                           "[ppl]\nplugin = \"perplexity\"\ndataset = \"text\"\nseqlen = 8\nmax_windows = 1\n";
  std::map<bool, double> mean_nll;
  for (bool add : {true, false}) {
    std::unique_ptr<moelab::ExperimentRun> run;
    auto summary = run_stage(dir, run, toml + "add_special_tokens = " + (add ? "true" : "false") + "\n", "ppl", add ? "with" : "without");
    std::vector<std::int64_t> ids = run->tokenizer().encode("The clockmaker repaired watches.\n\nRain fell on the town all night.");
    if (add) ids.insert(ids.begin(), bos);
    EXPECT_TRUE(torch::equal(moelab::token_stream(*run->make<moelab::Dataset>("text"), run->tokenizer(), add), torch::tensor(ids))) << add;
    torch::NoGradGuard no_grad;
    ASSERT_GE(ids.size(), 8u);
    torch::Tensor logp = run->model().forward(torch::tensor(std::vector<std::int64_t>(ids.begin(), ids.begin() + 8)).unsqueeze(0), {})[0].log_softmax(-1);
    double nll = 0;
    for (int t = 0; t < 7; ++t) nll -= logp[t][ids[t + 1]].item<double>();
    mean_nll[add] = summary["base"]["mean_nll"].get<double>();
    EXPECT_NEAR(mean_nll[add], nll / 7, 1e-5) << add;
  }
  EXPECT_NE(mean_nll[true], mean_nll[false]);
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
    std::vector<double> sum, per_character;
    for (const auto& choice : ex.choices) {
      // lm-eval's _encode_pair: the continuation's ids are the tail of the whole text's.
      auto pair = moelab::encode_pair(run->tokenizer(), "Question: " + ex.text + "\nAnswer:", " " + choice);
      std::vector<std::int64_t> context = pair.context, cont = pair.continuation, ids = context;
      ids.insert(ids.end(), cont.begin(), cont.end());
      torch::Tensor logp = run->model().forward(torch::tensor(ids).unsqueeze(0), {})[0].log_softmax(-1).cpu();
      double s = 0;
      for (std::size_t t = 0; t < cont.size(); ++t) s += logp[static_cast<long long>(context.size() + t - 1)][cont[t]].item<double>();
      sum.push_back(s);
      per_character.push_back(s / static_cast<double>(moelab::py::len(choice)));
    }
    auto best = [&](const std::vector<double>& v) { return ex.letters[std::max_element(v.begin(), v.end()) - v.begin()]; };
    EXPECT_EQ(predictions[i]["base"]["acc"], best(sum)) << ex.id;
    EXPECT_EQ(predictions[i]["base"]["acc_norm"], best(per_character)) << ex.id;
    for (std::size_t c = 0; c < sum.size(); ++c) EXPECT_NEAR(predictions[i]["base"]["loglik"][c].get<double>(), sum[c], 1e-4) << ex.id;
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

// A batch whose KV cache cannot fit stops before any forward, with what it needs, what there is and the
// keys that set it (here the CPU's MemAvailable: 4 rows x ~1e9 positions of the tiny model are terabytes).
TEST(Generate, ABatchWhoseCacheCannotFitStopsBeforeAnyWorkNamingTheKeys) {
  TempDir dir;
  dir.write("qa.jsonl", R"({"id": "a", "question": "Name a color.", "answers": ["red"]})" "\n");
  std::unique_ptr<moelab::ExperimentRun> run;
  const std::string toml = "stages = []\n[model]\ndevice = \"cpu\"\n[qa]\nplugin = \"jsonl\"\npath = \"qa.jsonl\"\ntext_field = \"question\"\n"
                           "[greedy]\nplugin = \"plain\"\n[gen]\nplugin = \"generate\"\ndataset = \"qa\"\nsampler = \"greedy\"\nstop = []\n"
                           "batch_size = 4\nmax_new_tokens = 1000000000\n";
  const auto started = std::chrono::steady_clock::now();
  try {
    run_stage(dir, run, toml, "gen", "out");
    FAIL() << "a terabyte cache was not refused";
  } catch (const std::exception& e) {
    EXPECT_THAT(e.what(), testing::HasSubstr("the KV cache needs"));
    EXPECT_THAT(e.what(), testing::HasSubstr("1 rows x 1000000"));  // one prompt: one row, whatever batch_size says
    EXPECT_THAT(e.what(), testing::HasSubstr("[gen] batch_size rows"));
    EXPECT_THAT(e.what(), testing::HasSubstr("max_new_tokens"));
    EXPECT_THAT(e.what(), testing::HasSubstr("MemAvailable"));
  }
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count(), 30.0);
  EXPECT_FALSE(fs::exists(dir.path() / "out" / "generations.jsonl"));
}
