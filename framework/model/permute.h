// Moving token rows into expert order and back for the MoE layer, as gathers in both directions: the
// backward of each move is the other gather (a sum over a token's k copies), never a scatter-add.
#pragma once

#include <torch/types.h>

namespace moelab {

// A MoE layer's assignment of N tokens to k experts each, sorted by expert.
struct ExpertOrder {
  torch::Tensor order;     // [N * k] int64: slot p of the expert order holds (token, choice) pair order[p]
  torch::Tensor token_of;  // [N * k] int64: the token at slot p (order[p] / k)
  torch::Tensor slot_of;   // [N * k] int64: the slot of pair q (the inverse permutation of order)
  int64_t tokens = 0, top_k = 0;
};

// The order for expert ids [N, k] (stable: ties keep token order).
ExpertOrder expert_order(const torch::Tensor& ids);

// x [N, H] -> [N * k, H]: each token's row once per chosen expert, in expert order.
torch::Tensor to_expert_order(const torch::Tensor& x, const ExpertOrder& order);

// y [N * k, H] in expert order -> [N, k, H]: each token's k expert outputs, in its choice order.
torch::Tensor from_expert_order(const torch::Tensor& y, const ExpertOrder& order);

}  // namespace moelab
