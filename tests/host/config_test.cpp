// Experiment files: declared keys only, typed values, defaults, --set overrides and `extends`.
#include "test_run.h"

#include <gmock/gmock.h>

using moelab::test::error_of;
using moelab::test::resolve_text;
using moelab::test::TempDir;
using testing::HasSubstr;

namespace {

const char* kBase = R"(stages = ["neighbours"]
[data]
plugin = "jsonl"
path = "questions.jsonl"
[embed]
plugin = "hashed_bow"
[neighbours]
plugin = "neighbours"
dataset = "data"
embedder = "embed"
)";

TEST(Config, FillsDefaultsAndResolvesPathsAgainstTheFile) {
  TempDir dir;
  auto e = resolve_text(dir, kBase);
  EXPECT_EQ(e.run.name, "experiment");
  EXPECT_EQ(e.run.seed, 0);
  const auto& neighbours = *e.components.at("neighbours").config;
  EXPECT_EQ(*neighbours.table.get("k")->value<long long>(), 5);
  EXPECT_EQ(neighbours.where.at("k"), "default");
  EXPECT_EQ(*e.components.at("data").config->table.get("path")->value<std::string>(), (dir.path() / "questions.jsonl").string());
  EXPECT_EQ(e.model.dtype, moelab::ModelDtype::float32);
}

TEST(Config, UnknownKeyNamesFileLineAndSuggestion) {
  TempDir dir;
  std::string error = error_of([&] { resolve_text(dir, std::string(kBase) + "sigmaa = 0.3\n"); });
  EXPECT_THAT(error, HasSubstr("experiment.toml:11"));
  EXPECT_THAT(error, HasSubstr("unknown key 'sigmaa' in [neighbours]"));
  EXPECT_THAT(error, HasSubstr("did you mean 'sigma'?"));
}

TEST(Config, UnknownTopLevelKeySuggestsHostKey) {
  TempDir dir;
  std::string error = error_of([&] { resolve_text(dir, std::string("sed = 3\n") + kBase); });
  EXPECT_THAT(error, HasSubstr("experiment.toml:1"));
  EXPECT_THAT(error, HasSubstr("did you mean 'seed'?"));
}

TEST(Config, WrongTypeNamesExpectedType) {
  TempDir dir;
  std::string error = error_of([&] { resolve_text(dir, std::string(kBase) + "k = \"five\"\n"); });
  EXPECT_THAT(error, HasSubstr("experiment.toml:11"));
  EXPECT_THAT(error, HasSubstr("key 'k' must be integer (at least 1), found string \"five\""));
  error = error_of([&] { resolve_text(dir, std::string(kBase) + "sigma = true\n"); });
  EXPECT_THAT(error, HasSubstr("must be number"));
}

TEST(Config, ChoiceKeysRejectOtherValues) {
  TempDir dir;
  std::string error = error_of([&] { resolve_text(dir, std::string(kBase) + "[model]\ndtype = \"bfloat61\"\n"); });
  EXPECT_THAT(error, HasSubstr("one of: float32, bfloat16"));
  EXPECT_THAT(error, HasSubstr("did you mean 'bfloat16'?"));
}

TEST(Config, MissingRequiredKeyAndUnknownPlugin) {
  TempDir dir;
  EXPECT_THAT(error_of([&] { resolve_text(dir, "stages = []\n[data]\nplugin = \"jsonl\"\n"); }),
              HasSubstr("[data] needs key 'path'"));
  EXPECT_THAT(error_of([&] { resolve_text(dir, "stages = []\n[data]\nplugin = \"jsnol\"\n"); }),
              AllOf(HasSubstr("experiment.toml:3"), HasSubstr("no plugin named 'jsnol' (did you mean 'jsonl'?)")));
}

