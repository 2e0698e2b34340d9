// NaN and Inf are errors, never results: a forward's routing and logits are checked with one
// device-to-host read per batch, and a failed check names the first MoE layer where they appear, its
// router tensor and every model weight that holds them.
#pragma once

#include "moelab/lib/router_checkpoint.h"
#include "moelab/model.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <torch/types.h>

#include <stdexcept>
#include <string>
#include <vector>

namespace moelab {

// Checkpoint names of the model weights that hold NaN or Inf (a pass over every weight: for messages).
inline std::vector<std::string> nonfinite_weights(Model& model) {
  std::vector<std::string> names;
  for (const auto& [name, weight] : model.named_weights())
    if (!torch::isfinite(weight).all().item<bool>()) names.push_back(name);
  return names;
}

// What nonfinite_weights finds, as a clause of an error message.
inline std::string describe_nonfinite_weights(Model& model) {
  std::vector<std::string> names = nonfinite_weights(model);
  if (names.empty()) return "no model weight holds NaN/Inf";
  return fmt::format("model weights holding NaN/Inf: {}", fmt::join(names, ", "));
}

// Throws std::runtime_error starting with `where` when the last forward's router logits at real
// tokens (`attention_mask` [B, T] of that forward, 0 = padding; undefined: every token) or `logits`
// (undefined: not checked) hold NaN or Inf.
inline void require_finite_forward(Model& model, const torch::Tensor& attention_mask, const torch::Tensor& logits, const std::string& where) {
  const std::vector<RouterTrace>& traces = model.routing();
  std::vector<torch::Tensor> per_token_ok;  // per MoE layer [N]: finite, or padding
  std::vector<torch::Tensor> ok;
  for (const RouterTrace& trace : traces) {
    torch::Tensor finite = torch::isfinite(trace.logits).all(-1);
    if (attention_mask.defined() && attention_mask.numel() == finite.numel())
      finite = finite | attention_mask.reshape({-1}).to(finite.device()).eq(0);
    per_token_ok.push_back(finite);
    ok.push_back(finite.all());
  }
  if (logits.defined()) ok.push_back(torch::isfinite(logits).all().to(ok.empty() ? logits.device() : ok.front().device()));
  if (ok.empty()) return;
  torch::Tensor flags = torch::stack(ok).cpu();
  if (flags.all().item<bool>()) return;
  for (std::size_t i = 0; i < traces.size(); ++i)
    if (!flags[static_cast<long long>(i)].item<bool>()) {
      const long long bad = per_token_ok[i].logical_not().sum().item<int64_t>();
      throw std::runtime_error(fmt::format("{}: the router logits of MoE layer {} ({}) are NaN/Inf at {} token(s); it is the first MoE "
                                           "layer whose routing is not finite; {}",
                                           where, traces[i].layer, router_tensor_name(model, traces[i].layer), bad,
                                           describe_nonfinite_weights(model)));
    }
  throw std::runtime_error(fmt::format("{}: the model's output logits are NaN/Inf while every MoE layer routes finitely; {}", where,
                                       describe_nonfinite_weights(model)));
}

}  // namespace moelab
