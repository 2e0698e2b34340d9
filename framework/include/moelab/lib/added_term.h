// A loss term as an objective: coef * term(batch), added to another objective's loss or alone; a
// router penalty is one function and MOELAB_TERM_PLUGIN (z_loss, load_balancing).
#pragma once

#include "moelab/context.h"
#include "moelab/objective.h"
#include "moelab/options.h"

#include <torch/types.h>

#include <functional>
#include <memory>
#include <string>

namespace moelab {

// The mean over the real tokens (attention mask) of every MoE layer in batch.routers of per_token(logits),
// which maps router logits [N, E] to [N]: how a per-token router penalty reduces.
torch::Tensor mean_over_real_tokens(const ObjectiveBatch& batch, const std::function<torch::Tensor(const torch::Tensor& logits)>& per_token);

// An objective made of one term: coef * term(batch), added to another objective's loss (key add_to) or
// used alone; the way a router penalty joins a task loss. The term is logged unweighted under its
// plugin's name. MOELAB_TERM_PLUGIN makes one from a function.
struct AddedTermSettings {
  double coef = 1;
  std::string add_to;  // the objective's table; empty: the term alone
};
// A term plugin's options: its identity, coef and add_to.
Options<AddedTermSettings> term_options(const std::string& name, const std::string& version, const std::string& description,
                                        double default_coef);

class AddedTerm : public Objective {
 public:
  using TermFunction = torch::Tensor (*)(const ObjectiveBatch& batch);
  AddedTerm(const AddedTermSettings& settings, RunContext& context, std::string name, const ObjectiveNeeds& own, TermFunction term);
  LossTerms compute(const ObjectiveBatch& batch) final;

 private:
  std::string name_;
  double coef_;
  TermFunction term_;
  std::shared_ptr<Objective> add_to_;
};

}  // namespace moelab

// Registers a term plugin (AddedTerm) from `term_fn`, a torch::Tensor(const moelab::ObjectiveBatch&)
// that reads only `needs`:
//   MOELAB_TERM_PLUGIN(router_l2, moelab::need::router_logits, "router_l2", "1.0.0", "mean squared router logit", 1e-3)
#define MOELAB_TERM_PLUGIN(term_fn, needs, name, version, description, default_coef)                                            \
  namespace moelab_term_plugin {                                                                                                \
  const ::moelab::Options<::moelab::AddedTermSettings>& options() {                                                             \
    static const auto o = ::moelab::term_options(name, version, description, default_coef);                                      \
    return o;                                                                                                                   \
  }                                                                                                                             \
  constexpr ::moelab::ObjectiveNeeds kNeeds = needs;                                                                            \
  struct Term final : ::moelab::AddedTerm {                                                                                     \
    Term(const ::moelab::Config& config, ::moelab::RunContext& context) : AddedTerm(options().read(config), context, name, kNeeds, term_fn) {} \
  };                                                                                                                            \
  }                                                                                                                             \
  MOELAB_OBJECTIVE_PLUGIN(moelab_term_plugin::options, moelab_term_plugin::kNeeds, moelab_term_plugin::Term)
