// A training objective: turns one batch's model outputs into the loss that is backpropagated. It
// declares what it reads (ObjectiveNeeds); the training stage fills only that, and an objective whose
// needs its stage cannot give fails before anything runs (runexp --dry-run included).
#pragma once

#include "moelab/context.h"
#include "moelab/model.h"
#include "moelab/plugin.h"

#include <torch/types.h>

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

}  // namespace moelab

// Registers an objective plugin: MOELAB_PLUGIN plus its own needs (`needs`, the constant ObjectiveNeeds
// that Class passes to its Objective constructor), exported so that runexp checks an experiment's
// objectives against its stages without building anything.
#define MOELAB_OBJECTIVE_PLUGIN(describe_fn, needs, Class) \
  MOELAB_PLUGIN(describe_fn, Class)                        \
  BOOST_DLL_ALIAS(needs, moelab_objective_needs)

// A stage that trains with an objective plugin exports what its batches can hold (`inputs`, a constant
// ObjectiveNeeds); the objectives its keys name are checked against it.
#define MOELAB_OBJECTIVE_INPUTS(inputs) BOOST_DLL_ALIAS(inputs, moelab_objective_inputs)
