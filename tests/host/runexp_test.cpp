// The runexp binary end to end: listing, dry runs, a real run with its run folder, resume, errors,
// and a plugin built out of tree against the installed SDK.
#include "moelab/lib/files.h"
#include "test_run.h"

#include <gmock/gmock.h>
#include <nlohmann/json.hpp>

#include <algorithm>

using moelab::test::run_command;
using moelab::test::runexp_binary;
using moelab::test::TempDir;
using testing::HasSubstr;

namespace {

namespace fs = std::filesystem;

const std::string kDemo = std::string(MOELAB_SOURCE_DIR) + "/configs/neighbours_demo.toml";

fs::path only_run_folder(const fs::path& experiment_dir) {
  std::vector<fs::path> runs;
  for (const auto& e : fs::directory_iterator(experiment_dir)) runs.push_back(e.path());
  EXPECT_EQ(runs.size(), 1u);
  return runs.empty() ? fs::path() : runs[0];
}

TEST(Runexp, ListsPluginsWithKindVersionAndDescription) {
  auto r = run_command(runexp_binary() + " --list-plugins");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("task_ce"));
  EXPECT_THAT(r.output, testing::ContainsRegex("jsonl +dataset +0\\.1\\.0 +JSON Lines"));
  EXPECT_THAT(r.output, testing::ContainsRegex("neighbours +stage"));
}

TEST(Runexp, DryRunPrintsResolvedConfigWithDefaults) {
  auto r = run_command(runexp_binary() + " " + kDemo + " --dry-run --set neighbours.k=2");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("k = 2"));
  EXPECT_THAT(r.output, HasSubstr("sigma = 0.4"));  // a default
  EXPECT_THAT(r.output, HasSubstr("dim = 512"));
}

TEST(Runexp, RunsWritesRunFolderAndResumeSkipsFinishedStages) {
  TempDir dir;
  std::string base = runexp_binary() + " " + kDemo + " --set run_dir=" + dir.path().string();
  auto r = run_command(base);
  ASSERT_EQ(r.status, 0) << r.output;
  fs::path run = only_run_folder(dir.path() / "neighbours_demo");
  for (const char* f : {"config.resolved.toml", "log.txt", "metrics.jsonl", "summary.json", "neighbours/neighbours.json"})
    EXPECT_TRUE(fs::exists(run / f)) << f;
  auto summary = nlohmann::json::parse(moelab::read_file(run / "summary.json"));
  EXPECT_EQ(summary["stages"]["neighbours"]["samples"], 16);
  EXPECT_EQ(summary["seed"], 0);
  EXPECT_THAT(moelab::read_file(run / "log.txt"), HasSubstr("sigma = 0.4"));  // defaults are logged
  auto graph = nlohmann::json::parse(moelab::read_file(run / "neighbours" / "neighbours.json"));
  EXPECT_EQ(graph.size(), 16u);

  auto resumed = run_command(base + " --resume");
  ASSERT_EQ(resumed.status, 0) << resumed.output;
  EXPECT_THAT(resumed.output, HasSubstr("resuming run " + run.string()));
  EXPECT_THAT(resumed.output, HasSubstr("already done"));
  EXPECT_EQ(only_run_folder(dir.path() / "neighbours_demo"), run);

  auto changed = run_command(base + " --resume --set neighbours.k=2");
  ASSERT_EQ(changed.status, 0) << changed.output;
  EXPECT_THAT(changed.output, HasSubstr("has another config; starting a new run"));
  EXPECT_THAT(changed.output, testing::Not(HasSubstr("reused from")));  // k changes the only stage
}

TEST(Runexp, ConfigErrorsExitNonZeroWithLocation) {
  TempDir dir;
  auto r = run_command(runexp_binary() + " " + kDemo + " --dry-run --set neighbours.sigmaa=1");
  EXPECT_EQ(r.status, 1);
  EXPECT_THAT(r.output, HasSubstr("unknown key 'sigmaa' in [neighbours] (did you mean 'sigma'?)"));
  r = run_command(runexp_binary() + " " + kDemo + " --dry-run --set neighbours.k=0");
  EXPECT_EQ(r.status, 1);
  EXPECT_THAT(r.output, HasSubstr("--set neighbours.k=0: key 'k' must be at least 1, found integer 0"));
  fs::path bad = dir.write("bad.toml", "stages = [\"x\"]\n[x]\nplugin = \"neighbours\"\ndataset = \"d\"\nembedder = \"e\"\n");
  r = run_command(runexp_binary() + " " + bad.string() + " --dry-run");
  EXPECT_EQ(r.status, 1);
  EXPECT_THAT(r.output, HasSubstr("bad.toml:4"));
}

