#include "moelab/config.h"
#include "moelab/pickers.h"
#include "moelab/sampler.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <stdexcept>

namespace moelab {

PickChain::PickChain(const std::vector<std::string>& names, const PickSettings& settings, std::uint64_t seed)
    : seed_(seed), draws_(!names.empty() && names.back() == "draw") {
  if (names.empty()) throw std::invalid_argument("the chain is empty; it needs a last picker, greedy or draw");
  bool reshaped = false;  // an earlier picker worked on probabilities
  for (std::size_t i = 0; i < names.size(); ++i) {
    const std::string& name = names[i];
    try {
      pickers_.push_back(make_picker(name, settings));
    } catch (const std::invalid_argument& e) {
      throw std::invalid_argument(fmt::format("pick[{}]: {}", i, e.what()));
    }
    const bool picks = name == "greedy" || name == "draw", last = i + 1 == names.size();
    if (picks && !last) throw std::invalid_argument(fmt::format("pick[{}] = \"{}\" picks the token, so it must come last", i, name));
    if (!picks && last) throw std::invalid_argument(fmt::format("pick[{}] = \"{}\" is last, but the chain must end with greedy or draw", i, name));
    if (name == "repetition_penalty" && reshaped)
      throw std::invalid_argument(fmt::format("pick[{}] = \"repetition_penalty\" rescales raw scores, so it must come before temperature, top_k and top_p", i));
    reshaped = reshaped || name == "temperature" || name == "top_k" || name == "top_p";
  }
}

torch::Tensor PickChain::pick(const torch::Tensor& scores, const torch::Tensor& history, std::int64_t step) const {
  PickState state;
  state.scores = scores;
  state.history = history;
  const std::int64_t rows = scores.size(0);
  if (draws_) state.uniform = counter_uniform(seed_, static_cast<std::uint64_t>(step) * rows, {rows}, scores.device());
  for (const auto& picker : pickers_) picker->apply(state);
  return state.tokens;
}

Descriptor& add_picker_keys(Descriptor& d) {
  const PickSettings neutral;
  return d
      .strings("pick", {"greedy"},
               "pickers applied in order to the next-token distribution, the last one greedy or draw: repetition_penalty, "
               "temperature, top_k, top_p, greedy, draw")
      .real("temperature", neutral.temperature, "temperature picker: probabilities raised to 1/temperature (softmax(scores / T)); 0: only the most likely token")
      .integer("top_k", neutral.top_k, "top_k picker: keep the k most likely tokens, ties with the k-th included; 0: all")
      .real("top_p", neutral.top_p, "top_p picker: keep the most likely tokens while those before them hold less than top_p of the mass")
      .real("repetition_penalty", neutral.repetition_penalty,
            "repetition_penalty picker (Hugging Face's): the score of a token already in the row is divided by it if positive, else multiplied");
}

PickChain pick_chain(const Config& config, std::uint64_t seed) {
  const std::vector<std::string> names = config.get_strings("pick");
  const PickSettings settings{config.get_real("temperature"), config.get_int("top_k"), config.get_real("top_p"), config.get_real("repetition_penalty")};
  auto fail = [&](const std::string& key, const std::string& what) {
    return std::runtime_error(fmt::format("[{}] {} ({}): {}", config.id(), key, config.where(key), what));
  };
  if (settings.temperature < 0) throw fail("temperature", fmt::format("{} must be >= 0", settings.temperature));
  if (settings.top_k < 0) throw fail("top_k", fmt::format("{} must be >= 0 (0: all tokens)", settings.top_k));
  if (settings.top_p <= 0 || settings.top_p > 1) throw fail("top_p", fmt::format("{} must be in (0, 1]", settings.top_p));
  if (settings.repetition_penalty <= 0) throw fail("repetition_penalty", fmt::format("{} must be > 0", settings.repetition_penalty));
  for (const char* key : {"temperature", "top_k", "top_p", "repetition_penalty"})
    if (config.where(key) != "default" && std::find(names.begin(), names.end(), key) == names.end())
      throw fail(key, fmt::format("is set, but pick = [\"{}\"] has no {} picker to use it", fmt::join(names, "\", \""), key));
  try {
    return PickChain(names, settings, seed);
  } catch (const std::invalid_argument& e) {
    throw fail("pick", e.what());
  }
}

}  // namespace moelab
