#include "tiny_run.h"

#include "moe_model.h"
#include "test_run.h"

namespace moelab::test {

namespace fs = std::filesystem;

namespace {
const fs::path& tiny_folder() {
  static const fs::path folder = fs::path(MOELAB_BINARY_DIR) / "models" / "tiny-olmoe";
  return folder;
}
}  // namespace

TinyRun::TinyRun(ResolvedExperiment experiment, fs::path run_dir, torch::ScalarType dtype, RowHook on_row)
    : experiment_(std::move(experiment)), run_dir_(std::move(run_dir)), dtype_(dtype), on_row_(std::move(on_row)) {
  fs::create_directories(run_dir_);
  at::manual_seed(experiment_.run.seed);
}

nlohmann::json TinyRun::run_stage(const std::string& id) {
  fs::create_directories(run_dir_ / id);
  nlohmann::json summary;
  make<Stage>(id)->run(run_dir_ / id, summary);
  return summary;
}

const std::vector<nlohmann::json>& TinyRun::run_stages() {
  for (const auto& id : experiment_.run.stages) run_stage(id);
  return rows_;
}

void TinyRun::record_metrics(nlohmann::json row) {
  rows_.push_back(row);
  if (on_row_) on_row_(rows_.back());
}

void TinyRun::record_histogram(const std::string& tag, const std::vector<double>& values, std::int64_t step) {
  histograms_.push_back({tag, values, {}, step});
}

void TinyRun::record_image(const std::string& tag, const fs::path& png, std::int64_t step) { images_.push_back({tag, {}, png, step}); }

const fs::path& TinyRun::model_folder() { return tiny_folder(); }

Model& TinyRun::model() {
  if (!model_) model_ = load_model(tiny_folder(), torch::kCPU, dtype_);
  return *model_;
}

const Tokenizer& TinyRun::tokenizer() {
  if (!tokenizer_) tokenizer_ = Tokenizer::from_file(tiny_folder() / "tokenizer.json");
  return *tokenizer_;
}

std::shared_ptr<Plugin> TinyRun::make_component(const std::string& id, Kind) {
  const Component& component = experiment_.components.at(id);
  return built_plugins().create(component.plugin, Config(component.config), *this);
}

}  // namespace moelab::test
