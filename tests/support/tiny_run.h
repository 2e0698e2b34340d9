// A run of an experiment's stages as the host makes them, in memory: the built tiny model on the CPU in
// a chosen dtype (float64 for recorded losses, which [model] dtype does not offer), metrics rows kept
// in a list with an optional hook on each (where a test interrupts training).
#pragma once

#include "moelab/moelab.h"
#include "schema.h"

#include <nlohmann/json.hpp>

#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace moelab::test {

class TinyRun : public RunContext {
 public:
  using RowHook = std::function<void(const nlohmann::json&)>;
  TinyRun(ResolvedExperiment experiment, std::filesystem::path run_dir, torch::ScalarType dtype, RowHook on_row = {});

  // Runs one stage, or every stage of the experiment in order, into run_dir/<stage>.
  nlohmann::json run_stage(const std::string& id);
  const std::vector<nlohmann::json>& run_stages();
  const std::vector<nlohmann::json>& rows() const { return rows_; }
  // What the stages gave record_histogram and record_image, in order.
  struct Logged {
    std::string tag;
    std::vector<double> values;  // histograms
    std::filesystem::path png;   // images
    std::int64_t step;
  };
  const std::vector<Logged>& histograms() const { return histograms_; }
  const std::vector<Logged>& images() const { return images_; }

  const std::string& experiment_name() const override { return experiment_.run.name; }
  const std::filesystem::path& run_dir() const override { return run_dir_; }
  std::uint64_t seed() const override { return static_cast<std::uint64_t>(experiment_.run.seed); }
  void record_metrics(nlohmann::json row) override;
  void record_histogram(const std::string& tag, const std::vector<double>& values, std::int64_t step) override;
  void record_image(const std::string& tag, const std::filesystem::path& png, std::int64_t step) override;
  const std::filesystem::path& model_folder() override;
  Model& model() override;
  const Tokenizer& tokenizer() override;
  std::shared_ptr<Plugin> make_component(const std::string& id, Kind kind) override;

 private:
  ResolvedExperiment experiment_;
  std::filesystem::path run_dir_;
  torch::ScalarType dtype_;
  RowHook on_row_;
  std::vector<nlohmann::json> rows_;
  std::vector<Logged> histograms_, images_;
  std::unique_ptr<Model> model_;
  std::unique_ptr<Tokenizer> tokenizer_;
};

}  // namespace moelab::test
