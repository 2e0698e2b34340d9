// A decoding strategy: a next-token distribution (plain, RoE...) followed by a chain of pickers
// (pickers.h) configured on the same table. Each step the generate loop hands the sampler the newest
// token of every row; the distribution runs the model over them, extending the cache by exactly those
// tokens on the deterministic path, and the chain turns its scores into the next token of each row.
#pragma once

#include "moelab/model.h"
#include "moelab/lib/pickers.h"
#include "moelab/plugin.h"

#include <torch/types.h>

#include <cstdint>

namespace moelab {

class Sampler : public Plugin {
 public:
  static constexpr Kind kKind = Kind::sampler;
  // A distribution plugin includes pick_options() in its Options and builds its chain with pick_chain().
  explicit Sampler(PickChain chain);
  ~Sampler() override;
  // tokens [B, 1] int64; `step` counts decoding steps from 0 (a source of fresh randomness). Returns the
  // next-token scores [B, V], logits or log-probabilities: softmax(scores) is the distribution.
  virtual torch::Tensor next_scores(Model& model, const torch::Tensor& tokens, KVCache& cache, std::int64_t step) = 0;
  // next_scores, then the chain: int64 [B]. `history` [B, S] int64 holds each row's tokens so far (-1 where
  // none, as left padding); only repetition_penalty reads it.
  torch::Tensor next(Model& model, const torch::Tensor& tokens, KVCache& cache, std::int64_t step, const torch::Tensor& history = {});

 private:
  PickChain chain_;
};

// Uniform numbers in (0, 1), float64, of `shape` on `device`: a counter-based hash (splitmix64) of
// (seed, counter + element index), so draws are reproducible on any device and need no generator state.
torch::Tensor counter_uniform(std::uint64_t seed, std::uint64_t counter, at::IntArrayRef shape, torch::Device device);

}  // namespace moelab
