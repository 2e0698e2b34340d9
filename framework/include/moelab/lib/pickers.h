// Pickers turn a next-token distribution into tokens, one small step each, chained in the order a
// sampler's `pick` key lists them (as llama.cpp's sampler chain): repetition_penalty, temperature,
// top_k and top_p reshape the distribution; greedy or draw, always last, picks the token.
#pragma once

#include "moelab/options.h"

#include <torch/types.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace moelab {

// What the pickers of one decoding step share. The distribution's scores come first; the first picker
// that needs probabilities makes `probs` from them and the pickers after it reshape `probs`, so that
// temperature and the nucleus are computed on probabilities (p^(1/T)), not on their logarithms.
struct PickState {
  torch::Tensor scores;   // [B, V] logits or log-probabilities: softmax(scores) is the distribution
  torch::Tensor probs;    // [B, V] float64, proportional to each row's distribution, once a picker made it
  torch::Tensor order;    // [B, V] int64 token ids by descending probs, left by the picker that sorted them
  torch::Tensor history;  // [B, S] int64 tokens of each row so far (prompt and generated), -1 where none
  torch::Tensor uniform;  // [B] float64 in (0, 1): what draw turns into each row's token
  torch::Tensor tokens;   // [B] int64: the pick, set by the last picker

  // probs, made on first use: the softmax of scores in their own dtype, then float64.
  torch::Tensor& probabilities();
};

class Picker {
 public:
  virtual ~Picker();
  virtual void apply(PickState& state) const = 0;
};

// The pickers' settings; every default leaves the distribution as it is.
struct PickSettings {
  double temperature = 1.0;         // probabilities raised to 1/temperature (softmax(scores / T)); 0: only the most likely
  long long top_k = 0;              // keep the top_k most likely tokens, ties with the last included; 0: all
  double top_p = 1.0;               // keep the most likely tokens until the ones before hold top_p of the mass
  double repetition_penalty = 1.0;  // Hugging Face's: a seen token's score s becomes s / penalty if s > 0, else s * penalty
};

// One picker by name: repetition_penalty, temperature, top_k, top_p, greedy or draw. Throws
// std::invalid_argument listing the names when `name` is none of them.
std::unique_ptr<Picker> make_picker(const std::string& name, const PickSettings& settings);

// The pickers named in order; `seed` makes draw's uniforms (counter_uniform at counter step * B).
class PickChain {
 public:
  // Throws std::invalid_argument naming pick[i] when a name is unknown, greedy or draw is not last, or
  // repetition_penalty (which rescales raw scores) comes after temperature, top_k or top_p.
  PickChain(const std::vector<std::string>& names, const PickSettings& settings, std::uint64_t seed);
  // Next tokens [B] int64 from scores [B, V] at decoding `step`; `history` is read by repetition_penalty only.
  torch::Tensor pick(const torch::Tensor& scores, const torch::Tensor& history, std::int64_t step) const;

 private:
  std::vector<std::shared_ptr<const Picker>> pickers_;
  std::uint64_t seed_;
  bool draws_;
};

// A sampler's picking keys: `pick` (the chain, default ["greedy"]) and the pickers' settings with their ranges.
struct PickOptions {
  std::vector<std::string> pick;
  PickSettings settings;
};
// For a sampler's Options: .include(&MySettings::picking, moelab::pick_options()).
const Options<PickOptions>& pick_options();
// The chain `options` (read from `config`) describe. Throws naming the key and where it was set when `pick`
// is not a valid chain or a setting is given whose picker is not in `pick`.
PickChain pick_chain(const PickOptions& options, const Config& config, std::uint64_t seed);

}  // namespace moelab
