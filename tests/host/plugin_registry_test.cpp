// Plugin libraries: found by name, ABI checked, unique names, kept loaded while their objects live.
#include "moelab/moelab.h"
#include "moe_model.h"
#include "test_run.h"

#include <dlfcn.h>
#include <gmock/gmock.h>

using moelab::PluginRegistry;
using moelab::test::error_of;
using testing::HasSubstr;

namespace {

namespace fs = std::filesystem;

const fs::path kBuiltDir = MOELAB_PLUGIN_BUILD_DIR;
const fs::path kTestDir = MOELAB_TEST_PLUGIN_DIR;

TEST(PluginRegistry, FindsEveryKindByName) {
  PluginRegistry registry;
  registry.scan({kBuiltDir});
  std::map<std::string, moelab::Kind> expected = {
      {"task_ce", moelab::Kind::objective}, {"jsonl", moelab::Kind::dataset},     {"plain", moelab::Kind::sampler},
      {"expert_usage", moelab::Kind::analyzer}, {"rtn", moelab::Kind::transform}, {"hashed_bow", moelab::Kind::embedder},
      {"neighbours", moelab::Kind::stage}};
  for (const auto& [name, kind] : expected) {
    const auto* plugin = registry.find(name);
    ASSERT_NE(plugin, nullptr) << name;
    EXPECT_EQ(plugin->descriptor->kind, kind) << name;
    EXPECT_FALSE(plugin->descriptor->description.empty());
  }
  EXPECT_THAT(error_of([&] { registry.get("plian"); }), HasSubstr("did you mean 'plain'?"));
}

TEST(PluginRegistry, RefusesAPluginBuiltForAbi3NamingFileAndVersions) {
  PluginRegistry registry;
  fs::path file = kTestDir / "abi_mismatch" / "moelab_abi_mismatch.so";
  std::string error = error_of([&] { registry.load(file); });
  EXPECT_THAT(error, HasSubstr(file.string() + " was built for plugin ABI version 3, but this runexp uses version " +
                               std::to_string(moelab::kPluginAbiVersion)));
  EXPECT_THAT(error, HasSubstr("rebuild the plugin against this SDK"));
  EXPECT_EQ(registry.find("old_sampler"), nullptr);
  // Scanning its folder fails the same way: an old plugin is never skipped silently.
  EXPECT_THAT(error_of([&] { PluginRegistry().scan({kTestDir / "abi_mismatch"}); }), HasSubstr("ABI version 3"));
}

TEST(PluginRegistry, DuplicateNamesNameBothFiles) {
  PluginRegistry registry;
  std::string error = error_of([&] { registry.scan({kBuiltDir, kTestDir / "duplicate_jsonl"}); });
  EXPECT_THAT(error, HasSubstr("two plugins are named 'jsonl'"));
  EXPECT_THAT(error, HasSubstr((kBuiltDir / "moelab_jsonl.so").string()));
  EXPECT_THAT(error, HasSubstr((kTestDir / "duplicate_jsonl" / "moelab_duplicate_jsonl.so").string()));
}

TEST(PluginRegistry, SearchPathIncludesEnvironmentFolders) {
  setenv("MOELAB_PLUGIN_PATH", "/first:/second", 1);
  auto folders = PluginRegistry::default_search_path();
  unsetenv("MOELAB_PLUGIN_PATH");
  EXPECT_NE(std::find(folders.begin(), folders.end(), fs::path("/first")), folders.end());
  EXPECT_NE(std::find(folders.begin(), folders.end(), fs::path("/second")), folders.end());
}

bool library_loaded(const fs::path& file) {
  void* handle = dlopen(file.c_str(), RTLD_NOW | RTLD_NOLOAD);
  if (handle) dlclose(handle);
  return handle != nullptr;
}

TEST(PluginRegistry, LibraryStaysLoadedWhileAnObjectLives) {
  moelab::test::TempDir dir;
  // A private copy, so that no other test of this process has it loaded.
  fs::path plain_file = dir.path() / "moelab_plain_copy.so";
  fs::copy_file(kBuiltDir / "moelab_plain.so", plain_file);
  ASSERT_FALSE(library_loaded(plain_file));
  std::shared_ptr<moelab::Sampler> sampler;
  {
    auto registry = std::make_unique<PluginRegistry>();
    registry->load(plain_file);
    auto experiment = moelab::test::resolve_text(dir, "run_dir = \"runs\"\nstages = []\n[pick]\nplugin = \"plain\"\n");
    moelab::Config config(experiment.components.at("pick").config);
    auto run = std::make_unique<moelab::ExperimentRun>(std::move(experiment), *registry, false);
    sampler = std::dynamic_pointer_cast<moelab::Sampler>(registry->create("plain", config, *run));
  }
  ASSERT_TRUE(sampler);
  EXPECT_TRUE(library_loaded(plain_file));
  auto model = moelab::load_model(fs::path(MOELAB_BINARY_DIR) / "models" / "tiny-olmoe", torch::kCPU, torch::kFloat32);
  moelab::KVCache cache;
  torch::Tensor tokens = torch::tensor({{5}, {9}}, torch::kInt64);
  torch::Tensor picked = sampler->next(*model, tokens, cache, 0);
  EXPECT_TRUE(torch::equal(picked, model->forward(tokens, {}).select(1, -1).argmax(-1)));
  EXPECT_EQ(cache.length(), 1);
  sampler.reset();
  EXPECT_FALSE(library_loaded(plain_file));
}

}  // namespace
