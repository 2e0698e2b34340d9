// What a run folder keeps when things go wrong: a failed stage's error in log.txt and summary.json, a lock
// that stops a second process on the same folder, a folder of its own for every run, attempts marked in
// metrics.jsonl after --resume; and plugin libraries that are not whole are skipped, not dlopened.
#include "moelab/lib/files.h"
#include "test_run.h"

#include <gmock/gmock.h>
#include <nlohmann/json.hpp>

#include <unistd.h>

#include <fstream>
#include <map>
#include <sstream>

namespace {

namespace fs = std::filesystem;
using moelab::test::error_of;
using moelab::test::run_command;
using moelab::test::runexp_binary;
using moelab::test::TempDir;
using testing::HasSubstr;

const std::string kData = std::string(MOELAB_SOURCE_DIR) + "/configs/data";

std::vector<fs::path> run_folders(const fs::path& experiment_dir) {
  std::vector<fs::path> runs;
  if (fs::is_directory(experiment_dir))
    for (const auto& e : fs::directory_iterator(experiment_dir)) runs.push_back(e.path());
  std::sort(runs.begin(), runs.end());
  return runs;
}

std::string finetune(const std::string& id, int last_layers = 2) {
  return "[" + id + "]\nplugin = \"finetune\"\ndataset = \"data\"\nobjective = \"task\"\nlast_layers = " + std::to_string(last_layers) +
         "\nepochs = 1\nbatch_size = 32\n";
}

const std::string kTwoStages = "run_dir = \"runs\"\nstages = [\"first\", \"second\"]\n[data]\nplugin = \"jsonl\"\npath = \"" + kData +
                               "/arith_train.jsonl\"\n[task]\nplugin = \"task_ce\"\n" + finetune("first") + finetune("second");

TEST(RunRecords, AFailedStageWritesItsErrorToLogAndSummaryAndExitsOne) {
  TempDir dir;
  fs::path file = dir.write("failing.toml", "run_dir = \"runs\"\nstages = [\"first\", \"bad\"]\n[data]\nplugin = \"jsonl\"\npath = \"" + kData +
                                                "/arith_train.jsonl\"\n[task]\nplugin = \"task_ce\"\n" + finetune("first") + finetune("bad", 7));
  auto r = run_command(runexp_binary() + " " + file.string());
  EXPECT_EQ(r.status, 1) << r.output;
  const std::string message = "[bad] last_layers = 7, but the model has 6 MoE layers";
  EXPECT_THAT(r.output, HasSubstr(message));
  std::vector<fs::path> runs = run_folders(dir.path() / "runs" / "failing");
  ASSERT_EQ(runs.size(), 1u);
  const std::string log = moelab::read_file(runs[0] / "log.txt");
  EXPECT_THAT(log, HasSubstr("ERROR stage [bad] failed: "));
  EXPECT_THAT(log, HasSubstr(message));
  auto summary = nlohmann::json::parse(moelab::read_file(runs[0] / "summary.json"));
  EXPECT_EQ(summary["status"], "failed");
  EXPECT_EQ(summary["error"]["stage"], "bad");
  EXPECT_THAT(summary["error"]["message"].get<std::string>(), HasSubstr(message));
  EXPECT_TRUE(summary["stages"].contains("first"));  // the stage that finished keeps its summary
  auto stage = nlohmann::json::parse(moelab::read_file(runs[0] / "bad" / "summary.json"));
  EXPECT_EQ(stage["status"], "failed");
  EXPECT_FALSE(fs::exists(runs[0] / "bad" / ".done"));
  // The console shows the error once (the run logged it; runexp does not repeat it).
  EXPECT_EQ(r.output.find(message), r.output.rfind(message)) << r.output;
}

TEST(RunRecords, ASecondProcessOnTheSameRunFolderFailsAtOnce) {
  TempDir dir;
  auto first = moelab::test::start_run(dir, "stages = []\n");
  moelab::ResolvedExperiment again = moelab::test::resolve_text(dir, "run_dir = \"runs\"\nstages = []\n");
  const std::string error = error_of([&] { moelab::ExperimentRun second(std::move(again), moelab::test::built_plugins(), true); });
  EXPECT_THAT(error, HasSubstr("run folder " + first->run_dir().string() + " is in use by another runexp (pid " + std::to_string(getpid()) + ")"));
  first.reset();  // the lock goes with the run
  moelab::ExperimentRun resumed(moelab::test::resolve_text(dir, "run_dir = \"runs\"\nstages = []\n"), moelab::test::built_plugins(), true);
  EXPECT_EQ(resumed.attempt(), 2);
}

TEST(RunRecords, RunsStartedTogetherNeverShareAFolder) {
  TempDir dir;
  fs::path file = dir.write("together.toml", "run_dir = \"runs\"\nstages = []\n");
  std::string command;
  for (int i = 0; i < 6; ++i) command += runexp_binary() + " " + file.string() + " > /dev/null 2>&1 & ";
  auto r = run_command(command + "wait");
  ASSERT_EQ(r.status, 0) << r.output;
  std::vector<fs::path> runs = run_folders(dir.path() / "runs" / "together");
  ASSERT_EQ(runs.size(), 6u);
  for (const auto& run : runs) {
    auto summary = nlohmann::json::parse(moelab::read_file(run / "summary.json"));
    EXPECT_EQ(summary["status"], "complete") << run;
    EXPECT_EQ(summary["run_dir"], run.string());
  }
}

TEST(RunRecords, MetricsRowsCarryTheirAttemptAfterAResume) {
  TempDir dir;
  fs::path file = dir.write("two.toml", kTwoStages);
  ASSERT_EQ(run_command(runexp_binary() + " " + file.string()).status, 0);
  std::vector<fs::path> runs = run_folders(dir.path() / "runs" / "two");
  ASSERT_EQ(runs.size(), 1u);
  fs::remove(runs[0] / "second" / ".done");  // as if the first attempt had died in the second stage
  auto r = run_command(runexp_binary() + " " + file.string() + " --resume");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("resuming run " + runs[0].string() + " (attempt 2"));
  std::map<std::pair<std::string, int>, int> rows;  // (stage, attempt) -> rows
  std::istringstream lines(moelab::read_file(runs[0] / "metrics.jsonl"));
  for (std::string line; std::getline(lines, line);) {
    auto row = nlohmann::json::parse(line);
    ++rows[{row.value("stage", ""), row.value("attempt", 0)}];
  }
  EXPECT_EQ(rows.size(), 3u);
  EXPECT_EQ((rows[{"first", 1}]), 2);
  EXPECT_EQ((rows[{"second", 1}]), 2);
  EXPECT_EQ((rows[{"second", 2}]), 2);
  auto summary = nlohmann::json::parse(moelab::read_file(runs[0] / "summary.json"));
  EXPECT_EQ(summary["attempt"], 2);
  EXPECT_EQ(summary["status"], "complete");
}

