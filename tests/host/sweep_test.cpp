// `runexp --sweep`: a 2x2 grid on the tiny model runs the collection stage once and reuses it in the other
// three points, writes sweep.csv with the points' own summary values, and an interrupted sweep resumes
// without redoing finished points. Also the CLI's small things: --version and "did you mean".
#include "moelab/lib/files.h"
#include "sweep.h"
#include "test_run.h"

#include <gmock/gmock.h>
#include <nlohmann/json.hpp>
#include <toml++/toml.h>
#include <torch/cuda.h>

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>

#include <chrono>
#include <fstream>
#include <sstream>
#include <thread>

extern char** environ;

namespace {

namespace fs = std::filesystem;
using moelab::test::run_command;
using moelab::test::runexp_binary;
using moelab::test::TempDir;
using testing::HasSubstr;

const std::string kData = std::string(MOELAB_SOURCE_DIR) + "/configs/data";

// RoMA on the tiny model: collect -> train (roma) -> eval; lambda and k change train and eval, never collect.
std::string roma_experiment() {
  return "name = \"grid\"\nrun_dir = \"runs\"\nseed = 3\nstages = [\"collect\", \"train\", \"eval\"]\n"
         "[model]\npath = \"builtin:tiny-olmoe\"\n"
         "[data.train]\nplugin = \"jsonl\"\npath = \"" + kData + "/arith_train.jsonl\"\n"
         "[data.eval]\nplugin = \"jsonl\"\npath = \"" + kData + "/arith_eval.jsonl\"\n"
         "[data.routing]\nplugin = \"routing_results\"\npath = \"@collect/routing_results.json\"\n"
         "[embed]\nplugin = \"hashed_bow\"\n[task]\nplugin = \"task_ce\"\n"
         "[roma]\nplugin = \"roma\"\nrouting_results = \"@collect/routing_results.json\"\ntask = \"task\"\nembedder = \"embed\"\n"
         "k = 3\nlambda = 0.8\nlambda_warmup_steps = 1\nrepresentation = \"softmax\"\n"
         "[collect]\nplugin = \"collect_routing\"\ndataset = \"data.train\"\n"
         "[train]\nplugin = \"finetune\"\ndataset = \"data.routing\"\nobjective = \"roma\"\nlast_layers = 2\nepochs = 2\nbatch_size = 16\n"
         "lr = 1e-2\nwarmup_steps = 1\n"
         "[eval]\nplugin = \"evaluate\"\ndataset = \"data.eval\"\nrouters = \"@train/routers.safetensors\"\n";
}

const std::string kGrid = " --sweep roma.lambda=0.1,2 --sweep roma.k=2,4";

fs::path only_sweep(const fs::path& experiment_dir) {
  std::vector<fs::path> sweeps;
  for (const auto& e : fs::directory_iterator(experiment_dir))
    if (e.path().filename().string().rfind("sweep-", 0) == 0) sweeps.push_back(e.path());
  EXPECT_EQ(sweeps.size(), 1u);
  return sweeps.empty() ? fs::path() : sweeps[0];
}

struct PointRow {
  std::string status;
  fs::path run_dir;
};

std::vector<PointRow> points_of(const fs::path& sweep_dir) {
  std::vector<PointRow> rows;
  const toml::table t = toml::parse_file((sweep_dir / "sweep.toml").string());
  for (const auto& node : *t["point"].as_array())
    rows.push_back({node.as_table()->get("status")->value_or(std::string()), fs::path(node.as_table()->get("run_dir")->value_or(std::string()))});
  return rows;
}

// Every regular file below `dir`, relative path -> bytes.
std::map<std::string, std::string> files_below(const fs::path& dir) {
  std::map<std::string, std::string> out;
  for (const auto& e : fs::recursive_directory_iterator(dir))
    if (e.is_regular_file()) out[fs::relative(e.path(), dir).string()] = moelab::read_file(e.path());
  return out;
}

// Numeric leaves of summary.json's stages as "stage.a.b", written here again rather than taken from the host.
void leaves(const nlohmann::json& node, const std::string& path, std::map<std::string, double>& out) {
  if (node.is_number()) out[path] = node.get<double>();
  for (const auto& [key, value] : node.items())
    if (node.is_object() || node.is_array()) leaves(value, path + "." + key, out);
}

std::vector<std::string> csv_fields(const std::string& line) {
  std::vector<std::string> fields(1);
  bool quoted = false;
  for (std::size_t i = 0; i < line.size(); ++i) {
    const char c = line[i];
    if (quoted && c == '"' && i + 1 < line.size() && line[i + 1] == '"') fields.back() += '"', ++i;
    else if (c == '"') quoted = !quoted;
    else if (c == ',' && !quoted) fields.emplace_back();
    else fields.back() += c;
  }
  return fields;
}

TEST(Sweep, GridSharesTheCollectionStageAndTabulatesEachPointsSummary) {
  TempDir dir;
  const fs::path file = dir.write("grid.toml", roma_experiment());
  auto r = run_command(runexp_binary() + " " + file.string() + kGrid);
  ASSERT_EQ(r.status, 0) << r.output;
  const fs::path sweep = only_sweep(dir.path() / "runs" / "grid");
  const std::vector<PointRow> points = points_of(sweep);
  ASSERT_EQ(points.size(), 4u);
  for (const auto& p : points) EXPECT_EQ(p.status, "complete") << p.run_dir;

  // Collection ran in point 1 only; the others took its folder, files equal byte for byte.
  const auto collected = files_below(points[0].run_dir / "collect");
  EXPECT_TRUE(collected.count("routing_results.json"));
  for (std::size_t i = 0; i < points.size(); ++i) {
    const auto summary = nlohmann::json::parse(moelab::read_file(points[i].run_dir / "summary.json"));
    EXPECT_EQ(summary["status"], "complete");
    const std::string log = moelab::read_file(points[i].run_dir / "log.txt");
    if (i == 0) {
      EXPECT_FALSE(summary["stages"]["collect"].contains("reused_from"));
      EXPECT_THAT(log, HasSubstr("stage 1/3 [collect] (collect_routing)"));
    } else {
      EXPECT_EQ(summary["stages"]["collect"]["reused_from"], (points[0].run_dir / "collect").string());
      EXPECT_THAT(log, HasSubstr("stage 1/3 [collect]: reused from point 1 (roma.lambda=0.1, roma.k=2) (same config and inputs)"));
      EXPECT_EQ(files_below(points[i].run_dir / "collect"), collected) << points[i].run_dir;
    }
    EXPECT_FALSE(summary["stages"]["train"].contains("reused_from")) << "lambda or k differ: training runs in every point";
  }
  EXPECT_THAT(r.output, HasSubstr("sweep: stage [collect] computed in point(s) 1; reused (same config and inputs) in point(s) 2, 3, 4"));
  EXPECT_THAT(r.output, HasSubstr("sweep: stage [train] computed in point(s) 1, 2, 3, 4\n"));

  // sweep.csv: one row per point, the swept values and each summary number as the point's summary.json has it.
  std::istringstream csv(moelab::read_file(sweep / "sweep.csv"));
  std::string line;
  std::getline(csv, line);
  const std::vector<std::string> header = csv_fields(line);
  ASSERT_GE(header.size(), 6u);
  EXPECT_EQ(std::vector<std::string>(header.begin(), header.begin() + 5),
            (std::vector<std::string>{"point", "roma.lambda", "roma.k", "status", "run_dir"}));
  EXPECT_NE(std::find(header.begin(), header.end(), "eval.finetuned.letter.accuracy"), header.end());
  EXPECT_NE(std::find(header.begin(), header.end(), "eval.base.letter.accuracy"), header.end());
  const std::vector<std::vector<std::string>> expected_values = {{"0.1", "2"}, {"0.1", "4"}, {"2", "2"}, {"2", "4"}};
  std::size_t rows = 0;
  for (; std::getline(csv, line); ++rows) {
    ASSERT_LT(rows, 4u);
    const std::vector<std::string> fields = csv_fields(line);
    ASSERT_EQ(fields.size(), header.size()) << line;
    EXPECT_EQ(fields[0], std::to_string(rows + 1));
    EXPECT_EQ(fields[1], expected_values[rows][0]);
    EXPECT_EQ(fields[2], expected_values[rows][1]);
    EXPECT_EQ(fields[3], "complete");
    EXPECT_EQ(fs::path(fields[4]), points[rows].run_dir);
    // The point's own run applied its values.
    const std::string config = moelab::read_file(points[rows].run_dir / "config.resolved.toml");
    EXPECT_THAT(config, HasSubstr("k = " + expected_values[rows][1] + "\n"));
    std::map<std::string, double> metrics;
    const auto summary = nlohmann::json::parse(moelab::read_file(points[rows].run_dir / "summary.json"));
    for (const auto& [stage, s] : summary["stages"].items()) leaves(s, stage, metrics);
    std::size_t numbers = 0;
    for (std::size_t c = 5; c < header.size(); ++c) {
      auto it = metrics.find(header[c]);
      if (it == metrics.end()) {
        EXPECT_EQ(fields[c], "") << header[c];
        continue;
      }
      EXPECT_EQ(std::stod(fields[c]), it->second) << header[c] << " of point " << rows + 1;
      ++numbers;
    }
    EXPECT_EQ(numbers, metrics.size()) << "every numeric summary value of point " << rows + 1 << " has a column";
  }
  EXPECT_EQ(rows, 4u);

  const std::string md = moelab::read_file(sweep / "sweep.md");
  EXPECT_THAT(md, HasSubstr("| point | roma.lambda | roma.k | status |"));
  EXPECT_THAT(md, HasSubstr("| 4 | 2 | 4 | complete |"));
  // A plot of each varying metric against each key; evaluate's finetuned accuracy carries the base model's line.
  for (const char* key : {"roma.lambda", "roma.k"}) EXPECT_TRUE(fs::exists(sweep / "plots" / ("train.seconds-vs-" + std::string(key) + ".dat"))) << key;
  const std::string lambda_plot = moelab::read_file(sweep / "plots" / "train.seconds-vs-roma.lambda.dat");
  EXPECT_THAT(lambda_plot, HasSubstr("x \"roma.k=2\" \"roma.k=4\"\n"));  // one line per value of the other key
  EXPECT_THAT(md, HasSubstr("- eval.base.letter.accuracy = "));           // the base model is the same in every point
  for (const auto& e : fs::directory_iterator(sweep / "plots")) {
    const std::string name = e.path().filename().string();
    if (name.rfind("eval.finetuned.letter.accuracy-vs-", 0) == 0 && e.path().extension() == ".dat")
      EXPECT_THAT(moelab::read_file(e.path()), HasSubstr("\"base model (eval.base.letter.accuracy)\""));
  }
}

// Starts runexp in the background with its output in `log`; returns its pid.
pid_t start(const std::vector<std::string>& args, const fs::path& log) {
  std::vector<char*> argv;
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 1, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&actions, 1, 2);
  pid_t pid = 0;
  EXPECT_EQ(posix_spawn(&pid, argv[0], &actions, nullptr, argv.data(), environ), 0);
  posix_spawn_file_actions_destroy(&actions);
  return pid;
}

