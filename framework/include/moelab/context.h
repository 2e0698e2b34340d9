// What a plugin sees of the running experiment: its folder, seeds, metrics, and the other
// components named in the experiment file.
#pragma once

#include "moelab/model.h"
#include "moelab/plugin.h"
#include "moelab/tokenizer.h"

#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace moelab {

class RunContext {
 public:
  virtual ~RunContext();

  virtual const std::string& experiment_name() const = 0;
  virtual const std::filesystem::path& run_dir() const = 0;
  virtual std::uint64_t seed() const = 0;
  // A seed for one named random source, derived from the run seed so that sources stay independent.
  std::uint64_t seed_for(const std::string& stream) const;

  // Appends one JSON object as a line of metrics.jsonl (a "time" field is added).
  virtual void record_metrics(nlohmann::json row) = 0;
  // Figures and distributions for the run's TensorBoard log (<run>/tb/, when `tensorboard = true`): a
  // histogram of `values` (per-layer router probabilities, expert load), and a PNG file as an image.
  // Tags read "<stage>/<name>". A context without a TensorBoard log ignores them.
  virtual void record_histogram(const std::string& tag, const std::vector<double>& values, std::int64_t step);
  virtual void record_image(const std::string& tag, const std::filesystem::path& png, std::int64_t step);

  // The experiment's model ([model] table), loaded on first use and shared by all stages, and the
  // tokenizer.json of its folder.
  virtual Model& model() = 0;
  // The [model] folder (config.json, generation_config.json, tokenizer.json), without loading the model.
  virtual const std::filesystem::path& model_folder() = 0;
  virtual const Tokenizer& tokenizer() = 0;
  // A path a config gave: "@<stage>/<file>" names a file in this run's folder, anything else is as is.
  std::filesystem::path run_path(const std::filesystem::path& path) const;

  // Builds the component configured by table `id` (a table with plugin = "<name>") of the given kind.
  virtual std::shared_ptr<Plugin> make_component(const std::string& id, Kind kind) = 0;

  template <class T>
  std::shared_ptr<T> make(const std::string& id) {
    auto object = std::dynamic_pointer_cast<T>(make_component(id, T::kKind));
    if (!object) throw std::runtime_error("component '" + id + "' does not implement the " +
                                          std::string(kind_name(T::kKind)) + " interface");
    return object;
  }
};

}  // namespace moelab
