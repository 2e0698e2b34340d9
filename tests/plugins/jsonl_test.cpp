// jsonl: ARC records (letter and numeric keys), flat records, and errors that name file and line.
#include "moelab/moelab.h"
#include "test_run.h"

#include <gmock/gmock.h>

using testing::HasSubstr;

namespace {

TEST(Jsonl, ReadsArcRecordsAndMapsNumericKeysToLetters) {
  moelab::test::TempDir dir;
  dir.write("arc.jsonl",
            R"({"id": "q1", "question": {"stem": "Which is a gas?", "choices": [{"text": "ice", "label": "A"}, {"text": "steam", "label": "B"}]}, "answerKey": "B"})"
            "\n\n"
            R"({"id": "q2", "question": {"stem": "Pick three", "choices": [{"text": "1", "label": "1"}, {"text": "2", "label": "2"}, {"text": "3", "label": "3"}]}, "answerKey": "3"})"
            "\n");
  auto run = moelab::test::start_run(dir, "stages = []\n[d]\nplugin = \"jsonl\"\npath = \"arc.jsonl\"\n");
  auto data = run->make<moelab::Dataset>("d");
  ASSERT_EQ(data->size(), 2u);
  EXPECT_EQ(data->at(0).text, "Which is a gas?");
  EXPECT_EQ(data->at(0).choices, (std::vector<std::string>{"ice", "steam"}));
  EXPECT_EQ(data->at(0).answer, 1);
  EXPECT_EQ(data->at(1).letters, (std::vector<std::string>{"A", "B", "C"}));
  EXPECT_EQ(data->at(1).answer, 2);
  EXPECT_THAT(data->at(1).origin, HasSubstr("arc.jsonl:3"));
}

TEST(Jsonl, FlatRecordsWithStringChoicesAndIndexAnswers) {
  moelab::test::TempDir dir;
  dir.write("flat.jsonl", R"({"q": "2+2?", "options": ["3", "4"], "gold": 1})" "\n");
  auto run = moelab::test::start_run(
      dir, "stages = []\n[d]\nplugin = \"jsonl\"\npath = \"flat.jsonl\"\ntext_field = \"q\"\nchoices_field = \"options\"\nanswer_field = \"gold\"\n");
  auto data = run->make<moelab::Dataset>("d");
  EXPECT_EQ(data->at(0).id, "0");
  EXPECT_EQ(data->at(0).answer, 1);
  EXPECT_EQ(data->at(0).letters, (std::vector<std::string>{"A", "B"}));
}

TEST(Jsonl, ErrorsNameFileAndLine) {
  moelab::test::TempDir dir;
  dir.write("bad.jsonl", R"({"question": {"stem": "ok", "choices": ["a", "b"]}, "answerKey": "A"})" "\n{not json\n");
  auto run = moelab::test::start_run(dir, "stages = []\n[d]\nplugin = \"jsonl\"\npath = \"bad.jsonl\"\n");
  EXPECT_THAT(moelab::test::error_of([&] { run->make<moelab::Dataset>("d"); }), HasSubstr("bad.jsonl:2: not valid JSON"));
  dir.write("wrong.jsonl", R"({"question": {"stem": "ok", "choices": ["a", "b"]}, "answerKey": "E"})" "\n");
  run = moelab::test::start_run(dir, "stages = []\n[d]\nplugin = \"jsonl\"\npath = \"wrong.jsonl\"\n");
  EXPECT_THAT(moelab::test::error_of([&] { run->make<moelab::Dataset>("d"); }),
              HasSubstr("wrong.jsonl:1: answer \"E\" is not one of the choice labels"));
}

}  // namespace