TEST(Sweep, InterruptedSweepResumesWithoutRedoingFinishedPoints) {
  TempDir dir;
  const fs::path file = dir.write("grid.toml", roma_experiment());
  const pid_t pid = start({runexp_binary(), file.string(), "--sweep", "roma.lambda=0.1,2", "--sweep", "roma.k=2,4"}, dir.path() / "first.log");
  // Stop it (as Ctrl-C does) while point 2 runs, past its first stage.
  const fs::path experiment_dir = dir.path() / "runs" / "grid";
  bool seen = false;
  for (int i = 0; i < 6000 && !seen; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    if (!fs::is_directory(experiment_dir)) continue;
    for (const auto& e : fs::directory_iterator(experiment_dir))
      if (e.path().filename().string().rfind("sweep-", 0) == 0 && fs::exists(e.path() / "sweep.toml")) {
        try {
          const auto points = points_of(e.path());
          seen = points.size() == 4 && points[0].status == "complete" && points[1].status == "running" &&
                 fs::exists(points[1].run_dir / "log.txt") &&
                 moelab::read_file(points[1].run_dir / "log.txt").find("[collect]: reused from") != std::string::npos;
        } catch (const std::exception&) {
        }
      }
  }
  ASSERT_TRUE(seen) << moelab::read_file(dir.path() / "first.log");
  ASSERT_EQ(::kill(pid, SIGINT), 0);
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  const std::string first_log = moelab::read_file(dir.path() / "first.log");
  ASSERT_TRUE(WIFEXITED(status)) << first_log;
  EXPECT_EQ(WEXITSTATUS(status), 130) << first_log;
  EXPECT_THAT(first_log, HasSubstr("interrupt received; passing it to the 1 running point(s)"));
  const fs::path sweep = only_sweep(experiment_dir);
  std::vector<PointRow> before = points_of(sweep);
  EXPECT_EQ(before[0].status, "complete");
  EXPECT_EQ(before[3].status, "pending");
  EXPECT_THAT(moelab::read_file(sweep / "sweep.toml"), HasSubstr("status = 'interrupted'"));
  std::map<std::size_t, std::string> finished;  // point -> its summary.json before the resume
  for (std::size_t i = 0; i < before.size(); ++i)
    if (before[i].status == "complete") finished[i] = moelab::read_file(before[i].run_dir / "summary.json");

  auto r = run_command(runexp_binary() + " " + file.string() + kGrid + " --resume");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_EQ(only_sweep(experiment_dir), sweep);
  EXPECT_THAT(r.output, HasSubstr("point 1/4 (roma.lambda=0.1, roma.k=2): complete before, skipped"));
  const std::vector<PointRow> after = points_of(sweep);
  for (std::size_t i = 0; i < after.size(); ++i) {
    EXPECT_EQ(after[i].status, "complete") << i;
    EXPECT_EQ(after[i].run_dir, before[i].run_dir);
    if (finished.count(i)) EXPECT_EQ(moelab::read_file(after[i].run_dir / "summary.json"), finished[i]) << "point " << i + 1 << " was redone";
  }
  // Point 2 continued in its own folder (a second attempt); point 4 reused point 1's collection.
  EXPECT_EQ(nlohmann::json::parse(moelab::read_file(after[1].run_dir / "summary.json"))["attempt"], 2);
  EXPECT_EQ(nlohmann::json::parse(moelab::read_file(after[3].run_dir / "summary.json"))["stages"]["collect"]["reused_from"],
            (after[0].run_dir / "collect").string());
  std::istringstream csv(moelab::read_file(sweep / "sweep.csv"));
  std::string line;
  int rows = -1;
  while (std::getline(csv, line)) ++rows;
  EXPECT_EQ(rows, 4);
}

