// A transform rewrites model weights in place (quantizers, pruners), given by checkpoint name.
#pragma once

#include "moelab/plugin.h"

#include <nlohmann/json.hpp>
#include <torch/types.h>

#include <string>
#include <utility>
#include <vector>

namespace moelab {

// Weights by checkpoint name; the tensors share storage with the model, so writes change it.
using NamedTensors = std::vector<std::pair<std::string, torch::Tensor>>;

class Transform : public Plugin {
 public:
  static constexpr Kind kKind = Kind::transform;
  ~Transform() override;
  // Returns a report of what changed (for the run summary).
  virtual nlohmann::json apply(NamedTensors& weights) = 0;
};

}  // namespace moelab