namespace {

TEST(Jsonl, RecognizesSeedHuggingFaceArcOpenBookQaAndSciqForms) {
  moelab::test::TempDir dir;
  dir.write("mixed.jsonl",
            R"({"id": "seed", "question": "Which is a gas?", "choices": ["A) ice", "B) steam", "C) rock"], "answer": "B"})" "\n"
            R"({"id": "hf", "question": "Pick two", "choices": {"text": ["one", "two"], "label": ["1", "2"]}, "answerKey": "2"})" "\n"
            R"({"id": "obqa", "question_stem": "Sun is a", "choices": {"text": ["star", "moon"], "label": ["A", "B"]}, "answerKey": "A"})" "\n"
            R"({"id": "sciq", "question": "Water boils at?", "correct_answer": "100 C", "distractor1": "0 C", "distractor2": "50 C", "distractor3": "10 C"})" "\n");
  auto run = moelab::test::start_run(dir, "seed = 3\nstages = []\n[d]\nplugin = \"jsonl\"\npath = \"mixed.jsonl\"\n");
  auto data = run->make<moelab::Dataset>("d");
  ASSERT_EQ(data->size(), 4u);
  EXPECT_EQ(data->at(0).choices, (std::vector<std::string>{"ice", "steam", "rock"}));
  EXPECT_EQ(data->at(0).answer, 1);
  EXPECT_EQ(data->at(1).text, "Pick two");
  EXPECT_EQ(data->at(1).letters, (std::vector<std::string>{"A", "B"}));
  EXPECT_EQ(data->at(1).answer, 1);
  EXPECT_EQ(data->at(2).text, "Sun is a");
  EXPECT_EQ(data->at(2).answer, 0);
  const moelab::Example& sciq = data->at(3);
  ASSERT_EQ(sciq.choices.size(), 4u);
  EXPECT_EQ(sciq.choices[sciq.answer], "100 C");
  // The shuffle follows the run seed: the same seed gives the same order.
  auto again = moelab::test::start_run(dir, "seed = 3\nstages = []\n[d]\nplugin = \"jsonl\"\npath = \"mixed.jsonl\"\n")->make<moelab::Dataset>("d");
  EXPECT_EQ(again->at(3).choices, sciq.choices);
  std::set<long long> gold_positions;
  for (int seed = 0; seed < 12; ++seed) {
    auto other = moelab::test::start_run(dir, "seed = " + std::to_string(seed) + "\nstages = []\n[d]\nplugin = \"jsonl\"\npath = \"mixed.jsonl\"\n");
    gold_positions.insert(other->make<moelab::Dataset>("d")->at(3).answer);
  }
  EXPECT_GT(gold_positions.size(), 1u) << "SciQ's correct answer must not stay in one position";
}

}  // namespace

