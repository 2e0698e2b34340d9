// Router-only training with an objective plugin: the one loop behind every stage that trains routers
// (finetune on multiple-choice data, finetune_lm on calibration text). Only the chosen routers train
// (AdamW, linear lr warmup, optional gradient clipping); each step writes a metrics row and a log line,
// each epoch its means, and the end routers.safetensors with the same metadata for every stage.
// Layers before the first trained one cannot change: their output is kept per example in epoch 1 and
// later steps run only the layers from there (cache_hidden).
// A NaN/Inf loss, router gradient or router weight stops training with an error (or skips the step);
// an interrupt (moelab/lib/interrupted.h) saves <stage>/resume/, from which train() continues.
// Under torchrun each rank runs its contiguous part of every global batch and the router gradients are
// averaged over ranks (weighted by each rank's share), so the routers equal one process's to rounding;
// rank 0 alone writes files.
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

// What a NaN/Inf loss or router gradient does: stop training with an error, or skip that step's update.
enum class OnNonfinite { stop, skip_step };

struct RouterTraining {
  std::string objective;          // the objective's table
  std::vector<long long> layers;  // decoder layers whose routers train; empty: the last `last_layers` MoE layers
  long long last_layers = 0;      // 0: every MoE layer
  long long epochs = 1;
  long long batch_size = 1;
  double lr = 0, weight_decay = 0;
  long long warmup_steps = 0;
  double grad_clip = 0;           // 0: off
  long long reg_grad_norm_every = 50;  // log the routers' gradient norm from a "reg" loss part alone on step 0 and every N steps
  // Keep the first trained layer's input per example from epoch 1 and start later forwards there.
  bool cache_hidden = true;
  double cache_hidden_device_gib = 16;  // kept on the model's device up to this, the rest in pinned host memory
  OnNonfinite on_nonfinite = OnNonfinite::stop;
  long long max_skipped_steps = 10;  // skip_step: more skipped steps than this stop training
  long long checkpoint_every = 200;  // save <stage>/resume/ every N steps (0: only when interrupted)
  long long histogram_every = 50;    // TensorBoard histograms of router probabilities and expert load on step 0 and every N steps (0: never)
};

// The defaults a stage gives the training keys.
struct RouterTrainingDefaults {
  long long last_layers, epochs, batch_size, warmup_steps;
  double lr, weight_decay;
};
// The keys of RouterTraining (objective, layers, last_layers, epochs, batch_size, lr, weight_decay,
// warmup_steps, grad_clip, reg_grad_norm_every, cache_hidden, cache_hidden_device_gib, on_nonfinite, max_skipped_steps,
// checkpoint_every, histogram_every), for Options::include.
Options<RouterTraining> router_training_options(const RouterTrainingDefaults& defaults);

// What a stage trains on: `size` examples, and `batch`, one forward of the model over some of them
// (indices) that fills what the objective needs. Row i of that forward is example rows[i], and an
// example's tokens are the same in every batch (cache_hidden keeps its hidden state by example index).
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
  // - NaN/Inf: throws std::runtime_error naming the stage, step, loss part or router tensor and layer, and
  //   writes no routers.safetensors (one left by an unfinished earlier attempt is removed at the start).
  // - SIGINT/SIGTERM (handlers installed only while train() runs) or request_interrupt(): the current step
  //   finishes, out_dir/resume/ is saved and Interrupted is thrown. When out_dir/resume/ exists, train()
  //   continues from it (routers, AdamW state, step, data order, epoch sums) to the same routers as an
  //   uninterrupted run; metrics rows carry "attempt" (1, 2, ...). resume/ is removed once routers.safetensors is written.
  nlohmann::json train(const TrainingData& data, const std::filesystem::path& out_dir, const nlohmann::json& stage_settings);

 private:
  struct State;  // where training stands: step, data order, epoch sums (what resume/ holds)
  // Runs one step into `row`; false when its update was skipped (NaN/Inf loss or gradient under skip_step).
  bool step(ObjectiveBatch batch, torch::optim::Optimizer& optimizer, double lr, State& at, nlohmann::json& row);
  // Throws, naming the tensors, unless every trained router weight is finite; `when` says which step left them.
  void require_finite_routers(const std::string& when) const;
  std::string nonfinite_report(const State& at, const nlohmann::json& row) const;
  // torchrun (moelab/lib/distributed.h): the rank's weight in the global batch, and the step's reduction.
  double share_of(const ObjectiveBatch& batch) const;
  void reduce_step(const ObjectiveBatch& batch, nlohmann::json& row);
  // Histograms of each MoE layer's router probabilities and expert load in this step's forward (real tokens only).
  void record_routing_histograms(const torch::Tensor& attention_mask, long long step) const;
  nlohmann::json identity(const TrainingData& data) const;  // what a resume/ folder must have been saved by
  void save_resume(const std::filesystem::path& out_dir, const State& at, const nlohmann::json& identity,
                   torch::optim::Optimizer& optimizer) const;
  bool load_resume(const std::filesystem::path& out_dir, State& at, const nlohmann::json& identity, torch::optim::Optimizer& optimizer);

  RouterTraining settings_;
  RunContext& context_;
  std::string stage_, order_stream_;
  std::shared_ptr<Objective> objective_;
  std::vector<int> layers_;
  std::map<int, torch::Tensor> base_;
  std::vector<torch::Tensor> params_;
  bool stop_requested_ = false;  // torchrun: a rank asked to stop (SIGINT/SIGTERM) in this step
  long long global_tokens_ = 0;  // torchrun: real tokens of this step's global batch
  std::vector<std::string> param_names_;  // checkpoint names of params_ ("model.layers.5.mlp.gate.weight")
};

}  // namespace moelab