TEST(Sweep, ParsesValuesAsTomlListsAndRefusesBadAxes) {
  const moelab::SweepAxis axis = moelab::parse_sweep_axis("train.layers=[1, 2],[3,4], 'a,b' ,x");
  EXPECT_EQ(axis.key, "train.layers");
  EXPECT_EQ(axis.values, (std::vector<std::string>{"[1, 2]", "[3,4]", "'a,b'", "x"}));
  EXPECT_THAT(moelab::test::error_of([] { moelab::parse_sweep_axis("k=1,,2"); }), HasSubstr("--sweep k=1,,2: an empty value"));
  EXPECT_THAT(moelab::test::error_of([] { moelab::parse_sweep_axis("k=1,2,1"); }), HasSubstr("the value 1 is given twice"));
  EXPECT_THAT(moelab::test::error_of([] { moelab::parse_sweep_axis("k=[1,2"); }), HasSubstr("unclosed"));
  EXPECT_THAT(moelab::test::error_of([] { moelab::parse_sweep_axis("=1"); }), HasSubstr("expected key.path=value1,value2"));
  // Every point is checked before any runs: a value out of range names its --set.
  TempDir dir;
  const fs::path file = dir.write("grid.toml", roma_experiment());
  auto r = run_command(runexp_binary() + " " + file.string() + " --sweep roma.k=2,0");
  EXPECT_EQ(r.status, 1);
  EXPECT_THAT(r.output, HasSubstr("--set roma.k=0: key 'k' must be at least 1"));
  EXPECT_FALSE(fs::exists(dir.path() / "runs"));
  r = run_command(runexp_binary() + " " + file.string() + kGrid + " --dry-run");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("point 4/4: roma.lambda=2, roma.k=4"));
}

