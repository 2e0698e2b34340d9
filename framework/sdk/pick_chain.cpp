#include "moelab/config.h"
#include "moelab/lib/pickers.h"
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

const Options<PickOptions>& pick_options() {
  const PickSettings neutral;
  static const auto o =
      Options<PickOptions>()
          .strings("pick", &PickOptions::pick, {"greedy"},
                   "pickers applied in order to the next-token distribution, the last one greedy or draw: repetition_penalty, "
                   "temperature, top_k, top_p, greedy, draw")
          .include(&PickOptions::settings,
                   Options<PickSettings>()
                       .real("temperature", &PickSettings::temperature, neutral.temperature,
                             "temperature picker: probabilities raised to 1/temperature (softmax(scores / T)); 0: only the most likely token")
                       .at_least(0)
                       .integer("top_k", &PickSettings::top_k, neutral.top_k,
                                "top_k picker: keep the k most likely tokens, ties with the k-th included; 0: all")
                       .at_least(0)
                       .real("top_p", &PickSettings::top_p, neutral.top_p,
                             "top_p picker: keep the most likely tokens while those before them hold less than top_p of the mass")
                       .positive()
                       .at_most(1)
                       .real("repetition_penalty", &PickSettings::repetition_penalty, neutral.repetition_penalty,
                             "repetition_penalty picker (Hugging Face's): the score of a token already in the row is divided by it "
                             "if positive, else multiplied")
                       .positive());
  return o;
}

PickChain pick_chain(const PickOptions& options, const Config& config, std::uint64_t seed) {
  auto fail = [&](const std::string& key, const std::string& what) {
    return std::runtime_error(fmt::format("[{}] {} ({}): {}", config.id(), key, config.where(key), what));
  };
  const std::vector<std::string>& names = options.pick;
  for (const char* key : {"temperature", "top_k", "top_p", "repetition_penalty"})
    if (config.where(key) != "default" && std::find(names.begin(), names.end(), key) == names.end())
      throw fail(key, fmt::format("is set, but pick = [\"{}\"] has no {} picker to use it", fmt::join(names, "\", \""), key));
  try {
    return PickChain(names, options.settings, seed);
  } catch (const std::invalid_argument& e) {
    throw fail("pick", e.what());
  }
}

}  // namespace moelab