TEST(Config, HostKeysAreReadIntoTypedOptions) {
  TempDir dir;
  auto e = resolve_text(dir, std::string("name = \"typed\"\nseed = 5\nlog_level = \"warn\"\nrun_dir = \"out\"\n") + kBase +
                                 "[model]\npath = \"m\"\ndevice = \"cpu\"\ndtype = \"bfloat16\"\nquantized = \"q.safetensors\"\n");
  EXPECT_EQ(e.run.name, "typed");
  EXPECT_EQ(e.run.seed, 5);
  EXPECT_EQ(e.run.log_level, moelab::LogLevel::warn);
  EXPECT_EQ(e.run.run_dir, dir.path() / "out");
  EXPECT_EQ(e.run.stages, std::vector<std::string>{"neighbours"});
  EXPECT_EQ(e.model.path, dir.path() / "m");
  EXPECT_EQ(e.model.device, moelab::ModelDevice::cpu);
  EXPECT_EQ(e.model.dtype, moelab::ModelDtype::bfloat16);
  EXPECT_EQ(e.model.quantized, dir.path() / "q.safetensors");
  EXPECT_THAT(moelab::Config(e.model_table).where("device"), HasSubstr("experiment.toml:17"));
  auto defaults = resolve_text(dir, kBase);
  EXPECT_EQ(defaults.run.log_level, moelab::LogLevel::info);
  EXPECT_EQ(defaults.model.path, "builtin:tiny-olmoe");
  EXPECT_EQ(defaults.model.device, moelab::ModelDevice::automatic);
  EXPECT_TRUE(defaults.model.quantized.empty());
}

TEST(Config, UnknownHostKeysListTheAcceptedOnes) {
  TempDir dir;
  EXPECT_THAT(error_of([&] { resolve_text(dir, std::string("sed = 3\n") + kBase); }),
              HasSubstr("(the top level accepts: name, seed, run_dir, plugin_path, log_level, stages, tensorboard)"));
  EXPECT_THAT(error_of([&] { resolve_text(dir, std::string(kBase) + "[model]\ndtyp = \"float32\"\n"); }),
              HasSubstr("experiment.toml:12: unknown key 'dtyp' in [model] (did you mean 'dtype'?) ([model] accepts: path, device, dtype, fused_kernels, grouped_mm, placement, quantized, tokenizer)"));
  // A [model] made only by --set keeps the override's name in errors.
  EXPECT_THAT(error_of([&] { resolve_text(dir, kBase, {"model.device=gpu"}); }),
              HasSubstr("--set model.device=gpu: key 'device' must be one of: auto, cpu, cuda; found \"gpu\""));
  EXPECT_THAT(error_of([&] { resolve_text(dir, "stages = \"neighbours\"\n" + std::string(kBase).substr(std::string(kBase).find('\n') + 1)); }),
              HasSubstr("key 'stages' must be array of strings"));
}

// The GPU fast paths (moe_model.h ForwardPaths) are on unless a key switches them off.
TEST(Config, ModelFastPathsDefaultOnAndEachCanBeSwitchedOff) {
  TempDir dir;
  const auto defaults = resolve_text(dir, kBase).model;
  EXPECT_TRUE(defaults.fused_kernels);
  EXPECT_TRUE(defaults.grouped_mm);
  const auto off = resolve_text(dir, kBase, {"model.fused_kernels=false", "model.grouped_mm=false"}).model;
  EXPECT_FALSE(off.fused_kernels);
  EXPECT_FALSE(off.grouped_mm);
  EXPECT_THAT(error_of([&] { resolve_text(dir, kBase, {"model.fused_kernels=1"}); }), HasSubstr("fused_kernels"));
}

TEST(Config, NumberRangesAreCheckedBeforeAnythingRuns) {
  TempDir dir;
  EXPECT_THAT(error_of([&] { resolve_text(dir, std::string(kBase) + "k = 0\n"); }),
              HasSubstr("experiment.toml:11: key 'k' must be at least 1, found integer 0"));
  EXPECT_THAT(error_of([&] { resolve_text(dir, std::string(kBase) + "sigma = -0.5\n"); }),
              HasSubstr("experiment.toml:11: key 'sigma' must be greater than 0, found number -0.5"));
}

TEST(Config, ComponentListsMustNameTablesOfTheRightKind) {
  TempDir dir;
  const std::string study = std::string(kBase) + "[study]\nplugin = \"collect\"\nsets = [\"data\", \"embed\"]\n";
  EXPECT_THAT(error_of([&] { resolve_text(dir, study); }),
              AllOf(HasSubstr("experiment.toml:13: [study] sets = 'embed' is not a dataset table"), HasSubstr("dataset tables here: data")));
  auto e = resolve_text(dir, std::string(kBase) + "[study]\nplugin = \"collect\"\nsets = [\"data\"]\n");
  EXPECT_EQ(moelab::Config(e.components.at("study").config).get_strings("sets"), std::vector<std::string>{"data"});
}