// GPU box (two or more CUDA devices): --jobs 2 gives each point its own GPU through CUDA_VISIBLE_DEVICES,
// and the two points still compute the collection once.
TEST(Sweep, JobsGiveEachRunningPointItsOwnGpu) {
  if (torch::cuda::device_count() < 2) GTEST_SKIP() << "needs two CUDA devices";
  TempDir dir;
  const fs::path file = dir.write("grid.toml", roma_experiment());
  auto r = run_command("env -u CUDA_VISIBLE_DEVICES " + runexp_binary() + " " + file.string() + " --sweep roma.k=2,4 --jobs 2");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("point 1/2 (roma.k=2): started on GPU 0"));
  EXPECT_THAT(r.output, HasSubstr("point 2/2 (roma.k=4): started on GPU 1"));
  EXPECT_THAT(r.output, HasSubstr("sweep: stage [collect] computed in point(s) "));
  EXPECT_THAT(r.output, HasSubstr("; reused (same config and inputs) in point(s) "));
  for (const auto& p : points_of(only_sweep(dir.path() / "runs" / "grid"))) {
    const auto summary = nlohmann::json::parse(moelab::read_file(p.run_dir / "summary.json"));
    EXPECT_EQ(summary["provenance"]["devices"]["cuda_count"], 1) << p.run_dir;
  }
}

