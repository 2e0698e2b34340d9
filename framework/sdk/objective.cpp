#include "moelab/objective.h"

#include "moelab/lib/multiple_choice.h"

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

ObjectiveBatch forward_for_objective(Model& model, const torch::Tensor& input_ids, const torch::Tensor& attention_mask,
                                     const ObjectiveNeeds& needs) {
  const bool every_position = needs.token_logits || needs.token_loss;
  torch::Tensor logits = model.forward(input_ids, attention_mask, nullptr, /*last_only=*/!every_position);
  ObjectiveBatch batch;
  batch.attention_mask = attention_mask.defined() ? attention_mask : torch::ones_like(input_ids);
  if (needs.choices)
    batch.last_logits = every_position ? at_positions(logits, last_positions(batch.attention_mask)) : logits.select(1, 0);
  if (every_position) batch.target_ids = next_token_targets(input_ids, batch.attention_mask).to(logits.device());
  if (needs.token_logits) batch.logits = logits;
  if (needs.token_loss) batch.token_loss = token_cross_entropy(logits, batch.target_ids);
  if (needs.router_logits) batch.routers = model.routing();
  if (needs.hidden_states) batch.hidden_states = model.hidden_states();
  return batch;
}

torch::Tensor next_token_targets(const torch::Tensor& input_ids, const torch::Tensor& attention_mask) {
  const auto rows = input_ids.size(0);
  torch::Tensor next = input_ids.narrow(1, 1, input_ids.size(1) - 1);
  torch::Tensor scored = attention_mask.narrow(1, 0, input_ids.size(1) - 1).ne(0) & attention_mask.narrow(1, 1, input_ids.size(1) - 1).ne(0);
  torch::Tensor targets = torch::where(scored, next, torch::full_like(next, -100));
  return torch::cat({targets, torch::full({rows, 1}, -100, input_ids.options())}, 1);
}

torch::Tensor token_cross_entropy(const torch::Tensor& logits, const torch::Tensor& target_ids) {
  const int64_t vocab = logits.size(-1);
  torch::Tensor flat = logits.reshape({-1, vocab});
  if (flat.scalar_type() != torch::kFloat64) flat = flat.to(torch::kFloat32);
  torch::Tensor targets = target_ids.reshape(-1).to(flat.device());
  torch::Tensor valid = targets.ne(-100);
  torch::Tensor nll = -flat.log_softmax(-1).gather(1, targets.clamp_min(0).unsqueeze(1)).squeeze(1);
  return nll.masked_fill(valid.logical_not(), 0).view(target_ids.sizes());
}

torch::Tensor mean_over_real_tokens(const ObjectiveBatch& batch, const std::function<torch::Tensor(const torch::Tensor& logits)>& per_token) {
  std::vector<torch::Tensor> values;
  for (const auto& router : batch.routers) {
    torch::Tensor real = batch.attention_mask.reshape(-1).ne(0).to(router.logits.device());
    values.push_back(per_token(router.logits).masked_select(real));
  }
  return torch::cat(values).mean();
}

std::shared_ptr<Objective> Objective::use(RunContext& context, const std::string& id) {
  std::shared_ptr<Objective> other = context.make<Objective>(id);
  needs_ = needs_ | other->needs();
  return other;
}

Options<AddedTermSettings> term_options(const std::string& name, const std::string& version, const std::string& description,
                                        double default_coef) {
  return Options<AddedTermSettings>(name, Kind::objective, version, description)
      .real("coef", &AddedTermSettings::coef, default_coef, "weight of this term in the loss")
      .optional_component("add_to", &AddedTermSettings::add_to, Kind::objective,
                          "the objective whose loss this term is added to (empty: this term alone)");
}

AddedTerm::AddedTerm(const AddedTermSettings& settings, RunContext& context, std::string name, const ObjectiveNeeds& own, TermFunction term)
    : Objective(own), name_(std::move(name)), coef_(settings.coef), term_(term) {
  if (!settings.add_to.empty()) add_to_ = use(context, settings.add_to);
}

LossTerms AddedTerm::compute(const ObjectiveBatch& batch) {
  torch::Tensor value = term_(batch);
  LossTerms out = add_to_ ? add_to_->compute(batch) : LossTerms{};
  out.total = out.total.defined() ? out.total + coef_ * value : coef_ * value;
  out.parts.emplace_back(name_, value.detach());
  return out;
}

}  // namespace moelab
