// The evaluate stage scores each dataset form as lm-eval does by default (HellaSwag, Winogrande, PIQA:
// loglik; ARC and the other lettered forms: letter, loglik on request), logs the choice, and refuses
// what a form does not allow with an error naming the key.
#include "moelab/moelab.h"
#include "moelab/lib/files.h"
#include "moelab/lib/loglik.h"
#include "test_run.h"

#include <gmock/gmock.h>

using moelab::test::TempDir;
using testing::HasSubstr;

namespace {

namespace fs = std::filesystem;
const fs::path kData = fs::path(MOELAB_SOURCE_DIR) / "configs" / "data";

struct Evaluated {
  nlohmann::json summary;
  std::string log;
};

Evaluated evaluate(const TempDir& dir, const std::string& data, const std::string& keys = "") {
  auto run = moelab::test::start_run(dir, "stages = []\n[data]\nplugin = \"jsonl\"\npath = \"" + data + "\"\n[eval]\nplugin = \"evaluate\"\n"
                                          "dataset = \"data\"\nbootstrap = 10\n" + keys);
  fs::create_directories(dir.path() / "out");
  Evaluated e;
  run->make<moelab::Stage>("eval")->run(dir.path() / "out", e.summary);
  e.log = moelab::read_file(run->run_dir() / "log.txt");
  return e;
}

TEST(EvaluateScoring, EachFormGetsLmEvalsDefaultAndTheChoiceIsLogged) {
  TempDir dir;
  auto hellaswag = evaluate(dir, (kData / "hellaswag_sample.jsonl").string());
  EXPECT_EQ(hellaswag.summary["scoring"], "loglik");
  EXPECT_TRUE(hellaswag.summary["base"].contains("acc_norm"));
  EXPECT_THAT(hellaswag.log, HasSubstr("scoring loglik (the hellaswag form's lm-eval default)"));
  dir.write("piqa.jsonl", R"({"goal": "Dry wet shoes", "sol1": "Use newspaper.", "sol2": "Use a freezer.", "label": 0})" "\n");
  EXPECT_EQ(evaluate(dir, "piqa.jsonl").summary["scoring"], "loglik");
  auto arc = evaluate(dir, (kData / "arc_easy_sample.jsonl").string());
  EXPECT_EQ(arc.summary["scoring"], "letter");
  EXPECT_TRUE(arc.summary["base"].contains("letter"));
  EXPECT_THAT(arc.log, HasSubstr("scoring letter (the arc form's lm-eval default)"));
  auto arc_loglik = evaluate(dir, (kData / "arc_easy_sample.jsonl").string(), "scoring = \"loglik\"\n");
  EXPECT_EQ(arc_loglik.summary["scoring"], "loglik");
  EXPECT_THAT(arc_loglik.log, HasSubstr("scoring loglik (set at "));
}

TEST(EvaluateScoring, WhatAFormDoesNotAllowIsAnErrorNamingTheKey) {
  TempDir dir;
  const std::string hellaswag = (kData / "hellaswag_sample.jsonl").string();
  EXPECT_THAT(moelab::test::error_of([&] { evaluate(dir, hellaswag, "scoring = \"letter\"\n"); }),
              testing::AllOf(HasSubstr("[eval] scoring = \"letter\""), HasSubstr("is a hellaswag record, which lm-eval scores by loglik only")));
  EXPECT_THAT(moelab::test::error_of([&] { evaluate(dir, (kData / "winogrande_sample.jsonl").string(), "scoring = \"letter\"\n"); }),
              HasSubstr("winogrande record"));
  EXPECT_THAT(moelab::test::error_of([&] { evaluate(dir, (kData / "arc_easy_sample.jsonl").string(), "add_bos_token = true\n"); }),
              HasSubstr("[eval] add_bos_token"));
  EXPECT_THAT(moelab::test::error_of([&] { evaluate(dir, hellaswag, "loglik_template = \"Q: {question}\"\n"); }),
              HasSubstr("[eval] loglik_template"));
  dir.write("mixed.jsonl", moelab::read_file(hellaswag) + moelab::read_file(kData / "arc_easy_sample.jsonl"));
  EXPECT_THAT(moelab::test::error_of([&] { evaluate(dir, "mixed.jsonl"); }),
              HasSubstr("scoring = \"auto\": dataset 'data' mixes forms scored by letter (arc) and by loglik (hellaswag); set scoring"));
}

// Records without an lm-eval form are scored after loglik_template, and each choice's loglik is reported.
TEST(EvaluateScoring, FieldsRecordsUseTheLoglikTemplate) {
  TempDir dir;
  dir.write("flat.jsonl", R"({"q": "2+2?", "options": ["3", "four"], "gold": 1})" "\n");
  auto run = moelab::test::start_run(dir, "stages = []\n[data]\nplugin = \"jsonl\"\npath = \"flat.jsonl\"\ntext_field = \"q\"\n"
                                          "choices_field = \"options\"\nanswer_field = \"gold\"\n[eval]\nplugin = \"evaluate\"\ndataset = \"data\"\n"
                                          "scoring = \"loglik\"\nloglik_template = \"Q: {question}\\nA: \"\n");
  fs::create_directories(dir.path() / "out");
  nlohmann::json summary;
  run->make<moelab::Stage>("eval")->run(dir.path() / "out", summary);
  auto predictions = nlohmann::json::parse(moelab::read_file(dir.path() / "out" / "predictions.json"));
  auto requests = std::vector<moelab::LoglikRequest>{moelab::encode_pair(run->tokenizer(), "Q: 2+2?\nA: ", " 3"),
                                                     moelab::encode_pair(run->tokenizer(), "Q: 2+2?\nA: ", " four")};
  auto expected = moelab::score_requests(run->model(), requests, 1, 1024);
  for (std::size_t c = 0; c < 2; ++c) EXPECT_NEAR(predictions[0]["base"]["loglik"][c].get<double>(), expected[c].loglik, 1e-5);
  EXPECT_EQ(predictions[0]["base"]["acc"], expected[0].loglik > expected[1].loglik ? "A" : "B");
}

}  // namespace
