// A training objective: turns one batch's model outputs into the loss that is backpropagated. It
// declares what it reads (ObjectiveNeeds); the training stage fills only that, and an objective whose
// needs its stage cannot give fails before anything runs (runexp --dry-run included).
#pragma once

#include "moelab/context.h"
#include "moelab/model.h"
#include "moelab/options.h"
#include "moelab/plugin.h"

#include <torch/types.h>

#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace moelab {

// What an objective reads; each flag names the ObjectiveBatch fields it makes the stage fill.
struct ObjectiveNeeds {
  bool choices = false;        // last_logits, choice_ids, labels, sample_keys (multiple-choice data)
  bool token_logits = false;   // logits, target_ids
  bool token_loss = false;     // token_loss, target_ids
  bool router_logits = false;  // routers
  bool hidden_states = false;  // hidden_states
};
constexpr ObjectiveNeeds operator|(const ObjectiveNeeds& a, const ObjectiveNeeds& b) {
  return {a.choices || b.choices, a.token_logits || b.token_logits, a.token_loss || b.token_loss, a.router_logits || b.router_logits,
          a.hidden_states || b.hidden_states};
}

// One need each, combined with |: need::choices | need::router_logits.
namespace need {
constexpr ObjectiveNeeds choices{true, false, false, false, false};
constexpr ObjectiveNeeds token_logits{false, true, false, false, false};
constexpr ObjectiveNeeds token_loss{false, false, true, false, false};
constexpr ObjectiveNeeds router_logits{false, false, false, true, false};
constexpr ObjectiveNeeds hidden_states{false, false, false, false, true};
}  // namespace need

// Throws, naming the objective, what it needs that the stage cannot give, and the stage, unless
// `stage_gives` holds all of `needs`.
void require_needs(const ObjectiveNeeds& needs, const ObjectiveNeeds& stage_gives, const std::string& objective,
                   const std::string& stage);

// One training batch. attention_mask, trained_layers, top_k and step are always set; every other field
// only when the objective's needs ask for it (undefined or empty otherwise).
struct ObjectiveBatch {
  torch::Tensor attention_mask;          // [B, T] 1 token, 0 padding
  std::vector<int> trained_layers;       // the MoE layers whose routers train, in order
  long long top_k = 0;                   // experts per token of the model
  long long step = 0;                    // optimizer step, from 0

  torch::Tensor last_logits;             // choices: [B, V] logits at each row's last real token
  torch::Tensor choice_ids;              // choices: [B, C] token ids of the answer options, -1 where a row has fewer
  torch::Tensor labels;                  // choices: [B] index of the gold option
  std::vector<std::string> sample_keys;  // choices: Example::id of each row

  torch::Tensor logits;                  // token_logits: [B, T, V] logits at every position
  torch::Tensor target_ids;              // token_logits, token_loss: [B, T] next-token targets, -100 where none
  torch::Tensor token_loss;              // token_loss: [B, T] next-token cross-entropy, 0 where the target is -100
  // router_logits: every MoE layer in order; logits [N, E] over the N = B*T positions (row-major, padding
  // included: see attention_mask), live, so the gradient reaches the trained routers; topk_ids [N, k].
  std::vector<RouterTrace> routers;
  torch::Tensor hidden_states;           // hidden_states: [B, T, H] after the final norm
};

// One forward of `model` over input_ids [B, T] (attention_mask [B, T], or undefined for no padding)
// packaged with what `needs` asks for; choices leaves only last_logits filled, the rest is the caller's.
ObjectiveBatch forward_for_objective(Model& model, const torch::Tensor& input_ids, const torch::Tensor& attention_mask,
                                     const ObjectiveNeeds& needs);

// [B, T] next-token targets: the next token where it and the current one are real, else -100.
torch::Tensor next_token_targets(const torch::Tensor& input_ids, const torch::Tensor& attention_mask);
// Cross-entropy of logits [B, T, V] against targets [B, T], per position: [B, T], 0 where the target is -100
// (computed in float32, or float64 for float64 logits).
torch::Tensor token_cross_entropy(const torch::Tensor& logits, const torch::Tensor& target_ids);

// The mean over the real tokens (attention mask) of every MoE layer in batch.routers of per_token(logits),
// which maps router logits [N, E] to [N]: how a per-token router penalty reduces.
torch::Tensor mean_over_real_tokens(const ObjectiveBatch& batch, const std::function<torch::Tensor(const torch::Tensor& logits)>& per_token);

struct LossTerms {
  torch::Tensor total;                                       // scalar to backpropagate
  std::vector<std::pair<std::string, torch::Tensor>> parts;  // named scalars for the log
};

class Objective : public Plugin {
 public:
  static constexpr Kind kKind = Kind::objective;
  ~Objective() override;
  virtual LossTerms compute(const ObjectiveBatch& batch) = 0;
  // What compute() reads: this objective's own needs and those of the objectives it uses.
  const ObjectiveNeeds& needs() const { return needs_; }

 protected:
  explicit Objective(const ObjectiveNeeds& own) : needs_(own) {}
  // Makes the experiment's objective `id` for this one to call; its needs become this one's too.
  std::shared_ptr<Objective> use(RunContext& context, const std::string& id);

 private:
  ObjectiveNeeds needs_;
};

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

// Registers an objective plugin: MOELAB_PLUGIN plus its own needs (`needs`, the constant ObjectiveNeeds
// that Class passes to its Objective constructor), exported so that runexp checks an experiment's
// objectives against its stages without building anything.
#define MOELAB_OBJECTIVE_PLUGIN(describe_fn, needs, Class) \
  MOELAB_PLUGIN(describe_fn, Class)                        \
  BOOST_DLL_ALIAS(needs, moelab_objective_needs)

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

// A stage that trains with an objective plugin exports what its batches can hold (`inputs`, a constant
// ObjectiveNeeds); the objectives its keys name are checked against it.
#define MOELAB_OBJECTIVE_INPUTS(inputs) BOOST_DLL_ALIAS(inputs, moelab_objective_inputs)
