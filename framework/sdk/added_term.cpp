#include "moelab/lib/added_term.h"

#include <utility>
#include <vector>

namespace moelab {

torch::Tensor mean_over_real_tokens(const ObjectiveBatch& batch, const std::function<torch::Tensor(const torch::Tensor& logits)>& per_token) {
  std::vector<torch::Tensor> values;
  for (const auto& router : batch.routers) {
    torch::Tensor real = batch.attention_mask.reshape(-1).ne(0).to(router.logits.device());
    values.push_back(per_token(router.logits).masked_select(real));
  }
  return torch::cat(values).mean();
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
