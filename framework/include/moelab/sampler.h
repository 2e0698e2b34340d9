// A sampler chooses the next token of each row from next-token logits.
#pragma once

#include "moelab/plugin.h"

#include <torch/types.h>

namespace moelab {

class Sampler : public Plugin {
 public:
  static constexpr Kind kKind = Kind::sampler;
  ~Sampler() override;
  // logits: [B, V]; returns int64 [B].
  virtual torch::Tensor choose(const torch::Tensor& logits) = 0;
};

}  // namespace moelab