TEST(Cli, VersionAndDidYouMean) {
  auto r = run_command(runexp_binary() + " --version");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_THAT(r.output, testing::MatchesRegex("moelab [0-9]+\\.[0-9]+\\.[0-9]+ \\(git .*, commit [0-9a-f]{40}.*\\), LibTorch .*\n"));
  r = run_command(runexp_binary() + " x.toml --reusme");
  EXPECT_EQ(r.status, 1);
  EXPECT_THAT(r.output, HasSubstr("unknown option --reusme (did you mean '--resume'?)"));
  r = run_command(runexp_binary() + " x.toml --swep=a=1,2");
  EXPECT_THAT(r.output, HasSubstr("unknown option --swep=a=1,2 (did you mean '--sweep'?)"));
  r = run_command(runexp_binary() + " compair a b");
  EXPECT_EQ(r.status, 1);
  EXPECT_THAT(r.output, HasSubstr("(did you mean 'compare'?)"));
  r = run_command(runexp_binary() + " --help");
  ASSERT_EQ(r.status, 0);
  for (const char* text : {"--sweep k=v", "--jobs N", "runexp compare RUN_DIR", "run_dir", "tb/", "results.json", "--version"})
    EXPECT_THAT(r.output, HasSubstr(text));
}

}  // namespace
