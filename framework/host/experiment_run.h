// One run of a resolved experiment: makes (or, with resume, finds) the run folder, runs the stages in
// order, and keeps config.resolved.toml, log.txt, metrics.jsonl and summary.json up to date.
#pragma once

#include "moelab/context.h"
#include "plugin_registry.h"
#include "schema.h"

#include <fstream>
#include <nlohmann/json.hpp>

namespace moelab {

class ExperimentRun final : public RunContext {
 public:
  // resume: reuse the newest run folder with the same resolved config and skip stages already done.
  ExperimentRun(ResolvedExperiment experiment, const PluginRegistry& registry, bool resume);
  ~ExperimentRun() override;

  void run_stages();

  const std::string& experiment_name() const override { return experiment_.run.name; }
  const std::filesystem::path& run_dir() const override { return run_dir_; }
  std::uint64_t seed() const override { return static_cast<std::uint64_t>(experiment_.run.seed); }
  void record_metrics(nlohmann::json row) override;
  std::shared_ptr<Plugin> make_component(const std::string& id, Kind kind) override;
  const std::filesystem::path& model_folder() override;
  Model& model() override;
  const Tokenizer& tokenizer() override;

 private:
  void write_summary();

  ResolvedExperiment experiment_;
  const PluginRegistry& registry_;
  std::string config_text_;
  std::filesystem::path run_dir_;
  std::ofstream metrics_;
  nlohmann::json summary_;
  std::unique_ptr<Model> model_;
  std::filesystem::path model_folder_;
  std::unique_ptr<Tokenizer> tokenizer_;
};

}  // namespace moelab
