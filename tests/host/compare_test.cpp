// `runexp compare`: two runs of the tiny model's evaluation that differ in one key print that key, their
// summary metrics and the paired test, whose McNemar p equals one computed here from predictions.json.
#include "moelab/lib/files.h"
#include "test_run.h"

#include <gmock/gmock.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <sstream>

namespace {

namespace fs = std::filesystem;
using moelab::test::run_command;
using moelab::test::runexp_binary;
using moelab::test::TempDir;
using testing::HasSubstr;

const std::string kData = std::string(MOELAB_SOURCE_DIR) + "/configs/data";

std::string evaluation(const std::string& question_template) {
  return "name = \"mc\"\nrun_dir = \"runs\"\nstages = [\"eval\"]\n[model]\npath = \"builtin:tiny-olmoe\"\n"
         "[data.eval]\nplugin = \"jsonl\"\npath = \"" + kData + "/arith_eval.jsonl\"\n"
         "[eval]\nplugin = \"evaluate\"\ndataset = \"data.eval\"\nquestion_template = \"" + question_template + "\"\n";
}

fs::path run_once(const TempDir& dir, const std::string& name, const std::string& toml) {
  const fs::path file = dir.write(name, toml);
  auto r = run_command(runexp_binary() + " " + file.string());
  EXPECT_EQ(r.status, 0) << r.output;
  const fs::path runs = file.parent_path() / "runs" / "mc";
  fs::path newest;
  for (const auto& e : fs::directory_iterator(runs))
    if (e.path() > newest) newest = e.path();
  return newest;
}

// Exact two-sided McNemar p: 2 * P(X <= min(b, c)) for X ~ Binomial(b + c, 1/2), at most 1.
double mcnemar(long long b, long long c) {
  const long long n = b + c;
  if (n == 0) return 1.0;
  double tail = 0;
  for (long long i = 0; i <= std::min(b, c); ++i)
    tail += std::exp(std::lgamma(n + 1.0) - std::lgamma(i + 1.0) - std::lgamma(n - i + 1.0) - n * std::log(2.0));
  return std::min(1.0, 2 * tail);
}

std::vector<std::string> cells(const std::string& row) {
  std::vector<std::string> out;
  std::stringstream in(row);
  for (std::string cell; std::getline(in, cell, '|');) {
    const auto first = cell.find_first_not_of(' ');
    out.push_back(first == std::string::npos ? "" : cell.substr(first, cell.find_last_not_of(' ') - first + 1));
  }
  return out;
}

TEST(Compare, PrintsDifferingKeysMetricsAndTheMcNemarTestOfTheSameQuestions) {
  TempDir dir;
  const fs::path a = run_once(dir, "a.toml", evaluation("{question}\\n{choices}\\nAnswer:"));
  const fs::path b = run_once(dir, "b.toml", evaluation("Q: {question}\\nOptions:\\n{choices}\\nThe answer is"));
  ASSERT_NE(a, b);

  // The discordant pairs, from each run's per-question predictions.
  const auto pa = nlohmann::json::parse(moelab::read_file(a / "eval" / "predictions.json"));
  const auto pb = nlohmann::json::parse(moelab::read_file(b / "eval" / "predictions.json"));
  ASSERT_EQ(pa.size(), pb.size());
  long long a_only = 0, b_only = 0;
  for (std::size_t i = 0; i < pa.size(); ++i) {
    ASSERT_EQ(pa[i]["id"], pb[i]["id"]);
    const bool right_a = pa[i]["base"]["letter"] == pa[i]["gold"], right_b = pb[i]["base"]["letter"] == pb[i]["gold"];
    a_only += right_a && !right_b;
    b_only += right_b && !right_a;
  }
  ASSERT_GT(a_only + b_only, 0) << "the two prompts must disagree somewhere for the test to mean anything";

  // Tables on stdout only: logs go to stderr.
  auto r = run_command(runexp_binary() + " compare " + a.string() + " " + b.string() + " 2>/dev/null");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("- A: " + a.string()));
  EXPECT_THAT(r.output, HasSubstr("## Config keys that differ"));
  EXPECT_THAT(r.output, HasSubstr("| eval.question_template |"));
  EXPECT_THAT(r.output, testing::Not(HasSubstr("| model.path |")));  // the same in both
  const double accuracy_a = nlohmann::json::parse(moelab::read_file(a / "summary.json"))["stages"]["eval"]["base"]["letter"]["accuracy"];
  EXPECT_THAT(r.output, HasSubstr(fmt::format("| eval.base.letter.accuracy | {} |", accuracy_a)));

  std::string paired;
  std::istringstream lines(r.output);
  for (std::string line; std::getline(lines, line);)
    if (line.rfind("| A vs B | eval | letter |", 0) == 0) paired = line;
  ASSERT_FALSE(paired.empty()) << r.output;
  const std::vector<std::string> c = cells(paired);
  ASSERT_EQ(c.size(), 10u) << paired;
  EXPECT_EQ(c[6], std::to_string(pa.size()));
  EXPECT_NEAR(std::stod(c[8]), mcnemar(a_only, b_only), 1e-5 * mcnemar(a_only, b_only));
  EXPECT_EQ(c[9], fmt::format("{} / {}", a_only, b_only));

  // Fewer than two runs, or a folder that is not a run, is an error naming it.
  r = run_command(runexp_binary() + " compare " + a.string());
  EXPECT_EQ(r.status, 1);
  EXPECT_THAT(r.output, HasSubstr("compare needs at least two run folders; got 1"));
  r = run_command(runexp_binary() + " compare " + a.string() + " " + dir.path().string());
  EXPECT_THAT(r.output, HasSubstr(dir.path().string() + " is not a run folder"));
}

}  // namespace
