#include "moelab/lib/loglik.h"

#include "moelab/lib/log.h"
#include "moelab/lib/python_str.h"

#include <fmt/format.h>
#include <torch/torch.h>

#include <algorithm>
#include <map>
#include <numeric>
#include <stdexcept>

namespace moelab {

LoglikRequest encode_pair(const Tokenizer& tokenizer, std::string_view context, std::string_view continuation, bool add_bos_token) {
  if (context.empty())
    throw std::invalid_argument(fmt::format("loglik request with an empty context (continuation \"{}\"): nothing to score it after", continuation));
  const std::string_view kept = py::rstrip(context);
  const std::string moved = std::string(context.substr(kept.size())) + std::string(continuation);
  LoglikRequest request;
  std::vector<std::int64_t> whole = tokenizer.encode(std::string(kept) + moved, add_bos_token);
  request.context = tokenizer.encode(kept, add_bos_token);
  if (request.context.empty())
    throw std::invalid_argument(fmt::format("loglik request: context \"{}\" is only whitespace: nothing to score the continuation after", context));
  const std::size_t split = std::min(request.context.size(), whole.size());
  request.continuation.assign(whole.begin() + static_cast<std::ptrdiff_t>(split), whole.end());
  if (request.continuation.empty())
    throw std::invalid_argument(fmt::format("loglik request: continuation \"{}\" after context \"{}\" encodes to no token", continuation, context));
  return request;
}

namespace {

// The context tokens lm-eval keeps: (context + continuation)[:-1] loses its first tokens beyond max_length,
// and those come from the context (the continuation has at most max_length tokens).
std::vector<std::int64_t> kept_context(const LoglikRequest& r, std::size_t max_length) {
  const std::size_t length = r.context.size() + r.continuation.size() - 1;
  const std::size_t drop = length > max_length ? length - max_length : 0;
  return {r.context.begin() + static_cast<std::ptrdiff_t>(drop), r.context.end()};
}

// Token rows as ids [rows, width] and mask [rows, width] (int64, 1 for a token), aligned left or right.
struct Padded {
  torch::Tensor ids, mask;
};

Padded pad_rows(const std::vector<std::vector<std::int64_t>>& rows, std::int64_t pad, bool left_padding) {
  std::size_t width = 0;
  for (const auto& row : rows) width = std::max(width, row.size());
  std::vector<std::int64_t> ids(rows.size() * width, pad), mask(rows.size() * width, 0);
  for (std::size_t r = 0; r < rows.size(); ++r) {
    const std::size_t offset = r * width + (left_padding ? width - rows[r].size() : 0);
    std::copy(rows[r].begin(), rows[r].end(), ids.begin() + static_cast<std::ptrdiff_t>(offset));
    std::fill_n(mask.begin() + static_cast<std::ptrdiff_t>(offset), rows[r].size(), 1);
  }
  const std::vector<std::int64_t> shape = {static_cast<std::int64_t>(rows.size()), static_cast<std::int64_t>(width)};
  return {torch::tensor(ids, torch::kInt64).view(shape), torch::tensor(mask, torch::kInt64).view(shape)};
}

// Each row's summed log-probability of targets [B, T] under logits [B, T, V] where scored [B, T] is
// set, and whether every scored target is the argmax; row r's result goes to request row_request[r].
// One device-to-host copy per call.
void collect(const torch::Tensor& logits, const torch::Tensor& targets, const torch::Tensor& scored, const std::vector<std::size_t>& row_request,
             std::vector<LoglikResult>& results) {
  const torch::Tensor logp = logits.log_softmax(-1);
  const torch::Tensor t = targets.to(logp.device()), s = scored.to(logp.device(), torch::kBool);
  // Summed in float64, so the padding's width (zeros added in another order) cannot move the last bit.
  const torch::Tensor loglik = logp.gather(2, t.unsqueeze(2)).squeeze(2).masked_fill(s.logical_not(), 0).to(torch::kFloat64).sum(1);
  const torch::Tensor greedy = (logp.argmax(-1).eq(t) | s.logical_not()).all(1);
  const torch::Tensor host = torch::stack({loglik, greedy.to(torch::kFloat64)}).cpu();
  const auto values = host.accessor<double, 2>();
  for (std::size_t r = 0; r < row_request.size(); ++r)
    results[row_request[r]] = {values[0][static_cast<std::int64_t>(r)], values[1][static_cast<std::int64_t>(r)] != 0};
}

// Targets [rows, width] and scored [rows, width] from each row's continuation placed at `at[r]`.
std::pair<torch::Tensor, torch::Tensor> targets_of(const std::vector<const std::vector<std::int64_t>*>& continuations,
                                                   const std::vector<std::size_t>& at, std::size_t width) {
  std::vector<std::int64_t> targets(continuations.size() * width, 0), scored(continuations.size() * width, 0);
  for (std::size_t r = 0; r < continuations.size(); ++r) {
    const auto offset = static_cast<std::ptrdiff_t>(r * width + at[r]);
    std::copy(continuations[r]->begin(), continuations[r]->end(), targets.begin() + offset);
    std::fill_n(scored.begin() + offset, continuations[r]->size(), 1);
  }
  const std::vector<std::int64_t> shape = {static_cast<std::int64_t>(continuations.size()), static_cast<std::int64_t>(width)};
  return {torch::tensor(targets, torch::kInt64).view(shape), torch::tensor(scored, torch::kInt64).view(shape)};
}

// One right-padded row (context + continuation)[:-1] per request, longest first.
void score_separately(Model& model, const std::vector<LoglikRequest>& requests, std::size_t batch_size, std::size_t max_length,
                      std::vector<LoglikResult>& results, Progress& progress) {
  std::vector<std::vector<std::int64_t>> inputs(requests.size());
  for (std::size_t i = 0; i < requests.size(); ++i) {
    inputs[i] = kept_context(requests[i], max_length);
    inputs[i].insert(inputs[i].end(), requests[i].continuation.begin(), requests[i].continuation.end() - 1);
  }
  std::vector<std::size_t> order(requests.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return inputs[a].size() > inputs[b].size(); });
  const std::int64_t pad = std::max<std::int64_t>(model.info().pad_token_id, 0);
  for (std::size_t start = 0; start < order.size(); start += batch_size) {
    const std::vector<std::size_t> rows(order.begin() + static_cast<std::ptrdiff_t>(start),
                                        order.begin() + static_cast<std::ptrdiff_t>(std::min(order.size(), start + batch_size)));
    std::vector<std::vector<std::int64_t>> batch;
    std::vector<const std::vector<std::int64_t>*> continuations;
    std::vector<std::size_t> at;  // the continuation's tokens are predicted at the input's last n positions
    for (std::size_t index : rows) {
      batch.push_back(std::move(inputs[index]));
      continuations.push_back(&requests[index].continuation);
      at.push_back(batch.back().size() - requests[index].continuation.size());
    }
    const Padded input = pad_rows(batch, pad, /*left_padding=*/false);
    const auto [targets, scored] = targets_of(continuations, at, static_cast<std::size_t>(input.ids.size(1)));
    collect(model.forward(input.ids.to(model.device()), input.mask.to(model.device())), targets, scored, rows, results);
    progress.advance_steps(static_cast<long long>(rows.size()), static_cast<long long>(rows.size()));
  }
}

// Requests with the same kept context: the context runs once, each continuation reads it from the cache.
struct PrefixGroup {
  std::vector<std::int64_t> context;  // kept context ids
  std::vector<std::size_t> requests;
};

// Groups of R rows, batch_size / R groups per forward: the contexts but their last token go left-padded
// into a KV cache; then R rows per group (KVCache::replicas) of the context's last token and the
// continuation[:-1], right-padded, whose logits are the continuation's predictions.
void score_shared(Model& model, const std::vector<LoglikRequest>& requests, std::size_t batch_size, std::size_t max_length,
                  std::vector<LoglikResult>& results, Progress& progress) {
  std::vector<PrefixGroup> groups;
  std::map<std::vector<std::int64_t>, std::size_t> open;  // kept context -> its group still taking rows
  for (std::size_t i = 0; i < requests.size(); ++i) {
    std::vector<std::int64_t> context = kept_context(requests[i], max_length);
    auto it = open.find(context);
    if (it == open.end() || groups[it->second].requests.size() == batch_size) {
      groups.push_back({context, {}});
      it = open.insert_or_assign(std::move(context), groups.size() - 1).first;
    }
    groups[it->second].requests.push_back(i);
  }
  std::map<std::size_t, std::vector<std::size_t>> by_size;  // rows per group -> groups
  for (std::size_t g = 0; g < groups.size(); ++g) by_size[groups[g].requests.size()].push_back(g);
  const std::int64_t pad = std::max<std::int64_t>(model.info().pad_token_id, 0);
  for (auto& [replicas, members] : by_size) {
    std::stable_sort(members.begin(), members.end(), [&](std::size_t a, std::size_t b) { return groups[a].context.size() > groups[b].context.size(); });
    const std::size_t per_forward = std::max<std::size_t>(1, batch_size / replicas);
    for (std::size_t start = 0; start < members.size(); start += per_forward) {
      std::vector<std::vector<std::int64_t>> prefixes, rows;
      std::vector<const std::vector<std::int64_t>*> continuations;
      std::vector<std::size_t> row_request;
      bool any_prefix = false;
      for (std::size_t m = start; m < std::min(members.size(), start + per_forward); ++m) {
        const PrefixGroup& group = groups[members[m]];
        prefixes.emplace_back(group.context.begin(), group.context.end() - 1);
        any_prefix = any_prefix || !prefixes.back().empty();
        for (std::size_t index : group.requests) {
          const std::vector<std::int64_t>& continuation = requests[index].continuation;
          rows.emplace_back(1, group.context.back());
          rows.back().insert(rows.back().end(), continuation.begin(), continuation.end() - 1);
          continuations.push_back(&continuation);
          row_request.push_back(index);
        }
      }
      KVCache cache;
      if (any_prefix) {
        const Padded prefix = pad_rows(prefixes, pad, /*left_padding=*/true);
        model.forward(prefix.ids.to(model.device()), prefix.mask.to(model.device()), &cache, /*last_only=*/true);
        cache.replicas = static_cast<long long>(replicas);
      }
      const Padded input = pad_rows(rows, pad, /*left_padding=*/false);
      const auto [targets, scored] = targets_of(continuations, std::vector<std::size_t>(rows.size(), 0), static_cast<std::size_t>(input.ids.size(1)));
      torch::Tensor logits = model.forward(input.ids.to(model.device()), input.mask.to(model.device()), any_prefix ? &cache : nullptr);
      collect(logits, targets, scored, row_request, results);
      progress.advance_steps(static_cast<long long>(row_request.size()), static_cast<long long>(row_request.size()));
    }
  }
}

}  // namespace

