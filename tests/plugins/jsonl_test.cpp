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