// A plugin library cut short (as while it is being copied or built) is skipped with a warning; dlopen on
// it would kill the process with SIGBUS.
TEST(RunRecords, HalfWrittenPluginLibrariesAreSkippedWithAWarningNamingThem) {
  TempDir dir;
  const fs::path folder = dir.path() / "plugins";
  fs::create_directories(folder);
  const std::string whole = moelab::read_file(fs::path(MOELAB_PLUGIN_BUILD_DIR) / "moelab_plain.so");
  std::ofstream(folder / "moelab_half.so", std::ios::binary) << whole.substr(0, whole.size() / 2);
  std::ofstream(folder / "moelab_text.so") << std::string(100, '#') << " a text file, not a library\n";
  moelab::PluginRegistry registry;
  registry.scan({fs::path(MOELAB_PLUGIN_BUILD_DIR), folder});
  EXPECT_NE(registry.find("plain"), nullptr);
  const std::string error = error_of([&] { registry.get("half"); });
  EXPECT_THAT(error, HasSubstr((folder / "moelab_half.so").string() + " ("));
  EXPECT_THAT(error, HasSubstr("cut short or still being written"));
  EXPECT_THAT(error, HasSubstr((folder / "moelab_text.so").string() + " (not an ELF file)"));
  EXPECT_THAT(error_of([&] { moelab::PluginRegistry().load(folder / "moelab_half.so"); }),
              HasSubstr("cannot load plugin library " + (folder / "moelab_half.so").string()));
  // runexp itself runs with them in its path, and says which it skipped.
  fs::path file = dir.write("ok.toml", "run_dir = \"runs\"\nstages = []\n");
  auto r = run_command("MOELAB_PLUGIN_PATH=" + folder.string() + " " + runexp_binary() + " " + file.string());
  EXPECT_EQ(r.status, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("skipping plugin library " + (folder / "moelab_half.so").string()));
}

