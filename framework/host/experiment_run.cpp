#include "experiment_run.h"

#include "../sdk/log_sink.h"
#include "moelab/files.h"
#include "moelab/log.h"
#include "moe_model.h"
#include "moelab/stage.h"

#include <fmt/chrono.h>
#include <fmt/format.h>
#include <ATen/Context.h>
#include <torch/cuda.h>
#include <torch/version.h>

#include <algorithm>
#include <ctime>

namespace moelab {

namespace fs = std::filesystem;

namespace {
std::string now_text(const char* format) {
  std::time_t t = std::time(nullptr);
  char buf[32];
  std::strftime(buf, sizeof buf, format, std::localtime(&t));
  return buf;
}

fs::path find_resumable(const fs::path& experiment_dir, const std::string& config_text) {
  if (!fs::is_directory(experiment_dir)) return {};
  std::vector<fs::path> runs;
  for (const auto& entry : fs::directory_iterator(experiment_dir))
    if (entry.is_directory() && fs::exists(entry.path() / "config.resolved.toml")) runs.push_back(entry.path());
  std::sort(runs.rbegin(), runs.rend());
  for (const auto& run : runs)
    if (read_file(run / "config.resolved.toml") == config_text) return run;
  return {};
}

fs::path new_run_dir(const fs::path& experiment_dir) {
  fs::path base = experiment_dir / now_text("%Y%m%d-%H%M%S");
  fs::path dir = base;
  for (int n = 2; fs::exists(dir); ++n) dir = base.string() + "-" + std::to_string(n);
  return dir;
}
}  // namespace

ExperimentRun::ExperimentRun(ResolvedExperiment experiment, const PluginRegistry& registry, bool resume)
    : experiment_(std::move(experiment)), registry_(registry), config_text_(to_toml(experiment_.table)) {
  fs::path experiment_dir = experiment_.run_dir / experiment_.name;
  if (resume) run_dir_ = find_resumable(experiment_dir, config_text_);
  bool resumed = !run_dir_.empty();
  if (!resumed) run_dir_ = new_run_dir(experiment_dir);
  fs::create_directories(run_dir_);
  log::set_file(run_dir_ / "log.txt");
  if (resume && !resumed) log::info("--resume: no earlier run of '{}' has this exact config; starting a new run", experiment_.name);
  log::info("{} run {} (seed {})", resumed ? "resuming" : "starting", run_dir_.string(), experiment_.seed);
  log::debug("resolved config (defaults included):\n{}", config_text_);
  if (!resumed) write_file_atomic(run_dir_ / "config.resolved.toml", config_text_);
  metrics_.open(run_dir_ / "metrics.jsonl", std::ios::app);

  at::manual_seed(experiment_.seed);
  summary_ = {{"experiment", experiment_.name},
              {"seed", experiment_.seed},
              {"run_dir", run_dir_.string()},
              {"started", now_text("%Y-%m-%dT%H:%M:%S")},
              {"versions", {{"moelab", kPluginAbiVersion}, {"libtorch", TORCH_VERSION}}},
              {"stages", nlohmann::json::object()}};
}

ExperimentRun::~ExperimentRun() { log::set_file({}); }

void ExperimentRun::record_metrics(nlohmann::json row) {
  row["time"] = now_text("%Y-%m-%dT%H:%M:%S");
  metrics_ << row.dump() << "\n" << std::flush;
}

std::shared_ptr<Plugin> ExperimentRun::make_component(const std::string& id, Kind kind) {
  auto it = experiment_.components.find(id);
  if (it == experiment_.components.end())
    throw std::runtime_error(fmt::format("no component table [{}] in experiment '{}'", id, experiment_.name));
  const LoadedPlugin& plugin = registry_.get(it->second.plugin);
  if (plugin.descriptor->kind != kind)
    throw std::runtime_error(fmt::format("[{}] uses plugin {} of kind {}, where a {} is needed", id, plugin.descriptor->name,
                                         kind_name(plugin.descriptor->kind), kind_name(kind)));
  return registry_.create(it->second.plugin, Config(it->second.config), *this);
}

Model& ExperimentRun::model() {
  if (model_) return *model_;
  const auto& t = experiment_.model->table;
  std::string path = *t.get("path")->value<std::string>();
  std::string device = *t.get("device")->value<std::string>();
  if (path.rfind("builtin:", 0) == 0)
    throw std::runtime_error(fmt::format("[model] path = \"{}\" ({}): the built-in tiny model is not available in this build; "
                                         "set model.path to a Hugging Face model folder",
                                         path, experiment_.model->where.at("path")));
  if (device == "cuda" && !torch::cuda::is_available())
    throw std::runtime_error(fmt::format("[model] device = \"cuda\" ({}), but this LibTorch sees no CUDA device",
                                         experiment_.model->where.at("device")));
  bool cuda = device == "cuda" || (device == "auto" && torch::cuda::is_available());
  bool bf16 = *t.get("dtype")->value<std::string>() == "bfloat16";
  model_ = load_model(path, cuda ? torch::Device(torch::kCUDA) : torch::Device(torch::kCPU), bf16 ? torch::kBFloat16 : torch::kFloat32);
  return *model_;
}

void ExperimentRun::run_stages() {
  std::size_t index = 0;
  for (const auto& id : experiment_.stages) {
    ++index;
    fs::path stage_dir = run_dir_ / id;
    fs::path done_marker = stage_dir / ".done";
    if (fs::exists(done_marker)) {
      log::info("stage {}/{} [{}]: already done in this run folder, skipped", index, experiment_.stages.size(), id);
      summary_["stages"][id] = nlohmann::json::parse(read_file(stage_dir / "summary.json"));
      continue;
    }
    fs::create_directories(stage_dir);
    log::info("stage {}/{} [{}] ({})", index, experiment_.stages.size(), id, experiment_.components.at(id).plugin);
    auto started = std::chrono::steady_clock::now();
    nlohmann::json stage_summary = nlohmann::json::object();
    std::dynamic_pointer_cast<Stage>(make_component(id, Kind::stage))->run(stage_dir, stage_summary);
    double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    stage_summary["seconds"] = seconds;
    write_file_atomic(stage_dir / "summary.json", stage_summary.dump(2) + "\n");
    write_file_atomic(done_marker, "done\n");
    summary_["stages"][id] = stage_summary;
    write_summary();
    log::info("stage [{}] done in {:.1f}s", id, seconds);
  }
  summary_["finished"] = now_text("%Y-%m-%dT%H:%M:%S");
  write_summary();
  log::info("run complete: {}", (run_dir_ / "summary.json").string());
}

void ExperimentRun::write_summary() { write_file_atomic(run_dir_ / "summary.json", summary_.dump(2) + "\n"); }

}  // namespace moelab
