// Router checkpoints: only the trained gate tensors, with metadata that proves what they are (target
// layers, model fingerprint, base-gate fingerprint, hyper-parameters, steps). Applying one checks
// the model and logs how far each layer moved from the base; a checkpoint that changes nothing warns.
#pragma once

#include "moelab/model.h"

#include <filesystem>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

namespace moelab {

// A fingerprint of the model (type, sizes, MoE layers) that a checkpoint must match.
std::string model_fingerprint(const Model& model);

// The checkpoint name of a MoE layer's router tensor ("model.layers.5.mlp.gate.weight"), for messages.
std::string router_tensor_name(Model& model, int layer);
// A CRC-32 (8 hex digits) of the model's weights other than `replaced` (tensor names): names, shapes and
// 16 evenly spaced values of each, as bfloat16. Checkpoints record it for the weights they do not
// replace, so one made from another model of the same shapes is refused.
std::string model_content_hash(Model& model, const std::set<std::string>& replaced);
// Throws naming `file` when `recorded` is not this model's hash; warns when `recorded` is empty (older files).
void check_content_hash(const std::filesystem::path& file, const std::string& recorded, Model& model, const std::set<std::string>& replaced);

void save_router_checkpoint(const std::filesystem::path& file, Model& model, const std::vector<int>& layers,
                            const std::map<int, torch::Tensor>& base_routers, std::map<std::string, std::string> metadata);

// Copies the checkpoint's gates into the model, refusing NaN/Inf gates; returns the relative change
// ||W_ft - W_base|| / ||W_base|| per layer.
std::map<int, double> apply_router_checkpoint(const std::filesystem::path& file, Model& model);

// Host copies of the model's routers (and, with `experts`, of every routed expert weight), written back
// when the guard dies, even on an exception: a stage can apply another state (a router or quantized
// checkpoint) and leave the shared model as it found it.
class RestoreModelOnExit {
 public:
  RestoreModelOnExit(Model& model, bool experts);
  ~RestoreModelOnExit();
  RestoreModelOnExit(const RestoreModelOnExit&) = delete;
  RestoreModelOnExit& operator=(const RestoreModelOnExit&) = delete;

 private:
  std::vector<std::pair<torch::Tensor, torch::Tensor>> saved_;  // (model tensor, host copy)
};

}  // namespace moelab
