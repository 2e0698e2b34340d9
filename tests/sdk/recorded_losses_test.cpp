// Recorded per-step losses guard the router training loop: the experiments in tests/assets/losses/ run on
// the tiny model in float64 and every step's loss, named parts and lr must equal the recorded ones within
// 1e-6. MOELAB_RECORD_LOSSES=1 writes the records instead (tests/assets/losses/README.md says when).
#include "moelab/moelab.h"
#include "test_run.h"
#include "tiny_run.h"

#include <cstdlib>
#include <fstream>

namespace {

namespace fs = std::filesystem;
using moelab::test::TempDir;

const fs::path kAssets = fs::path(MOELAB_SOURCE_DIR) / "tests" / "assets" / "losses";

// The experiment in `file`, resolved as runexp does; recorded runs use the built-in tiny model.
moelab::ResolvedExperiment recorded_experiment(const fs::path& file) {
  moelab::ResolvedExperiment experiment = moelab::resolve_experiment(moelab::load_experiment(file, {}), file, moelab::test::built_plugins());
  EXPECT_EQ(experiment.model.path, "builtin:tiny-olmoe") << file;
  return experiment;
}

// The numbers of a metrics row that a refactor must keep: step, epoch, lr, loss and every named part.
nlohmann::json recorded_fields(const nlohmann::json& row) {
  nlohmann::json out = nlohmann::json::object();
  for (const auto& [name, value] : row.items())
    if (value.is_number()) out[name] = value;
  return out;
}

void check_against_record(const std::string& name) {
  TempDir dir;
  // float64: float32 losses would depend on the BLAS's summation order, which differs between machines.
  moelab::test::TinyRun run(recorded_experiment(kAssets / (name + ".toml")), dir.path() / "run", torch::kFloat64);
  const std::vector<nlohmann::json> rows = run.run_stages();
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
