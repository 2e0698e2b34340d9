// An embedder maps texts to vectors, for example to find a sample's task neighbours.
#pragma once

#include "moelab/plugin.h"

#include <torch/types.h>

#include <string>
#include <vector>

namespace moelab {

class Embedder : public Plugin {
 public:
  static constexpr Kind kKind = Kind::embedder;
  ~Embedder() override;
  // Returns float32 [N, D] with unit-length rows.
  virtual torch::Tensor embed(const std::vector<std::string>& texts) = 0;
};

}  // namespace moelab
