// A decoding strategy (greedy, temperature/top-p sampling, RoE...). Each step the generate loop hands
// it the newest token of every row; it runs the model over them, extending the cache by exactly those
// tokens on the deterministic path, and returns the next token of each row.
#pragma once

#include "moelab/model.h"
#include "moelab/plugin.h"

#include <torch/types.h>

#include <cstdint>

namespace moelab {

class Sampler : public Plugin {
 public:
  static constexpr Kind kKind = Kind::sampler;
  ~Sampler() override;
  // tokens [B, 1] int64; `step` counts decoding steps from 0 (a source of fresh randomness). Returns int64 [B].
  virtual torch::Tensor next(Model& model, const torch::Tensor& tokens, KVCache& cache, std::int64_t step) = 0;
};

// Uniform numbers in (0, 1), float64, of `shape` on `device`: a counter-based hash (splitmix64) of
// (seed, counter + element index), so draws are reproducible on any device and need no generator state.
torch::Tensor counter_uniform(std::uint64_t seed, std::uint64_t counter, at::IntArrayRef shape, torch::Device device);

// Next tokens [B] from probabilities [B, V]: the most likely when temperature is 0, else a draw from
// probs^(1/temperature) cut to the smallest nucleus holding top_p of the mass. `uniform` [B] drives the draw.
torch::Tensor pick_token(const torch::Tensor& probs, double temperature, double top_p, const torch::Tensor& uniform);

}  // namespace moelab