// --resume with a changed config starts a new folder and reuses each finished stage whose own tables,
// model and inputs are unchanged; a stage reading a rerun stage's outputs runs again too.
TEST(RunRecords, ResumeReusesExactlyTheStagesWhoseConfigAndInputsAreUnchanged) {
  TempDir dir;
  const std::string experiment = "run_dir = \"runs\"\nstages = [\"first\", \"other\", \"eval\"]\n[data]\nplugin = \"jsonl\"\npath = \"" +
                                 kData + "/arith_train.jsonl\"\n[task]\nplugin = \"task_ce\"\n" + finetune("first") + finetune("other") +
                                 "[eval]\nplugin = \"evaluate\"\ndataset = \"data\"\nrouters = \"@first/routers.safetensors\"\n";
  fs::path file = dir.write("keyed.toml", experiment);
  ASSERT_EQ(run_command(runexp_binary() + " " + file.string()).status, 0);
  const fs::path first_run = run_folders(dir.path() / "runs" / "keyed").at(0);

  // An evaluation-only key: training is reused, evaluation runs again, in a new folder.
  auto r = run_command(runexp_binary() + " " + file.string() + " --resume --set eval.batch_size=3");
  ASSERT_EQ(r.status, 0) << r.output;
  std::vector<fs::path> runs = run_folders(dir.path() / "runs" / "keyed");
  ASSERT_EQ(runs.size(), 2u);
  EXPECT_THAT(r.output, HasSubstr("[first]: reused from " + (first_run / "first").string()));
  EXPECT_THAT(r.output, HasSubstr("[other]: reused from"));
  EXPECT_THAT(r.output, HasSubstr("stage 3/3 [eval] (evaluate)"));
  EXPECT_EQ(moelab::read_file(runs[1] / "first" / "routers.safetensors"), moelab::read_file(first_run / "first" / "routers.safetensors"));
  auto summary = nlohmann::json::parse(moelab::read_file(runs[1] / "summary.json"));
  EXPECT_EQ(summary["stages"]["first"]["reused_from"], (first_run / "first").string());
  EXPECT_EQ(summary["status"], "complete");

  // A key of the first stage: it runs again, and so does the evaluation that reads its routers; the other does not.
  r = run_command(runexp_binary() + " " + file.string() + " --resume --set eval.batch_size=3 --set first.lr=0.02");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("stage 1/3 [first] (finetune)"));
  EXPECT_THAT(r.output, HasSubstr("[other]: reused from"));
  EXPECT_THAT(r.output, HasSubstr("stage 3/3 [eval] (evaluate)"));

  // The same config again resumes in place; a changed data file makes every stage that reads it run again.
  r = run_command(runexp_binary() + " " + file.string() + " --resume --set eval.batch_size=3 --set first.lr=0.02");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("[eval]: already done"));
  const fs::path copy = dir.path() / "arith.jsonl";
  fs::copy_file(kData + "/arith_train.jsonl", copy);
  fs::path moved = dir.write("moved.toml", experiment);
  ASSERT_EQ(run_command(runexp_binary() + " " + moved.string()).status, 0);
  ASSERT_EQ(run_command(runexp_binary() + " " + moved.string() + " --resume --set data.path=" + copy.string()).status, 0);
  std::ofstream(copy, std::ios::app) << "\n";
  r = run_command(runexp_binary() + " " + moved.string() + " --resume --set data.path=" + copy.string());
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("[first]: done before, but its inputs changed since"));
}

// What the run will read is opened before anything runs: a missing evaluation file fails at --dry-run
// (and at the start of a run), not after collection and training.
TEST(RunRecords, DryRunOpensEveryInputAndChecksStageReferences) {
  TempDir dir;
  const std::string base = "run_dir = \"runs\"\nstages = [\"first\", \"eval\"]\n[data]\nplugin = \"jsonl\"\npath = \"" + kData +
                           "/arith_train.jsonl\"\n[data_eval]\nplugin = \"jsonl\"\npath = \"missing_eval.jsonl\"\n[task]\nplugin = \"task_ce\"\n" +
                           finetune("first") + "[eval]\nplugin = \"evaluate\"\ndataset = \"data_eval\"\nrouters = \"@first/routers.safetensors\"\n";
  fs::path file = dir.write("inputs.toml", base);
  for (const std::string& flag : {" --dry-run", ""}) {
    auto r = run_command(runexp_binary() + " " + file.string() + flag);
    EXPECT_EQ(r.status, 1) << r.output;
    EXPECT_THAT(r.output, HasSubstr("[data_eval] path = \"" + (dir.path() / "missing_eval.jsonl").string() + "\" (" + file.string() +
                                    ":8): no such file or folder"));
  }
  EXPECT_TRUE(run_folders(dir.path() / "runs" / "inputs").empty());  // nothing ran
  dir.write("missing_eval.jsonl", moelab::read_file(kData + "/arith_eval.jsonl"));
  EXPECT_EQ(run_command(runexp_binary() + " " + file.string() + " --dry-run").status, 0);
  auto r = run_command(runexp_binary() + " " + file.string() + " --dry-run --set 'stages=[\"eval\"]'");
  EXPECT_EQ(r.status, 1);
  EXPECT_THAT(r.output, HasSubstr("[eval] routers = \"@first/routers.safetensors\" (" + file.string() +
                                  ":21): reads the output of stage [first], which does not run before [eval] (stages = [eval])"));
  // Layer lists name MoE layers of this model, once each.
  r = run_command(runexp_binary() + " " + file.string() + " --dry-run --set 'first.layers=[4, 4]'");
  EXPECT_EQ(r.status, 1);
  EXPECT_THAT(r.output, HasSubstr("[first] layers (--set first.layers=[4, 4]): layer 4 is listed twice"));
  r = run_command(runexp_binary() + " " + file.string() + " --dry-run --set 'first.layers=[6]'");
  EXPECT_EQ(r.status, 1);
  EXPECT_THAT(r.output, HasSubstr("layer 6 is not a decoder layer of this model (0..5)"));
  // The model's config.json is read too.
  fs::create_directories(dir.path() / "model");
  dir.write("model/config.json", "{\"model_type\": \"olmoe\"");
  r = run_command(runexp_binary() + " " + file.string() + " --dry-run --set model.path=" + (dir.path() / "model").string());
  EXPECT_EQ(r.status, 1);
  EXPECT_THAT(r.output, HasSubstr((dir.path() / "model" / "config.json").string()));
}

