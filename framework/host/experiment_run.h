// One run of a resolved experiment: makes (or, with resume, finds) the run folder, runs the stages in
// order, and keeps config.resolved.toml, log.txt, metrics.jsonl and summary.json up to date.
#pragma once

#include "moelab/context.h"
#include "moelab/lib/tensorboard.h"
#include "plugin_registry.h"
#include "run_lock.h"
#include "schema.h"
#include "stage_cache.h"

#include <fstream>
#include <memory>
#include <stdexcept>
#include <nlohmann/json.hpp>

namespace moelab {

// [model] path as a folder (built-in models sit beside the runexp binary).
std::filesystem::path resolve_model_folder(const ResolvedExperiment& experiment);
// The tokenizer.json a run reads: [model] tokenizer when set, else the one in `model_folder`.
std::filesystem::path tokenizer_file(const ResolvedExperiment& experiment, const std::filesystem::path& model_folder);

// A stage failed: its error is already in log.txt and summary.json (status "failed"); runexp exits 1.
struct RunFailed : std::runtime_error {
  using std::runtime_error::runtime_error;
};
// A stage stopped on SIGINT/SIGTERM after saving what it needs to continue (status "interrupted");
// runexp exits 130 and `--resume` continues.
struct RunInterrupted : RunFailed {
  using RunFailed::RunFailed;
};

// Where a run goes when the caller chooses (a sweep's points): its folder and the runs it may reuse stages from.
struct RunPlacement {
  std::filesystem::path run_dir;  // "": a new folder under <run_dir>/<name> (with resume: the newest one)
  StageCache reuse;               // further sources of finished stages, and the stage lock folder
};

class ExperimentRun final : public RunContext {
 public:
  // resume: continue the newest run folder if its resolved config is the same (stages already done are
  // skipped); otherwise start a new folder that reuses (hard-links) the newest run's finished stages
  // whose key (stage_keys.h) is unchanged.
  // The run folder is locked while this object lives (a second process on it fails at once).
  // placement.run_dir: this folder instead (continued when it holds the same resolved config, an error
  // when it holds another, a new run when it is empty or missing).
  ExperimentRun(ResolvedExperiment experiment, const PluginRegistry& registry, bool resume, RunPlacement placement = {});
  ~ExperimentRun() override;

  // Runs the stages in order. A stage that throws is recorded (log.txt, summary.json "status": "failed"
  // and "error", the stage's own summary.json) and RunFailed is thrown with the same message;
  // moelab::Interrupted becomes status "interrupted" and RunInterrupted.
  void run_stages();
  // 1 for a new run, one more for each --resume of the same folder; every metrics row carries it.
  int attempt() const { return attempt_; }

  const std::string& experiment_name() const override { return experiment_.run.name; }
  const std::filesystem::path& run_dir() const override { return run_dir_; }
  std::uint64_t seed() const override { return static_cast<std::uint64_t>(experiment_.run.seed); }
  // Also TensorBoard scalars in <run>/tb/ (TensorBoardWriter::add_metrics_row), with `tensorboard = true`.
  void record_metrics(nlohmann::json row) override;
  void record_histogram(const std::string& tag, const std::vector<double>& values, std::int64_t step) override;
  // Throws naming the file when it cannot be read or is not a PNG.
  void record_image(const std::string& tag, const std::filesystem::path& png, std::int64_t step) override;
  std::shared_ptr<Plugin> make_component(const std::string& id, Kind kind) override;
  const std::filesystem::path& model_folder() override;
  Model& model() override;
  const Tokenizer& tokenizer() override;

 private:
  void write_summary();
  // Runs one write to the TensorBoard log; an error is a warning and ends the log, never the run.
  template <class Write>
  void to_tensorboard(Write&& write);
  void stage_to_tensorboard(const std::string& id, const std::filesystem::path& stage_dir, const nlohmann::json& summary);
  // Throws when the loaded model's files changed size or modification time since they were read.
  void check_model_unchanged() const;
  void copy_metrics_of(const std::string& stage, const std::filesystem::path& from);
  // status: "failed" or "interrupted".
  void record_failure(const std::string& stage, const std::filesystem::path& stage_dir, nlohmann::json stage_summary,
                      const std::string& message, const std::string& status);

  ResolvedExperiment experiment_;
  const PluginRegistry& registry_;
  std::string config_text_;
  std::filesystem::path run_dir_;
  StageCache reuse_;  // runs whose finished stages may be reused (--resume with a changed config, a sweep's points)
  std::unique_ptr<RunLock> lock_;
  int attempt_ = 1;
  std::ofstream metrics_;
  std::unique_ptr<TensorBoardWriter> tb_;  // null: tensorboard = false, or its writes failed
  nlohmann::json summary_;
  std::unique_ptr<Model> model_;
  std::filesystem::path model_folder_;
  std::string model_files_state_;  // file_state of model_folder_ when the model was loaded
  std::unique_ptr<Tokenizer> tokenizer_;
};

}  // namespace moelab
