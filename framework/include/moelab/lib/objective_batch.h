// A training batch for an objective (ObjectiveBatch) from one forward of the model, holding only what
// the objective needs; the stages that train with an objective plugin build theirs with it.
#pragma once

#include "moelab/model.h"
#include "moelab/objective.h"

#include <torch/types.h>

namespace moelab {

// One forward of `model` over input_ids [B, T] (attention_mask [B, T], or undefined for no padding)
// packaged with what `needs` asks for; choices leaves only last_logits filled, the rest is the caller's.
ObjectiveBatch forward_for_objective(Model& model, const torch::Tensor& input_ids, const torch::Tensor& attention_mask,
                                     const ObjectiveNeeds& needs);

// [B, T] next-token targets: the next token where it and the current one are real, else -100.
torch::Tensor next_token_targets(const torch::Tensor& input_ids, const torch::Tensor& attention_mask);
// Cross-entropy of logits [B, T, V] against targets [B, T], per position: [B, T], 0 where the target is -100
// (computed in float32, or float64 for float64 logits).
torch::Tensor token_cross_entropy(const torch::Tensor& logits, const torch::Tensor& target_ids);

}  // namespace moelab