namespace {

// Each form's lm-eval requests; expected strings are what lm-eval's task definitions (Python) return.
nlohmann::json lm_eval_of(const std::string& line, const std::string& form = "auto") {
  moelab::test::TempDir dir;
  dir.write("one.jsonl", line + "\n");
  auto run = moelab::test::start_run(dir, "stages = []\n[d]\nplugin = \"jsonl\"\npath = \"one.jsonl\"\nform = \"" + form + "\"\n");
  return run->make<moelab::Dataset>("d")->at(0).record.at("lm_eval");
}

TEST(Jsonl, HellaswagIsPreparedAsLmEvalDoes) {
  moelab::test::TempDir dir;
  dir.write("hs.jsonl",
            R"({"activity_label": "Washing a car", "ctx_a": "A woman is outside  with a bucket.", "ctx_b": "SHE  dips a RAG [step] in it", )"
            R"("endings": [" then she [title] wipes    the car. ", "rinses [it\n] off.", "scrubs [a [b] c]."], "label": "2"})" "\n");
  auto run = moelab::test::start_run(dir, "stages = []\n[d]\nplugin = \"jsonl\"\npath = \"hs.jsonl\"\n");
  auto data = run->make<moelab::Dataset>("d");
  const moelab::Example& ex = data->at(0);
  // ctx_b.capitalize() lowers the rest ("RAG" -> "rag"); "  " -> " " is one pass, so four spaces leave two.
  const std::string query = "Washing a car: A woman is outside with a bucket. She dips a rag in it";
  EXPECT_EQ(ex.text, query);
  EXPECT_EQ(ex.choices, (std::vector<std::string>{"then she. wipes  the car.", "rinses [it\n] off.", "scrubs c]."}));
  EXPECT_EQ(ex.answer, 2);
  const auto& lm_eval = ex.record["lm_eval"];
  EXPECT_EQ(lm_eval["task"], "hellaswag");
  EXPECT_EQ(lm_eval["scorings"], nlohmann::json::array({"loglik"}));
  EXPECT_EQ(lm_eval["metrics"], nlohmann::json::array({"acc", "acc_norm"}));
  ASSERT_EQ(lm_eval["requests"].size(), 3u);
  EXPECT_EQ(lm_eval["requests"][0], (nlohmann::json{{"context", query}, {"continuation", " then she. wipes  the car."}}));
}

TEST(Jsonl, WinograndeIsPartialScoringWithTheStrippedRest) {
  auto lm_eval = lm_eval_of(R"({"sentence": "The council refused the demonstrators a permit because _ feared violence.  ", )"
                            R"("option1": "the council", "option2": "the demonstrators", "answer": "1"})");
  EXPECT_EQ(lm_eval["task"], "winogrande");
  EXPECT_EQ(lm_eval["metrics"], nlohmann::json::array({"acc"}));
  EXPECT_EQ(lm_eval["scorings"], nlohmann::json::array({"loglik"}));
  EXPECT_EQ(lm_eval["requests"][0]["context"], "The council refused the demonstrators a permit because the council");
  EXPECT_EQ(lm_eval["requests"][1]["context"], "The council refused the demonstrators a permit because the demonstrators");
  EXPECT_EQ(lm_eval["requests"][0]["continuation"], " feared violence.");
  EXPECT_EQ(lm_eval["requests"][1]["continuation"], " feared violence.");
}

TEST(Jsonl, PiqaAsksTheGoalAsAQuestion) {
  moelab::test::TempDir dir;
  dir.write("piqa.jsonl", R"({"goal": "How do I dry wet shoes?", "sol1": "Stuff them with newspaper.", "sol2": "Put them in the freezer.", "label": 0})" "\n");
  auto run = moelab::test::start_run(dir, "stages = []\n[d]\nplugin = \"jsonl\"\npath = \"piqa.jsonl\"\n");
  auto data = run->make<moelab::Dataset>("d");
  const moelab::Example& ex = data->at(0);
  EXPECT_EQ(ex.choices, (std::vector<std::string>{"Stuff them with newspaper.", "Put them in the freezer."}));
  EXPECT_EQ(ex.answer, 0);
  const auto& lm_eval = ex.record["lm_eval"];
  EXPECT_EQ(lm_eval["task"], "piqa");
  EXPECT_EQ(lm_eval["scorings"], nlohmann::json::array({"loglik"}));
  EXPECT_EQ(lm_eval["requests"][1],
            (nlohmann::json{{"context", "Question: How do I dry wet shoes?\nAnswer:"}, {"continuation", " Put them in the freezer."}}));
  dir.write("bad.jsonl", R"({"goal": "g", "sol1": "a", "sol2": "b", "label": 2})" "\n");
  auto bad = moelab::test::start_run(dir, "stages = []\n[d]\nplugin = \"jsonl\"\npath = \"bad.jsonl\"\n");
  EXPECT_THAT(moelab::test::error_of([&] { bad->make<moelab::Dataset>("d"); }), HasSubstr("bad.jsonl:1: piqa label must be 0 or 1, found 2"));
}

TEST(Jsonl, ArcOpenBookQaAndSciqContextsFollowLmEvalAndAllowLetters) {
  auto arc = lm_eval_of(R"({"question": {"stem": "Which is a gas?", "choices": [{"text": "ice", "label": "A"}, {"text": "steam", "label": "B"}]}, "answerKey": "B"})");
  EXPECT_EQ(arc["task"], "arc");
  EXPECT_EQ(arc["scorings"], nlohmann::json::array({"letter", "loglik"}));
  EXPECT_EQ(arc["requests"][1], (nlohmann::json{{"context", "Question: Which is a gas?\nAnswer:"}, {"continuation", " steam"}}));
  auto seed = lm_eval_of(R"({"question": "2+2?", "choices": ["A) 3", "B) 4"], "answer": "B"})");
  EXPECT_EQ(seed["requests"][1], (nlohmann::json{{"context", "Question: 2+2?\nAnswer:"}, {"continuation", " 4"}}));
  // OpenBookQA: the bare stem; its answerKey may carry a leading space.
  moelab::test::TempDir dir;
  dir.write("obqa.jsonl", R"({"question_stem": "The sun is a", "choices": {"text": ["star", "moon"], "label": ["A", "B"]}, "answerKey": " A"})" "\n");
  auto run = moelab::test::start_run(dir, "stages = []\n[d]\nplugin = \"jsonl\"\npath = \"obqa.jsonl\"\n");
  auto data = run->make<moelab::Dataset>("d");
  const moelab::Example& obqa = data->at(0);
  EXPECT_EQ(obqa.answer, 0);
  EXPECT_EQ(obqa.record["lm_eval"]["requests"][0], (nlohmann::json{{"context", "The sun is a"}, {"continuation", " star"}}));
  EXPECT_EQ(obqa.record["lm_eval"]["scorings"], nlohmann::json::array({"letter", "loglik"}));
  // SciQ: support.lstrip(), then the question.
  auto sciq = lm_eval_of(R"({"question": "Water boils at?", "support": "  Water boils at 100 C.", "correct_answer": "100 C", )"
                         R"("distractor1": "0 C", "distractor2": "50 C", "distractor3": "10 C"})");
  EXPECT_EQ(sciq["task"], "sciq");
  EXPECT_EQ(sciq["requests"][0]["context"], "Water boils at 100 C.\nQuestion: Water boils at?\nAnswer:");
  EXPECT_EQ(sciq["requests"].size(), 4u);
}

TEST(Jsonl, FieldsFormCarriesNoLmEvalTask) {
  moelab::test::TempDir dir;
  dir.write("arc.jsonl", R"({"question": {"stem": "Which is a gas?", "choices": [{"text": "ice", "label": "A"}, {"text": "steam", "label": "B"}]}, "answerKey": "B"})" "\n");
  auto run = moelab::test::start_run(dir, "stages = []\n[d]\nplugin = \"jsonl\"\npath = \"arc.jsonl\"\nform = \"fields\"\n");
  EXPECT_FALSE(run->make<moelab::Dataset>("d")->at(0).record.contains("lm_eval"));
}

}  // namespace
