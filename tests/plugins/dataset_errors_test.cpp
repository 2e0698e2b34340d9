// Dataset files with wrong types, deep nesting or bytes that are not UTF-8 end in errors naming the file,
// the line and the key (jsonl gave raw nlohmann messages; text passed bad bytes on to the tokenizer).
#include "moelab/moelab.h"
#include "test_run.h"

#include <gmock/gmock.h>

using testing::HasSubstr;

namespace {

std::string jsonl_error(const std::string& line, const std::string& form = "auto") {
  moelab::test::TempDir dir;
  dir.write("data.jsonl", R"({"question": {"stem": "ok", "choices": ["a", "b"]}, "answerKey": "A"})" "\n" + line + "\n");
  auto run = moelab::test::start_run(dir, "stages = []\n[d]\nplugin = \"jsonl\"\npath = \"data.jsonl\"\nform = \"" + form + "\"\n");
  return moelab::test::error_of([&] { run->make<moelab::Dataset>("d"); });
}

TEST(DatasetErrors, JsonlWrongTypesNameLineAndKey) {
  EXPECT_THAT(jsonl_error(R"({"question_stem": 5, "choices": {"text": ["a"], "label": ["A"]}, "answerKey": "A"})"),
              HasSubstr("data.jsonl:2: question_stem: expected a string, found number 5"));
  EXPECT_THAT(jsonl_error(R"({"question": {"stem": "q", "choices": [{"text": 5, "label": "A"}]}, "answerKey": "A"})"),
              HasSubstr("data.jsonl:2: question.choices[0].text: expected a string, found number 5"));
  EXPECT_THAT(jsonl_error(R"({"question": {"stem": "q", "choices": [{"text": "x", "label": 1}]}, "answerKey": "A"})"),
              HasSubstr("data.jsonl:2: question.choices[0].label: expected a string, found number 1"));
  EXPECT_THAT(jsonl_error(R"({"question": "q", "choices": {"text": ["a", "b"], "label": ["A"]}, "answerKey": "A"})"),
              HasSubstr("data.jsonl:2: choices.label: expected a list of 2 labels, one per choices.text"));
  EXPECT_THAT(jsonl_error(R"({"question": 7, "correct_answer": "x", "distractor1": "y"})"),
              HasSubstr("data.jsonl:2: question: expected a string, found number 7"));
  EXPECT_THAT(jsonl_error(R"({"activity_label": "a", "ctx_a": "b", "ctx_b": "c", "endings": ["d", 4], "label": 0})"),
              HasSubstr("data.jsonl:2: endings[1]: expected a string, found number 4"));
  EXPECT_THAT(jsonl_error(R"({"activity_label": "a", "ctx_a": "b", "ctx_b": "c", "endings": ["d", "e"], "label": 2})"),
              HasSubstr("data.jsonl:2: hellaswag label must be the index of one of the 2 endings, found 2"));
  EXPECT_THAT(jsonl_error(R"({"sentence": "a _ b", "option1": 1, "option2": "y", "answer": "1"})"),
              HasSubstr("data.jsonl:2: option1: expected a string, found number 1"));
  EXPECT_THAT(jsonl_error(R"({"goal": ["g"], "sol1": "a", "sol2": "b", "label": 0})"),
              HasSubstr("data.jsonl:2: goal: expected a string, found array"));
  EXPECT_THAT(jsonl_error("{\"question\": " + std::string(100000, '[') + std::string(100000, ']') + "}"),
              HasSubstr("data.jsonl:2: not valid JSON: nesting deeper than 512 levels"));
}

TEST(DatasetErrors, TextThatIsNotUtf8NamesTheLine) {
  moelab::test::TempDir dir;
  dir.write("bad.txt", "fine line\nab\xff" "cd\n");
  auto run = moelab::test::start_run(dir, "stages = []\n[d]\nplugin = \"text\"\npath = \"bad.txt\"\nsplit = \"line\"\n");
  EXPECT_THAT(moelab::test::error_of([&] { run->make<moelab::Dataset>("d"); }),
              HasSubstr("bad.txt:2: not UTF-8 text: byte 0xFF at column 3"));
  dir.write("good.txt", "caf\xc3\xa9\n\n\xe2\x82\xac 5\n");
  run = moelab::test::start_run(dir, "stages = []\n[d]\nplugin = \"text\"\npath = \"good.txt\"\n");
  EXPECT_EQ(run->make<moelab::Dataset>("d")->size(), 2u);
}

}  // namespace
