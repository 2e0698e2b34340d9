// Router-only training with an objective plugin: the one loop behind every stage that trains routers
// (finetune on multiple-choice data, finetune_lm on calibration text). Only the chosen routers train
// (AdamW, linear lr warmup, optional gradient clipping); each step writes a metrics row and a log line,
// each epoch its means, and the end routers.safetensors with the same metadata for every stage.
#pragma once

#include "moelab/context.h"
#include "moelab/objective.h"
#include "moelab/options.h"

#include <nlohmann/json.hpp>
#include <torch/optim/optimizer.h>

#include <cstddef>
#include <filesystem>
#include <functional>
#include <map>
#include <string>
#include <vector>

namespace moelab {

struct RouterTraining {
  std::string objective;          // the objective's table
  std::vector<long long> layers;  // decoder layers whose routers train; empty: the last `last_layers` MoE layers
  long long last_layers = 0;      // 0: every MoE layer
  long long epochs = 1;
  long long batch_size = 1;
  double lr = 0, weight_decay = 0;
  long long warmup_steps = 0;
  double grad_clip = 0;           // 0: off
  long long reg_grad_every = 1;   // log the routers' gradient norm from a "reg" loss part alone every N steps
};

// The defaults a stage gives the training keys.
struct RouterTrainingDefaults {
  long long last_layers, epochs, batch_size, warmup_steps;
  double lr, weight_decay;
};
// The keys of RouterTraining (objective, layers, last_layers, epochs, batch_size, lr, weight_decay,
// warmup_steps, grad_clip, reg_grad_every), for Options::include.
Options<RouterTraining> router_training_options(const RouterTrainingDefaults& defaults);

// What a stage trains on: `size` examples, and `batch`, one forward of the model over some of them
// (indices) that fills what the objective needs.
struct TrainingData {
  std::size_t size = 0;
  std::function<ObjectiveBatch(const std::vector<std::size_t>& rows, const ObjectiveNeeds& needs)> batch;
};

class RouterTrainer {
 public:
  // Makes the objective and checks its needs against what the stage's batches hold (`stage_gives`),
  // then selects the routers and freezes every other weight. `stage` is the stage's table (logs, metrics,
  // errors); `order_stream` names the seed stream of the per-epoch shuffles.
  RouterTrainer(const RouterTraining& settings, RunContext& context, std::string stage, const ObjectiveNeeds& stage_gives,
                const std::string& order_stream);
  // Gives the model its base routers back (also after an exception); later stages apply the checkpoint.
  ~RouterTrainer();
  RouterTrainer(const RouterTrainer&) = delete;
  RouterTrainer& operator=(const RouterTrainer&) = delete;

  const std::vector<int>& layers() const { return layers_; }

  // Trains `epochs` passes over `data`, writes out_dir/routers.safetensors and returns the stage's summary;
  // its "router_finetuning" holds the hyper-parameters, `stage_settings` included. The model keeps the
  // trained routers until the trainer dies.
  nlohmann::json train(const TrainingData& data, const std::filesystem::path& out_dir, const nlohmann::json& stage_settings);

 private:
  nlohmann::json step(ObjectiveBatch batch, torch::optim::Optimizer& optimizer, double lr, long long epoch, long long index,
                      long long total_steps);

  RouterTraining settings_;
  RunContext& context_;
  std::string stage_, order_stream_;
  std::shared_ptr<Objective> objective_;
  std::vector<int> layers_;
  std::map<int, torch::Tensor> base_;
  std::vector<torch::Tensor> params_;
};

}  // namespace moelab
