// Recorded per-step losses guard the router training loop: the experiments in tests/assets/losses/ run on
// the tiny model in float64 and every step's loss, named parts and lr must equal the recorded ones within
// 1e-6. MOELAB_RECORD_LOSSES=1 writes the records instead (tests/assets/losses/README.md says when).
#include "moe_model.h"
#include "moelab/moelab.h"
#include "test_run.h"

#include <cstdlib>
#include <fstream>

namespace {

namespace fs = std::filesystem;
using moelab::test::TempDir;

const fs::path kAssets = fs::path(MOELAB_SOURCE_DIR) / "tests" / "assets" / "losses";
const fs::path kTiny = fs::path(MOELAB_BINARY_DIR) / "models" / "tiny-olmoe";

// Runs an experiment's stages as runexp does, with the tiny model in float64 ([model] dtype offers no
// float64): float32 losses would depend on the BLAS's summation order, which differs between machines.
class Float64Run final : public moelab::RunContext {
 public:
  Float64Run(const fs::path& file, const fs::path& run_dir)
      : experiment_(moelab::resolve_experiment(moelab::load_experiment(file, {}), file, moelab::test::built_plugins())), run_dir_(run_dir) {
    EXPECT_EQ(experiment_.model.path, "builtin:tiny-olmoe") << file;
    at::manual_seed(experiment_.run.seed);
  }

  std::vector<nlohmann::json> run_stages() {
    for (const auto& id : experiment_.run.stages) {
      fs::create_directories(run_dir_ / id);
      nlohmann::json summary;
      make<moelab::Stage>(id)->run(run_dir_ / id, summary);
    }
    return metrics_;
  }

  const std::string& experiment_name() const override { return experiment_.run.name; }
  const fs::path& run_dir() const override { return run_dir_; }
  std::uint64_t seed() const override { return static_cast<std::uint64_t>(experiment_.run.seed); }
  void record_metrics(nlohmann::json row) override { metrics_.push_back(std::move(row)); }
  const fs::path& model_folder() override { return kTiny; }
  moelab::Model& model() override {
    if (!model_) model_ = moelab::load_model(kTiny, torch::kCPU, torch::kFloat64);
    return *model_;
  }
  const moelab::Tokenizer& tokenizer() override {
    if (!tokenizer_) tokenizer_ = moelab::Tokenizer::from_file(kTiny / "tokenizer.json");
    return *tokenizer_;
  }
  std::shared_ptr<moelab::Plugin> make_component(const std::string& id, moelab::Kind) override {
    const moelab::Component& component = experiment_.components.at(id);
    return moelab::test::built_plugins().create(component.plugin, moelab::Config(component.config), *this);
  }

 private:
  moelab::ResolvedExperiment experiment_;
  fs::path run_dir_;
  std::vector<nlohmann::json> metrics_;
  std::unique_ptr<moelab::Model> model_;
  std::unique_ptr<moelab::Tokenizer> tokenizer_;
};

// The numbers of a metrics row that a refactor must keep: step, epoch, lr, loss and every named part.
nlohmann::json recorded_fields(const nlohmann::json& row) {
  nlohmann::json out = nlohmann::json::object();
  for (const auto& [name, value] : row.items())
    if (value.is_number()) out[name] = value;
  return out;
}

void check_against_record(const std::string& name) {
  TempDir dir;
  std::vector<nlohmann::json> rows = Float64Run(kAssets / (name + ".toml"), dir.path() / "run").run_stages();
  const fs::path record = kAssets / (name + ".jsonl");
  if (const char* flag = std::getenv("MOELAB_RECORD_LOSSES"); flag && std::string(flag) == "1") {
    std::ofstream out(record);
    for (const auto& row : rows) out << recorded_fields(row).dump() << "\n";
    GTEST_SKIP() << "recorded " << rows.size() << " steps in " << record;
  }
  std::ifstream in(record);
  ASSERT_TRUE(in) << record << " is missing; see tests/assets/losses/README.md";
  std::vector<nlohmann::json> expected;
  for (std::string line; std::getline(in, line);) expected.push_back(nlohmann::json::parse(line));
  ASSERT_EQ(rows.size(), expected.size()) << name << ": steps run vs recorded";
  for (std::size_t i = 0; i < rows.size(); ++i)
    for (const auto& [field, value] : expected[i].items()) {
      ASSERT_TRUE(rows[i].contains(field)) << name << " step " << i << " has no \"" << field << "\"";
      EXPECT_NEAR(rows[i][field].get<double>(), value.get<double>(), 1e-6) << name << " step " << i << " \"" << field << "\"";
    }
}

TEST(RecordedLosses, FinetuneWithRoma) { check_against_record("finetune_roma"); }
TEST(RecordedLosses, FinetuneWithTaskCe) { check_against_record("finetune_task_ce"); }
TEST(RecordedLosses, FinetuneLmWithLmCe) { check_against_record("finetune_lm_lm_ce"); }

}  // namespace
