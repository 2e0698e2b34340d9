// What a run folder records about how it ran (summary.json "versions" and "provenance"), the [model]
// tokenizer key, clamped values named in a warning, and the installed layout (runexp, plugins, the
// versioned SDK library).
#include "experiment_run.h"
#include "moelab/lib/files.h"
#include "moelab/version.h"
#include "stage_keys.h"
#include "test_run.h"

#include <gmock/gmock.h>
#include <nlohmann/json.hpp>
#include <torch/cuda.h>
#include <torch/version.h>

#include <ATen/Parallel.h>
#include <unistd.h>

using moelab::test::run_command;
using moelab::test::runexp_binary;
using moelab::test::TempDir;
using testing::HasSubstr;

namespace {

namespace fs = std::filesystem;

const fs::path kTiny = fs::path(MOELAB_BINARY_DIR) / "models" / "tiny-olmoe";
const std::string kQuestions = std::string(MOELAB_SOURCE_DIR) + "/configs/data/arc_sample.jsonl";  // 16 questions

fs::path only_run_folder(const fs::path& experiment_dir) {
  std::vector<fs::path> runs;
  for (const auto& e : fs::directory_iterator(experiment_dir)) runs.push_back(e.path());
  EXPECT_EQ(runs.size(), 1u);
  return runs.empty() ? fs::path() : runs[0];
}

// A neighbours run with k = 100 over 16 questions: k is clamped to 15, with a warning naming the key.
std::string neighbours_experiment(long long k) {
  return "stages = [\"nb\"]\nrun_dir = \"runs\"\n[data]\nplugin = \"jsonl\"\npath = \"" + kQuestions +
         "\"\n[embed]\nplugin = \"hashed_bow\"\n[nb]\nplugin = \"neighbours\"\ndataset = \"data\"\nembedder = \"embed\"\nk = " +
         std::to_string(k) + "\n";
}

TEST(Provenance, SummaryRecordsVersionsCommandLineOverridesThreadsAndDevices) {
  TempDir dir;
  const fs::path file = dir.write("prov.toml", neighbours_experiment(3));
  const std::string command = runexp_binary() + " " + file.string() + " --set seed=7 --set=nb.sigma=0.5";
  auto r = run_command("cd " + dir.path().string() + " && " + command);
  ASSERT_EQ(r.status, 0) << r.output;
  const nlohmann::json summary = moelab::read_json(only_run_folder(dir.path() / "runs" / "prov") / "summary.json");

  const nlohmann::json& v = summary.at("versions");
  EXPECT_EQ(v.at("moelab"), MOELAB_VERSION_STRING);
  EXPECT_EQ(v.at("libtorch"), TORCH_VERSION);
  auto git = run_command(std::string("git -C ") + MOELAB_SOURCE_DIR + " rev-parse HEAD");
  // The binary records the commit of its build: HEAD may have moved since, but it has the same form.
  if (git.status == 0) EXPECT_THAT(v.at("git_commit").get<std::string>(), testing::MatchesRegex("[0-9a-f]{40}"));
  else EXPECT_EQ(v.at("git_commit"), "unknown");
  EXPECT_TRUE(v.at("git_dirty").is_boolean());

  const nlohmann::json& p = summary.at("provenance");
  const auto args = p.at("command_line").get<std::vector<std::string>>();
  ASSERT_EQ(args.size(), 5u);
  EXPECT_EQ(args[0], runexp_binary());
  EXPECT_EQ(args[1], file.string());
  EXPECT_EQ(p.at("overrides"), nlohmann::json({"seed=7", "nb.sigma=0.5"}));
  EXPECT_EQ(summary.at("seed"), 7);
  EXPECT_EQ(fs::path(p.at("working_dir").get<std::string>()), fs::canonical(dir.path()));
  char host[256] = {};
  gethostname(host, sizeof host - 1);
  EXPECT_EQ(p.at("hostname"), std::string(host));
  EXPECT_EQ(p.at("threads"), at::get_num_threads());  // the same default in this process as in runexp's
  const nlohmann::json& d = p.at("devices");
  EXPECT_FALSE(d.at("cpu").get<std::string>().empty());
  EXPECT_GE(d.at("cpu_cores").get<int>(), 1);
  const int cuda = torch::cuda::is_available() ? static_cast<int>(torch::cuda::device_count()) : 0;
  EXPECT_EQ(d.at("cuda_count"), cuda);
  EXPECT_EQ(d.at("cuda").size(), static_cast<std::size_t>(cuda));
}

TEST(Provenance, AClampedValueIsAWarningThatNamesTheKey) {
  TempDir dir;
  const fs::path file = dir.write("clamp.toml", neighbours_experiment(100));
  auto r = run_command(runexp_binary() + " " + file.string());
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_THAT(r.output, testing::ContainsRegex("WARN +\\[nb\\] k = 100 \\(.*clamp\\.toml:[0-9]+.*\\): a sample has only 15 other samples "
                                               "to be neighbours, so k = 15 is used"));
  const nlohmann::json summary = moelab::read_json(only_run_folder(dir.path() / "runs" / "clamp") / "summary.json");
  EXPECT_EQ(summary["stages"]["nb"]["k"], 15);
  // Within range: no warning.
  r = run_command(runexp_binary() + " " + dir.write("fits.toml", neighbours_experiment(15)).string());
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_THAT(r.output, testing::Not(HasSubstr("is used")));
}

// A model folder without tokenizer.json: the tiny model's weights and config only.
fs::path model_without_tokenizer(const TempDir& dir) {
  const fs::path folder = dir.path() / "bare-model";
  fs::create_directories(folder);
  for (const char* name : {"config.json", "model.safetensors"}) fs::copy_file(kTiny / name, folder / name);
  return folder;
}

TEST(TokenizerKey, ModelTokenizerPointsAtATokenizerJsonElsewhere) {
  TempDir dir;
  const fs::path bare = model_without_tokenizer(dir);
  const fs::path other = dir.path() / "tokenizers" / "tokenizer.json";
  fs::create_directories(other.parent_path());
  fs::copy_file(kTiny / "tokenizer.json", other);
  const std::string model = "stages = []\n[model]\npath = \"" + bare.string() + "\"\n";

  auto without = moelab::test::start_run(dir, model);
  EXPECT_THAT(moelab::test::error_of([&] { without->tokenizer(); }),
              testing::AllOf(HasSubstr("has no tokenizer.json"), HasSubstr("[model] tokenizer")));
  without.reset();

  auto with = moelab::test::start_run(dir, model + "tokenizer = \"" + other.string() + "\"\n");
  const auto reference = moelab::Tokenizer::from_file(kTiny / "tokenizer.json");
  EXPECT_EQ(with->tokenizer().encode("Routers pick experts."), reference->encode("Routers pick experts."));
  with.reset();

  EXPECT_THAT(moelab::test::error_of([&] { moelab::test::resolve_text(dir, model + "tokenizer = \"missing/tokenizer.json\"\n"); }),
              testing::AllOf(HasSubstr("experiment.toml:4"), HasSubstr("[model] tokenizer"), HasSubstr("no such file")));
}

// --dry-run opens [model] tokenizer and checks its ids against the model's vocabulary.
TEST(TokenizerKey, DryRunChecksTheNamedTokenizerAgainstTheModel) {
  TempDir dir;
  const fs::path bare = model_without_tokenizer(dir);
  nlohmann::json tok = moelab::read_json(kTiny / "tokenizer.json");
  tok["added_tokens"].push_back({{"id", 5000}, {"content", "<|beyond|>"}, {"single_word", false}, {"lstrip", false},
                                 {"rstrip", false}, {"normalized", false}, {"special", true}});
  const fs::path big = dir.write("big/tokenizer.json", tok.dump());
  const std::string base = neighbours_experiment(3) + "[model]\npath = \"" + bare.string() + "\"\n";
  auto r = run_command(runexp_binary() + " " + dir.write("ok.toml", base + "tokenizer = \"" + (kTiny / "tokenizer.json").string() + "\"\n").string() +
                       " --dry-run");
  EXPECT_EQ(r.status, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("tokenizer = "));
  r = run_command(runexp_binary() + " " + dir.write("big.toml", base + "tokenizer = \"" + big.string() + "\"\n").string() + " --dry-run");
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_THAT(r.output, testing::AllOf(HasSubstr(big.string()), HasSubstr("token id 5000"), HasSubstr("outside the model's vocabulary")));
}

TEST(TokenizerKey, StageKeysChangeWhenTheTokenizerFileChanges) {
  TempDir dir;
  const fs::path bare = model_without_tokenizer(dir);
  const fs::path other = dir.path() / "tok" / "tokenizer.json";
  fs::create_directories(other.parent_path());
  fs::copy_file(kTiny / "tokenizer.json", other);
  const std::string toml = neighbours_experiment(3) + "[model]\npath = \"" + bare.string() + "\"\ntokenizer = \"" + other.string() + "\"\n";
  const moelab::ResolvedExperiment experiment = moelab::test::resolve_text(dir, toml);
  const auto before = moelab::stage_keys(experiment, moelab::test::built_plugins(), bare).at("nb");
  EXPECT_THAT(before.text, HasSubstr("tokenizer"));
  std::string text = moelab::read_file(other);
  moelab::write_file_atomic(other, text + "\n\n");  // another size: another file state
  const auto after = moelab::stage_keys(experiment, moelab::test::built_plugins(), bare).at("nb");
  EXPECT_NE(before.hash, after.hash);
}

// `cmake --install`: runexp in bin, the plugins where it looks, the SDK library with its SOVERSION, the
// version header; the installed runexp lists the plugins and runs the built-in model.
TEST(Install, InstalledRunexpFindsItsPluginsAndTheVersionedSdk) {
  TempDir dir;
  const fs::path prefix = dir.path() / "prefix";
  auto r = run_command("cmake --install " + std::string(MOELAB_BINARY_DIR) + " --prefix " + prefix.string());
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_TRUE(fs::exists(prefix / "include" / "moelab" / "version.h"));
  EXPECT_TRUE(fs::exists(prefix / "lib" / "moelab" / "plugins" / "moelab_export_hf.so"));
  const std::string soname = fmt::format("libmoelab_sdk.so.{}.{}", MOELAB_VERSION_MAJOR, MOELAB_VERSION_MINOR);
  bool versioned = false;
  for (const auto& e : fs::recursive_directory_iterator(prefix)) versioned = versioned || e.path().filename() == soname;
  EXPECT_TRUE(versioned) << soname;
  r = run_command("env -u MOELAB_PLUGIN_PATH PATH=" + (prefix / "bin").string() + ":$PATH runexp --list-plugins");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_THAT(r.output, testing::ContainsRegex("export_hf +stage"));
  EXPECT_THAT(r.output, HasSubstr((prefix / "lib" / "moelab" / "plugins").string()));
  const fs::path file = dir.write("inst.toml", neighbours_experiment(3));
  r = run_command("cd " + dir.path().string() + " && env -u MOELAB_PLUGIN_PATH PATH=" + (prefix / "bin").string() + ":$PATH runexp " +
                  file.string());
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_EQ(moelab::read_json(only_run_folder(dir.path() / "runs" / "inst") / "summary.json")["status"], "complete");
}

}  // namespace
