#include "moelab/lib/objective_batch.h"

#include "moelab/lib/multiple_choice.h"

namespace moelab {

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

}  // namespace moelab