// The model file is read once; a file changed under a running run (overwritten in place, truncated)
// ends it with an error at the next stage boundary instead of mixing two models in one result.
TEST(RunRecords, AModelFileChangedDuringTheRunIsAnError) {
  TempDir dir;
  const fs::path model = dir.path() / "model";
  fs::copy(fs::path(MOELAB_BINARY_DIR) / "models" / "tiny-olmoe", model, fs::copy_options::recursive);
  auto run = moelab::test::start_run(dir, "stages = [\"first\"]\n[model]\npath = \"" + model.string() + "\"\n[data]\nplugin = \"jsonl\"\n"
                                          "path = \"" + kData + "/arith_train.jsonl\"\n[task]\nplugin = \"task_ce\"\n" + finetune("first"));
  run->model();
  std::ofstream(model / "model.safetensors", std::ios::app) << "appended";
  const std::string error = error_of([&] { run->run_stages(); });
  EXPECT_THAT(error, HasSubstr("the model files in " + model.string() + " changed while this run used them"));
  EXPECT_EQ(nlohmann::json::parse(moelab::read_file(run->run_dir() / "summary.json"))["status"], "failed");
}

// Ctrl-C during training: the step finishes, the stage saves what it needs, runexp exits 130 with the
// run marked interrupted, and --resume finishes the same run folder.
TEST(RunRecords, SigintDuringTrainingExits130AndResumeFinishesTheRun) {
  TempDir dir;
  fs::path file = dir.write("long.toml", "run_dir = \"runs\"\nstages = [\"first\"]\n[data]\nplugin = \"jsonl\"\npath = \"" + kData +
                                             "/arith_train.jsonl\"\n[task]\nplugin = \"task_ce\"\n[first]\nplugin = \"finetune\"\ndataset = \"data\"\n"
                                             "objective = \"task\"\nlast_layers = 2\nepochs = 200\nbatch_size = 4\n");
  const fs::path out = dir.path() / "out.txt";
  auto r = run_command(runexp_binary() + " " + file.string() + " > " + out.string() + " 2>&1 & pid=$!; for i in $(seq 1 600); do grep -q 'step 3/' " +
                       out.string() + " && break; sleep 0.1; done; kill -INT $pid; wait $pid; echo \"exit=$?\"");
  const std::string log = moelab::read_file(out);
  EXPECT_THAT(r.output, HasSubstr("exit=130")) << log;
  EXPECT_THAT(log, HasSubstr("stage [first] interrupted"));
  const fs::path run = run_folders(dir.path() / "runs" / "long").at(0);
  EXPECT_EQ(nlohmann::json::parse(moelab::read_file(run / "summary.json"))["status"], "interrupted");
  EXPECT_TRUE(fs::exists(run / "first" / "resume"));
  EXPECT_FALSE(fs::exists(run / "first" / "routers.safetensors"));
  r = run_command(runexp_binary() + " " + file.string() + " --resume");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("resuming run " + run.string() + " (attempt 2"));
  EXPECT_EQ(nlohmann::json::parse(moelab::read_file(run / "summary.json"))["status"], "complete");
  EXPECT_TRUE(fs::exists(run / "first" / "routers.safetensors"));
  EXPECT_FALSE(fs::exists(run / "first" / "resume"));
}

}  // namespace
