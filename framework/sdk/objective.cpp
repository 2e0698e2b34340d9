#include "moelab/objective.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <stdexcept>

namespace moelab {

namespace {
struct NeedName {
  bool ObjectiveNeeds::*flag;
  const char* name;
  const char* what;
};
constexpr NeedName kNeedNames[] = {
    {&ObjectiveNeeds::choices, "choices", "last-token logits, answer options and labels of multiple-choice data"},
    {&ObjectiveNeeds::token_logits, "token_logits", "logits at every position with next-token targets"},
    {&ObjectiveNeeds::token_loss, "token_loss", "the per-token language-model loss"},
    {&ObjectiveNeeds::router_logits, "router_logits", "every MoE layer's router logits and selected experts at every position"},
    {&ObjectiveNeeds::hidden_states, "hidden_states", "the final hidden states"},
};
}  // namespace

void require_needs(const ObjectiveNeeds& needs, const ObjectiveNeeds& stage_gives, const std::string& objective,
                   const std::string& stage) {
  std::vector<std::string> missing, gives;
  for (const auto& need : kNeedNames) {
    if (needs.*need.flag && !(stage_gives.*need.flag)) missing.push_back(fmt::format("{} ({})", need.name, need.what));
    if (stage_gives.*need.flag) gives.push_back(need.name);
  }
  if (!missing.empty())
    throw std::runtime_error(fmt::format("objective {} needs {}, which stage {} cannot give (it gives: {})", objective,
                                         fmt::join(missing, " and "), stage, gives.empty() ? "nothing" : fmt::format("{}", fmt::join(gives, ", "))));
}

std::shared_ptr<Objective> Objective::use(RunContext& context, const std::string& id) {
  std::shared_ptr<Objective> other = context.make<Objective>(id);
  needs_ = needs_ | other->needs();
  return other;
}

}  // namespace moelab