TEST(Config, ComponentReferencesMustNameTablesOfTheRightKind) {
  TempDir dir;
  std::string toml = kBase;
  toml.replace(toml.find("embedder = \"embed\""), 18, "embedder = \"data\"");
  std::string error = error_of([&] { resolve_text(dir, toml); });
  EXPECT_THAT(error, HasSubstr("'data' is not a embedder table"));
  EXPECT_THAT(error, HasSubstr("embedder tables here: embed"));
  EXPECT_THAT(error_of([&] { resolve_text(dir, "stages = [\"data\"]\n[data]\nplugin = \"jsonl\"\npath = \"x\"\n"); }),
              HasSubstr("stage 'data' is not a stage table"));
}

TEST(Config, SetOverridesParseTomlValues) {
  TempDir dir;
  auto e = resolve_text(dir, kBase, {"neighbours.k=7", "neighbours.sigma=0.25", "seed=11", "model.path=/models/olmoe"});
  const auto& n = *e.components.at("neighbours").config;
  EXPECT_EQ(*n.table.get("k")->value<long long>(), 7);
  EXPECT_DOUBLE_EQ(*n.table.get("sigma")->value<double>(), 0.25);
  EXPECT_EQ(n.where.at("k"), "--set neighbours.k=7");
  EXPECT_EQ(e.run.seed, 11);
  EXPECT_EQ(e.model.path, "/models/olmoe");
  EXPECT_THAT(error_of([&] { resolve_text(dir, kBase, {"neighbours.kk=7"}); }),
              AllOf(HasSubstr("--set neighbours.kk=7"), HasSubstr("did you mean 'k'?")));
  EXPECT_THAT(error_of([&] { resolve_text(dir, kBase, {"neighbours.k=\"7\""}); }), HasSubstr("must be integer"));
}

// Seen with the experiment fuzz target (fuzz/): more TOML after the value was dropped, and a control character
// gave a toml++ message that named no --set.
TEST(Config, SetOverrideValueIsOneTomlValueOrAPlainWord) {
  TempDir dir;
  EXPECT_THAT(error_of([&] { resolve_text(dir, kBase, {"seed=1\nname = \"other\""}); }),
              HasSubstr("--set seed=1\nname = \"other\": the value must be one TOML value, found more after it"));
  EXPECT_THAT(error_of([&] { resolve_text(dir, kBase, {"name=a\x01z"}); }),
              HasSubstr("--set name=a\x01z: the value is neither TOML nor a plain word; quote it"));
  EXPECT_EQ(resolve_text(dir, kBase, {"name=plain-word"}).run.name, "plain-word");
}

TEST(Config, ExtendsMergesTablesAndTheExtendingFileWins) {
  TempDir dir;
  dir.write("base.toml", std::string("seed = 3\nname = \"base\"\n") + kBase + "k = 2\nsigma = 0.5\n");
  auto e = resolve_text(dir, "extends = \"base.toml\"\nname = \"child\"\n[neighbours]\nk = 4\n");
  EXPECT_EQ(e.run.name, "child");
  EXPECT_EQ(e.run.seed, 3);
  const auto& n = *e.components.at("neighbours").config;
  EXPECT_EQ(*n.table.get("k")->value<long long>(), 4);
  EXPECT_DOUBLE_EQ(*n.table.get("sigma")->value<double>(), 0.5);
  EXPECT_THAT(n.where.at("sigma"), HasSubstr("base.toml:"));
  EXPECT_FALSE(e.table.contains("extends"));
}

TEST(Config, ExtendsCycleAndMissingBaseAreErrors) {
  TempDir dir;
  dir.write("a.toml", "extends = \"experiment.toml\"\n");
  EXPECT_THAT(error_of([&] { resolve_text(dir, "extends = \"a.toml\"\n"); }), HasSubstr("cycle"));
  EXPECT_THAT(error_of([&] { resolve_text(dir, "extends = \"nope.toml\"\n"); }),
              AllOf(HasSubstr("experiment.toml:1"), HasSubstr("nope.toml does not exist")));
}

TEST(Config, InvalidTomlNamesLineAndColumn) {
  TempDir dir;
  EXPECT_THAT(error_of([&] { resolve_text(dir, "stages = [\"a\"\nseed = 1\n"); }),
              AllOf(HasSubstr("experiment.toml:"), HasSubstr("invalid TOML")));
}

TEST(Config, ResolvedTomlRoundTrips) {
  TempDir dir;
  auto e = resolve_text(dir, kBase);
  std::string text = moelab::to_toml(e.table);
  auto again = resolve_text(dir, text);
  EXPECT_EQ(moelab::to_toml(again.table), text);
}

}  // namespace
