// A training objective: turns one batch's model outputs into the loss that is backpropagated.
#pragma once

#include "moelab/plugin.h"

#include <torch/types.h>

#include <string>
#include <utility>
#include <vector>

namespace moelab {

// What the training loop hands an objective. Fields an objective does not use may be undefined.
struct ObjectiveBatch {
  torch::Tensor last_logits;           // [B, V] logits at each row's last prompt token (never a pad)
  torch::Tensor choice_ids;            // [B, C] token ids of the answer options, -1 where a row has fewer
  torch::Tensor labels;                // [B] index of the gold option
  torch::Tensor logits;                // [B, T, V] all logits (language-model objectives)
  torch::Tensor target_ids;            // [B, T] next-token targets, -100 where ignored
  std::vector<int> routing_layers;      // the target MoE layers, in order
  std::vector<torch::Tensor> routing;  // per target layer: [B, E] live router logits at the last prompt token
  long long top_k = 0;                 // experts per token of the model
  std::vector<std::string> sample_keys;  // Example::id of each batch row
  long long step = 0;                  // optimizer step, from 0
};

struct LossTerms {
  torch::Tensor total;                                      // scalar to backpropagate
  std::vector<std::pair<std::string, torch::Tensor>> parts;  // named scalars for the log
};

class Objective : public Plugin {
 public:
  static constexpr Kind kKind = Kind::objective;
  ~Objective() override;
  virtual LossTerms compute(const ObjectiveBatch& batch) = 0;
};

}  // namespace moelab
