// lm-evaluation-harness's result files from the evaluate stage: results.json holds the stage's own
// accuracies with lm-eval's stderr of a mean, the samples file has one line per question with the
// stage's per-question results, task names follow lm-eval's (unknown ones are an error naming the key),
// and both files have the key layout of a real lm-eval output (tests/fixtures/lm_eval).
#include "moelab/moelab.h"
#include "moelab/lib/files.h"
#include "moelab/lib/lm_eval_results.h"
#include "moelab/lib/router_checkpoint.h"
#include "test_run.h"

#include <gmock/gmock.h>

#include <cmath>
#include <set>

using moelab::test::TempDir;
using nlohmann::json;
using testing::HasSubstr;

namespace {

namespace fs = std::filesystem;
const fs::path kData = fs::path(MOELAB_SOURCE_DIR) / "configs" / "data";
const fs::path kFixtures = fs::path(MOELAB_SOURCE_DIR) / "tests" / "fixtures" / "lm_eval";

struct Evaluated {
  json summary, results, predictions;
  std::vector<json> samples;  // lines of the one samples_<task>_*.jsonl
  std::string samples_name, log;
  fs::path out;  // the stage folder
  std::unique_ptr<moelab::ExperimentRun> run;
};

std::vector<json> read_lines(const fs::path& file) {
  std::vector<json> lines;
  std::istringstream in(moelab::read_file(file));
  for (std::string line; std::getline(in, line);) lines.push_back(json::parse(line));
  return lines;
}

// The one samples file of `dir` (lm-eval's samples_<task>_<date>.jsonl).
fs::path samples_in(const fs::path& dir) {
  std::vector<fs::path> found;
  for (const auto& entry : fs::directory_iterator(dir))
    if (entry.path().filename().string().rfind("samples_", 0) == 0) found.push_back(entry.path());
  EXPECT_EQ(found.size(), 1u) << dir;
  return found.empty() ? fs::path() : found.front();
}

// The evaluate stage on `data` as the dataset table `table` ("data.<table>"), with the stage keys `keys`.
Evaluated evaluate(const TempDir& dir, const fs::path& data, const std::string& table, const std::string& keys = "", const std::string& extra = "") {
  Evaluated e;
  e.run = moelab::test::start_run(dir, "stages = []\n[data." + table + "]\nplugin = \"jsonl\"\npath = \"" + data.string() +
                                           "\"\n[eval]\nplugin = \"evaluate\"\ndataset = \"data." + table + "\"\nbootstrap = 10\n" + keys + extra);
  const fs::path out = e.out = dir.path() / ("out_" + table + std::to_string(std::hash<std::string>()(keys)));
  fs::create_directories(out);
  e.run->make<moelab::Stage>("eval")->run(out, e.summary);
  e.results = json::parse(moelab::read_file(out / "results.json"));
  e.predictions = json::parse(moelab::read_file(out / "predictions.json"));
  const fs::path samples = samples_in(out);
  e.samples_name = samples.filename().string();
  e.samples = read_lines(samples);
  e.log = moelab::read_file(e.run->run_dir() / "log.txt");
  return e;
}

// lm-eval's stderr of the mean of n scores of 0 or 1 with mean p: sqrt(p (1 - p) n / (n - 1)) / sqrt(n).
double binary_stderr(double p, double n) { return std::sqrt(p * (1 - p) * n / (n - 1)) / std::sqrt(n); }

// Checks one model's results.json and samples against the stage's summary entry and predictions.json.
void expect_matches_stage(const json& results, const std::vector<json>& samples, const std::string& task, const json& summary_model,
                          const json& predictions, const std::string& model_key, const std::vector<std::string>& metrics) {
  const double n = static_cast<double>(predictions.size());
  ASSERT_TRUE(results["results"].contains(task)) << results["results"].dump();
  const json& row = results["results"][task];
  EXPECT_EQ(row["alias"], task);
  std::set<std::string> keys = {"alias"};
  for (const auto& metric : metrics) {
    // moelab's name for the metric: letter scoring reports lm-eval's acc as "letter".
    const std::string own = summary_model.contains(metric) ? metric : "letter";
    const double accuracy = summary_model[own]["accuracy"].get<double>();
    EXPECT_DOUBLE_EQ(row[metric + ",none"].get<double>(), accuracy) << metric;
    EXPECT_NEAR(row[metric + "_stderr,none"].get<double>(), binary_stderr(accuracy, n), 1e-12) << metric;
    keys.insert({metric + ",none", metric + "_stderr,none"});
    double right = 0;
    for (std::size_t i = 0; i < predictions.size(); ++i) {
      const bool correct = predictions[i][model_key][own] == predictions[i]["gold"];
      EXPECT_EQ(samples[i][metric].get<double>(), correct ? 1.0 : 0.0) << metric << " of question " << i;
      right += correct;
    }
    EXPECT_DOUBLE_EQ(right / n, accuracy);
  }
  std::set<std::string> written;
  for (const auto& [key, value] : row.items()) written.insert(key);
  EXPECT_EQ(written, keys);
  EXPECT_EQ(results["n-samples"][task]["original"], predictions.size());
  EXPECT_EQ(results["n-samples"][task]["effective"], predictions.size());
  EXPECT_EQ(results["n-shot"][task], 0);
  EXPECT_EQ(results["configs"][task]["output_type"], "multiple_choice");
  EXPECT_EQ(results["configs"][task]["num_fewshot"], 0);
  std::vector<std::string> listed;
  for (const auto& m : results["configs"][task]["metric_list"]) listed.push_back(m["metric"]);
  EXPECT_EQ(listed, metrics);
  for (const auto& metric : metrics) EXPECT_EQ(results["higher_is_better"][task][metric], true);

  ASSERT_EQ(samples.size(), predictions.size());
  for (std::size_t i = 0; i < samples.size(); ++i) {
    const json& s = samples[i];
    EXPECT_EQ(s["doc_id"], i);
    EXPECT_TRUE(s["doc"].is_object());
    EXPECT_FALSE(s["doc"].contains("lm_eval"));
    EXPECT_EQ(s["filter"], "none");
    EXPECT_EQ(s["metrics"].get<std::vector<std::string>>(), metrics);
    const json& logliks = predictions[i][model_key]["loglik"];
    ASSERT_EQ(s["arguments"].size(), logliks.size());
    ASSERT_EQ(s["resps"].size(), logliks.size());
    for (std::size_t c = 0; c < logliks.size(); ++c) {
      const json& args = s["arguments"]["gen_args_" + std::to_string(c)];
      EXPECT_TRUE(args["arg_0"].is_string() && args["arg_1"].is_string());
      // lm-eval's sanitized responses: [[loglik, is_greedy]] per request, as Python's str().
      const json& response = s["resps"][c][0];
      EXPECT_EQ(s["filtered_resps"][c], response);
      EXPECT_EQ(std::stod(response[0].get<std::string>()), logliks[c].get<double>()) << "question " << i << " choice " << c;
      EXPECT_EQ(response[1], predictions[i][model_key]["is_greedy"][c].get<bool>() ? "True" : "False");
    }
  }
}

TEST(LmEvalResults, HellaswagResultsAndSamplesAreTheStagesOwnNumbers) {
  TempDir dir;
  const Evaluated e = evaluate(dir, kData / "hellaswag_sample.jsonl", "hs");
  EXPECT_EQ(e.summary["lm_eval"]["task"], "hellaswag");
  EXPECT_EQ(e.summary["lm_eval"]["base"]["results"], "results.json");
  EXPECT_THAT(e.samples_name, testing::MatchesRegex("samples_hellaswag_[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}-[0-9]{2}-[0-9]{2}\\.[0-9]{6}\\.jsonl"));
  // lm-eval's tools find results_<date>.json, with the samples' date: a link to results.json.
  const std::string date = e.samples_name.substr(std::string("samples_hellaswag_").size(), 26);
  const fs::path named = e.out / ("results_" + date + ".json");
  ASSERT_TRUE(fs::is_symlink(named)) << named;
  EXPECT_EQ(fs::read_symlink(named), "results.json");
  EXPECT_EQ(json::parse(moelab::read_file(named)), e.results);
  expect_matches_stage(e.results, e.samples, "hellaswag", e.summary["base"], e.predictions, "base", {"acc", "acc_norm"});
  EXPECT_EQ(e.results["versions"]["hellaswag"], 1.0);
  EXPECT_EQ(e.results["configs"]["hellaswag"]["dataset_path"], "Rowan/hellaswag");
  EXPECT_EQ(e.results["configs"]["hellaswag"]["metadata"]["moelab"]["scoring"], "loglik");
  EXPECT_THAT(e.results["config"]["model_args"].get<std::string>(), HasSubstr("pretrained="));
  EXPECT_EQ(e.results["config"]["device"], e.run->model().device().str());  // "cpu" here, "cuda" on the GPU box
  for (std::size_t i = 0; i < e.samples.size(); ++i) {
    EXPECT_EQ(e.samples[i]["target"], static_cast<int>(e.predictions[i]["gold"].get<std::string>()[0] - 'A'));
    // The requests are the record's lm-eval requests (context, " " + ending).
    EXPECT_EQ(e.samples[i]["arguments"]["gen_args_0"]["arg_0"], e.samples[i]["doc"]["question"]["stem"]);
  }
}

// Winogrande has acc only, and its target is the continuation text, as lm-eval's doc_to_target.
TEST(LmEvalResults, WinograndeHasAccOnlyAndTheContinuationAsTarget) {
  TempDir dir;
  const Evaluated e = evaluate(dir, kData / "winogrande_sample.jsonl", "wg");
  expect_matches_stage(e.results, e.samples, "winogrande", e.summary["base"], e.predictions, "base", {"acc"});
  EXPECT_FALSE(e.results["higher_is_better"]["winogrande"].contains("acc_norm"));
  for (const auto& s : e.samples) {
    ASSERT_TRUE(s["target"].is_string());
    EXPECT_EQ(" " + s["target"].get<std::string>(), s["arguments"]["gen_args_1"]["arg_1"]);
  }
}

TEST(LmEvalResults, TaskNamesFollowLmEvalAndLetterScoringIsItsOwnTask) {
  TempDir dir;
  const fs::path arc = kData / "arc_easy_sample.jsonl";
  const Evaluated loglik = evaluate(dir, arc, "arc_easy", "scoring = \"loglik\"\n");
  expect_matches_stage(loglik.results, loglik.samples, "arc_easy", loglik.summary["base"], loglik.predictions, "base", {"acc", "acc_norm"});
  EXPECT_EQ(loglik.results["configs"]["arc_easy"]["dataset_name"], "ARC-Easy");
  const Evaluated set = evaluate(dir, arc, "questions", "scoring = \"loglik\"\ntask = \"arc_challenge\"\n");
  EXPECT_TRUE(set.results["results"].contains("arc_challenge"));
  const Evaluated letter = evaluate(dir, arc, "arc_easy");
  expect_matches_stage(letter.results, letter.samples, "arc_easy_letter", letter.summary["base"], letter.predictions, "base", {"acc"});
  EXPECT_EQ(letter.samples[0]["arguments"]["gen_args_1"]["arg_1"].get<std::string>().back(), 'B');
  const Evaluated unnamed = evaluate(dir, arc, "questions", "scoring = \"loglik\"\n");
  EXPECT_TRUE(unnamed.results["results"].contains("questions"));
  EXPECT_THAT(unnamed.log, HasSubstr("results.json names the task \"questions\" (the dataset table); set task"));

  EXPECT_THAT(moelab::test::error_of([&] { evaluate(dir, arc, "questions", "task = \"arc_chalenge\"\n"); }),
              testing::AllOf(HasSubstr("[eval] task = \"arc_chalenge\""), HasSubstr("expected one of arc_easy, arc_challenge")));
  EXPECT_THAT(moelab::test::error_of([&] { evaluate(dir, arc, "questions", "task = \"hellaswag\"\n"); }),
              HasSubstr("holds a record of the arc form; lm-eval's hellaswag reads the hellaswag form"));
}

// Base and finetuned routers: one results file per model, as lm-eval writes one per model.
TEST(LmEvalResults, PairedEvaluationWritesOneResultsFilePerModel) {
  TempDir dir;
  const fs::path routers = dir.path() / "routers.safetensors";
  {
    auto run = moelab::test::start_run(dir, "stages = []\n");
    moelab::Model& model = run->model();
    torch::NoGradGuard no_grad;
    std::map<int, torch::Tensor> base;
    const std::vector<int> layers = model.info().moe_layers;
    for (int l : layers) base[l] = model.router_weight(l).detach().clone();
    torch::manual_seed(5);
    for (int l : layers) model.router_weight(l).add_(0.5 * torch::randn_like(base[l]));
    moelab::save_router_checkpoint(routers, model, layers, base, {{"steps", "1"}});
    for (int l : layers) model.router_weight(l).copy_(base[l]);
  }
  const Evaluated e = evaluate(dir, kData / "hellaswag_sample.jsonl", "hellaswag", "routers = \"" + routers.string() + "\"\n");
  expect_matches_stage(e.results, e.samples, "hellaswag", e.summary["base"], e.predictions, "base", {"acc", "acc_norm"});
  const fs::path& out = e.out;
  const json tuned = json::parse(moelab::read_file(out / "finetuned" / "results.json"));
  expect_matches_stage(tuned, read_lines(samples_in(out / "finetuned")), "hellaswag", e.summary["finetuned"], e.predictions, "finetuned",
                       {"acc", "acc_norm"});
  EXPECT_EQ(e.summary["lm_eval"]["finetuned"]["results"], "finetuned/results.json");
  EXPECT_THAT(tuned["config"]["model_args"].get<std::string>(), HasSubstr(",routers=" + routers.string()));
  EXPECT_EQ(tuned["model_name"], routers.string());
  EXPECT_THAT(e.results["config"]["model_args"].get<std::string>(), testing::Not(HasSubstr("routers=")));
}

// Every key path of `layout` that `json` lacks, as "a/b/c"; `skip` holds paths moelab leaves out.
void missing_keys(const json& layout, const json& ours, const std::string& at, const std::set<std::string>& skip, std::vector<std::string>& missing) {
  if (!layout.is_object()) return;
  for (const auto& [key, value] : layout.items()) {
    const std::string path = at.empty() ? key : at + "/" + key;
    if (skip.count(path)) continue;
    if (!ours.is_object() || !ours.contains(key)) {
      missing.push_back(path);
      continue;
    }
    if (value.is_object()) missing_keys(value, ours[key], path, skip, missing);
    if (value.is_array() && !value.empty() && value[0].is_object() && ours[key].is_array() && !ours[key].empty())
      missing_keys(value[0], ours[key][0], path + "/0", skip, missing);
  }
}

// The key layout of lm-eval's own results and samples files (keys only, written by hand from its writers).
TEST(LmEvalResults, FilesHaveTheKeyLayoutOfARealLmEvalOutput) {
  TempDir dir;
  const Evaluated e = evaluate(dir, kData / "arc_easy_sample.jsonl", "arc_easy", "scoring = \"loglik\"\n");
  const json layout = json::parse(moelab::read_file(kFixtures / "results_arc_easy_layout.json"));
  // Environment, tokenizer and hash fields lm-eval adds, and the HF model's revision and sha.
  const std::set<std::string> left_out = {"pretty_env_info", "transformers_version", "upper_git_hash", "tokenizer_pad_token",
                                          "tokenizer_eos_token", "tokenizer_bos_token", "eot_token_id", "task_hashes",
                                          "config/model_revision", "config/model_sha"};
  std::vector<std::string> missing;
  missing_keys(layout, e.results, "", left_out, missing);
  EXPECT_THAT(missing, testing::IsEmpty());
  // And nothing at the top level that lm-eval's layout lacks.
  for (const auto& [key, value] : e.results.items()) EXPECT_TRUE(layout.contains(key)) << key;
  for (const auto& [key, value] : e.results["configs"]["arc_easy"].items())
    EXPECT_TRUE(layout["configs"]["arc_easy"].contains(key)) << "configs/arc_easy/" << key;
  // The values lm-eval's task definition fixes are its own.
  for (const char* key : {"task", "tag", "dataset_path", "dataset_name", "doc_to_text", "doc_to_target", "doc_to_choice", "metric_list",
                          "output_type", "num_fewshot", "target_delimiter", "should_decontaminate"})
    EXPECT_EQ(e.results["configs"]["arc_easy"][key], layout["configs"]["arc_easy"][key]) << key;
  EXPECT_EQ(e.results["versions"], layout["versions"]);
  EXPECT_EQ(e.results["higher_is_better"], layout["higher_is_better"]);
  EXPECT_TRUE(e.results["total_evaluation_time_seconds"].is_string());

  const std::vector<json> sample_layout = read_lines(kFixtures / "samples_arc_easy_layout.jsonl");
  std::vector<std::string> sample_missing;
  const std::set<std::string> hashes = {"doc_hash", "prompt_hash", "target_hash"};
  for (const auto& s : e.samples) missing_keys(sample_layout[0], s, "", hashes, sample_missing);
  EXPECT_THAT(sample_missing, testing::IsEmpty());
  for (const auto& [key, value] : e.samples[0].items()) EXPECT_TRUE(sample_layout[0].contains(key)) << key;
}

TEST(LmEvalResults, StderrIsTheSampleStandardDeviationOverSqrtN) {
  EXPECT_EQ(moelab::lm_eval::mean_stderr({1.0}), "N/A");
  const std::vector<double> v = {1, 0, 0, 1, 1, 0, 1};
  double mu = 4.0 / 7, ss = 0;
  for (double x : v) ss += (x - mu) * (x - mu);
  EXPECT_NEAR(moelab::lm_eval::mean_stderr(v).get<double>(), std::sqrt(ss / 6) / std::sqrt(7.0), 1e-15);
  EXPECT_NEAR(moelab::lm_eval::mean_stderr(v).get<double>(), binary_stderr(mu, 7), 1e-15);
  EXPECT_EQ(moelab::lm_eval::python_float(-5.0), "-5.0");
  EXPECT_EQ(moelab::lm_eval::python_float(-0.125), "-0.125");
  EXPECT_EQ(moelab::lm_eval::python_float(1e-05), "1e-05");
  EXPECT_EQ(moelab::lm_eval::python_float(-41.54048156738281), "-41.54048156738281");
  EXPECT_EQ(moelab::lm_eval::python_float(-INFINITY), "-inf");
}

}  // namespace