std::vector<LoglikResult> score_requests(Model& model, const std::vector<LoglikRequest>& requests, std::size_t batch_size,
                                         std::size_t max_length, bool shared_prefix) {
  if (batch_size == 0 || max_length == 0) throw std::invalid_argument("score_requests: batch_size and max_length must be positive");
  for (std::size_t i = 0; i < requests.size(); ++i) {
    const LoglikRequest& r = requests[i];
    if (r.context.empty()) throw std::invalid_argument(fmt::format("loglik request {}: its context has no token to score the continuation after", i));
    if (r.continuation.empty() || r.continuation.size() > max_length)
      throw std::invalid_argument(fmt::format("loglik request {}: its continuation has {} tokens; 1 to max_length ({}) can be scored", i,
                                              r.continuation.size(), max_length));
  }
  torch::NoGradGuard no_grad;
  std::vector<LoglikResult> results(requests.size());
  Progress progress("loglik scoring", static_cast<long long>(requests.size()), "requests");
  if (shared_prefix) score_shared(model, requests, batch_size, max_length, results, progress);
  else score_separately(model, requests, batch_size, max_length, results, progress);
  return results;
}

std::size_t acc_prediction(const std::vector<double>& logliks) {
  if (logliks.empty()) throw std::invalid_argument("acc_prediction: no choices");
  return static_cast<std::size_t>(std::max_element(logliks.begin(), logliks.end()) - logliks.begin());
}

std::size_t acc_norm_prediction(const std::vector<double>& logliks, const std::vector<std::string>& choice_texts) {
  if (logliks.size() != choice_texts.size())
    throw std::invalid_argument(fmt::format("acc_norm_prediction: {} logliks for {} choices", logliks.size(), choice_texts.size()));
  std::vector<double> per_character;
  for (std::size_t i = 0; i < logliks.size(); ++i) per_character.push_back(logliks[i] / static_cast<double>(py::len(choice_texts[i])));
  return acc_prediction(per_character);
}

}  // namespace moelab
