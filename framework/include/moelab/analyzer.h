// An analyzer turns recorded routing decisions into statistics (JSON) and files in its folder.
#pragma once

#include "moelab/plugin.h"

#include <nlohmann/json.hpp>
#include <torch/types.h>

#include <filesystem>
#include <vector>

namespace moelab {

struct RoutingRecords {
  torch::Tensor topk_ids;      // [N, L, k] int64: experts chosen for each of N tokens in each of L MoE layers
  torch::Tensor topk_weights;  // [N, L, k] float: their routing weights
  long long num_experts = 0;
  std::vector<torch::Tensor> routers;  // per MoE layer: the gate weight [E, hidden], for weight analyses (may be empty)
};

class Analyzer : public Plugin {
 public:
  static constexpr Kind kKind = Kind::analyzer;
  ~Analyzer() override;
  virtual nlohmann::json analyze(const RoutingRecords& records, const std::filesystem::path& out_dir) = 0;
};

}  // namespace moelab
