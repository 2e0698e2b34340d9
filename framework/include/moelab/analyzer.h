// An analyzer turns recorded routing decisions into statistics (JSON), tables (CSV) and figures (PNG)
// in its folder. Its JSON may list "figures" ([{file, caption}], see plot.h) for the report page.
#pragma once

#include "moelab/model.h"
#include "moelab/plugin.h"

#include <nlohmann/json.hpp>
#include <torch/types.h>

#include <filesystem>
#include <string>
#include <vector>

namespace moelab {

struct RoutingRecords {
  torch::Tensor topk_ids;      // [N, L, k] int64: experts chosen for each of N tokens in each of L MoE layers
  torch::Tensor topk_weights;  // [N, L, k] float: their routing weights
  long long num_experts = 0;
  std::vector<torch::Tensor> routers;  // per MoE layer: the gate weight [E, hidden], for weight analyses (may be empty)
  torch::Tensor probs;                 // [N, L, E] full router softmax, when collected (else undefined)
  torch::Tensor entropy, margin;       // [N, L] entropy (nats) of the full router softmax, top-1 minus top-2 probability
  torch::Tensor set_ids;               // [N] int64 index into set_names of each token's text set (undefined: one set)
  std::vector<std::string> set_names;
  std::vector<int> layers;             // decoder layer index of each of the L MoE layers (empty: 0..L-1)
  std::vector<ExpertWeights> experts;  // per MoE layer: the routed experts, for router-expert analyses (may be empty)
  const RoutingRecords* compare = nullptr;  // the same tokens under a second router state (compare mode), or null

  long long layer_label(long long l) const { return layers.empty() ? l : layers.at(l); }
  // layer_label of the first `count` MoE layers as text: plot tick labels, so figures number layers as
  // the JSON and the logs do.
  std::vector<std::string> layer_labels(long long count) const {
    std::vector<std::string> labels;
    for (long long l = 0; l < count; ++l) labels.push_back(std::to_string(layer_label(l)));
    return labels;
  }
  // Indices [n] of the tokens of text set s.
  torch::Tensor rows_of_set(std::size_t s) const;
};

// Expert usage [L, E] from top-k ids [N, L, k]: each layer's share of slots per expert, counting `mass`
// [N, L, k] per slot (for example the routing weights) or 1 when it is undefined.
torch::Tensor usage_shares(const torch::Tensor& topk_ids, long long num_experts, const torch::Tensor& mass = {});

class Analyzer : public Plugin {
 public:
  static constexpr Kind kKind = Kind::analyzer;
  ~Analyzer() override;
  virtual nlohmann::json analyze(const RoutingRecords& records, const std::filesystem::path& out_dir) = 0;
};

}  // namespace moelab