TEST(Runexp, LoadsAPluginBuiltOutOfTreeAgainstTheInstalledSdk) {
  TempDir dir;
  fs::path prefix = dir.path() / "install", build = dir.path() / "shout-build";
  auto step = [](const std::string& cmd) {
    auto r = run_command(cmd);
    EXPECT_EQ(r.status, 0) << cmd << "\n" << r.output;
    return r.status == 0;
  };
  std::string prefix_path = prefix.string() + "|" + MOELAB_TEST_PREFIX_PATH;
  std::replace(prefix_path.begin(), prefix_path.end(), '|', ';');
  ASSERT_TRUE(step("cmake --install " + std::string(MOELAB_BINARY_DIR) + " --prefix " + prefix.string()));
  ASSERT_TRUE(step("cmake -S " + std::string(MOELAB_SOURCE_DIR) + "/tests/sdk/out_of_tree -B " + build.string() +
                   " -DCMAKE_BUILD_TYPE=Release \"-DCMAKE_PREFIX_PATH=" + prefix_path + "\" \"-DCMAKE_CXX_FLAGS=" + MOELAB_TEST_CXX_FLAGS + "\""));
  ASSERT_TRUE(step("cmake --build " + build.string()));
  fs::path config = dir.write("shout.toml", "stages = [\"loud\"]\nrun_dir = \"runs\"\n[loud]\nplugin = \"shout\"\n"
                                            "message = \"routers matter\"\ntimes = 2\n");
  std::string installed = (prefix / "bin" / "runexp").string();
  auto listed = run_command(installed + " --list-plugins --plugin-path " + build.string());
  ASSERT_EQ(listed.status, 0) << listed.output;
  EXPECT_THAT(listed.output, testing::ContainsRegex("shout +stage +1\\.0\\.0"));
  EXPECT_THAT(listed.output, HasSubstr("neighbours"));  // the installed in-tree plugins are found too
  auto r = run_command("MOELAB_PLUGIN_PATH=" + build.string() + " " + installed + " " + config.string());
  ASSERT_EQ(r.status, 0) << r.output;
  fs::path run = only_run_folder(dir.path() / "runs" / "shout");
  EXPECT_EQ(moelab::read_file(run / "loud" / "shout.txt"), "ROUTERS MATTER\nROUTERS MATTER\n");

  // The README's objective: router_l2 added to task_ce trains, and every step logs its part.
  EXPECT_THAT(listed.output, testing::ContainsRegex("router_l2 +objective +1\\.0\\.0"));
  const std::string data = std::string(MOELAB_SOURCE_DIR) + "/configs/data/arith_train.jsonl";
  fs::path train = dir.write("l2.toml", "stages = [\"train\"]\nrun_dir = \"runs\"\n[data]\nplugin = \"jsonl\"\npath = \"" + data +
                                          "\"\n[task]\nplugin = \"task_ce\"\n[l2]\nplugin = \"router_l2\"\ncoef = 0.5\nadd_to = \"task\"\n"
                                          "[train]\nplugin = \"finetune\"\ndataset = \"data\"\nobjective = \"l2\"\nlast_layers = 2\n"
                                          "epochs = 1\nbatch_size = 32\n");
  r = run_command("MOELAB_PLUGIN_PATH=" + build.string() + " " + installed + " " + train.string());
  ASSERT_EQ(r.status, 0) << r.output;
  std::istringstream metrics(moelab::read_file(only_run_folder(dir.path() / "runs" / "l2") / "metrics.jsonl"));
  int steps = 0;
  for (std::string line; std::getline(metrics, line); ++steps) {
    auto row = nlohmann::json::parse(line);
    ASSERT_TRUE(row.contains("router_l2")) << line;
    EXPECT_GT(row["router_l2"].get<double>(), 0) << line;
    EXPECT_NEAR(row["loss"].get<double>(), row["task"].get<double>() + 0.5 * row["router_l2"].get<double>(), 1e-5) << line;
  }
  EXPECT_EQ(steps, 2);  // 64 questions / 32
}

}  // namespace
