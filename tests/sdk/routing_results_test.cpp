// The routing-results writer and reader share one record: what is written reads back the same.
#include "moelab/lib/files.h"
#include "moelab/lib/routing_results.h"
#include "test_run.h"

#include <gmock/gmock.h>

namespace {

moelab::RoutingResult question() {
  moelab::RoutingResult r;
  r.key = "q1";
  r.input_text = "Question: 2 + 2?\nA. 3\nB. 4\nAnswer:";
  r.correct_answer = "B";
  r.model_answer = "A";
  r.is_correct = false;
  r.letters = {"A", "B"};
  r.routing = {{1, {0.125, 0.5, 0.375}}, {3, {0.0, 0.25, 0.75}}};
  r.token_id = 42;
  r.token_text = ":";
  return r;
}

moelab::RoutingResult document() {
  moelab::RoutingResult r;
  r.key = "prose/7";
  r.input_text = "A paragraph of prose.";
  r.set = "prose";  // no letters, no model answer: neither is written
  r.routing = {{1, {0.5, 0.25, 0.25}}};
  r.token_id = 5;
  r.token_text = ".";
  return r;
}

void expect_same(const moelab::RoutingResult& read, const moelab::RoutingResult& written) {
  EXPECT_EQ(read.key, written.key);
  EXPECT_EQ(read.input_text, written.input_text);
  EXPECT_EQ(read.correct_answer, written.correct_answer);
  EXPECT_EQ(read.model_answer, written.model_answer);
  EXPECT_EQ(read.is_correct, written.is_correct);
  EXPECT_EQ(read.letters, written.letters);
  EXPECT_EQ(read.routing, written.routing);
  EXPECT_EQ(read.token_id, written.token_id);
  EXPECT_EQ(read.token_text, written.token_text);
  EXPECT_EQ(read.set, written.set);
}

TEST(RoutingResults, WrittenRecordsReadBackTheSame) {
  moelab::test::TempDir dir;
  auto file = dir.path() / "routing_results.json";
  moelab::write_routing_results(file, {question(), document()});
  auto results = moelab::read_routing_results(file);
  ASSERT_EQ(results.size(), 2u);  // in key order
  moelab::RoutingResult read_document = document();
  read_document.letters = {"A", "B", "C", "D"};  // what the reader gives an entry without choice_letters
  expect_same(results[0], read_document);
  expect_same(results[1], question());
  EXPECT_EQ(results[1].origin, file.string() + " [\"q1\"]");
  EXPECT_EQ(results[1].entry["last_token_routing"]["layers"][0]["routing_weights"]["expert_2"], 0.375);
  EXPECT_FALSE(results[0].entry.contains("choice_letters"));  // a document has no choices
  EXPECT_FALSE(results[0].entry.contains("model_answer"));
}

TEST(RoutingResults, NonzeroWeightsKeepOnlyTheRecordedExperts) {
  moelab::test::TempDir dir;
  auto file = dir.path() / "top_k.json";
  moelab::write_routing_results(file, {question()}, moelab::RoutingWeights::nonzero);
  auto written = moelab::read_json(file);
  EXPECT_EQ(written["q1"]["last_token_routing"]["layers"][1]["routing_weights"].size(), 2u);  // layer 3's expert 0 has weight 0
  auto results = moelab::read_routing_results(file);
  ASSERT_EQ(results.size(), 1u);
  expect_same(results[0], question());  // the reader fills unwritten experts with 0
}

}  // namespace
