#include "moelab/lib/loglik.h"

#include "moelab/lib/python_str.h"

#include <fmt/format.h>
#include <torch/torch.h>

#include <algorithm>
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

std::vector<LoglikResult> score_requests(Model& model, const std::vector<LoglikRequest>& requests, std::size_t batch_size,
                                         std::size_t max_length) {
  if (batch_size == 0 || max_length == 0) throw std::invalid_argument("score_requests: batch_size and max_length must be positive");
  torch::NoGradGuard no_grad;
  // Model input per request: (context + continuation)[:-1], its last max_length tokens.
  std::vector<std::vector<std::int64_t>> inputs(requests.size());
  for (std::size_t i = 0; i < requests.size(); ++i) {
    const LoglikRequest& r = requests[i];
    if (r.continuation.empty() || r.continuation.size() > max_length)
      throw std::invalid_argument(fmt::format("loglik request {}: its continuation has {} tokens; 1 to max_length ({}) can be scored", i,
                                              r.continuation.size(), max_length));
    std::vector<std::int64_t>& ids = inputs[i];
    ids = r.context;
    ids.insert(ids.end(), r.continuation.begin(), r.continuation.end() - 1);
    if (ids.size() > max_length) ids.erase(ids.begin(), ids.end() - static_cast<std::ptrdiff_t>(max_length));
  }
  std::vector<std::size_t> order(requests.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return inputs[a].size() > inputs[b].size(); });

  const std::int64_t pad = std::max<std::int64_t>(model.info().pad_token_id, 0);
  std::vector<LoglikResult> results(requests.size());
  for (std::size_t start = 0; start < order.size(); start += batch_size) {
    const std::size_t rows = std::min(batch_size, order.size() - start);
    const auto width = static_cast<std::int64_t>(inputs[order[start]].size());
    torch::Tensor ids = torch::full({static_cast<std::int64_t>(rows), width}, pad, torch::kInt64);
    torch::Tensor mask = torch::zeros({static_cast<std::int64_t>(rows), width}, torch::kInt64);
    for (std::size_t r = 0; r < rows; ++r) {
      const auto& input = inputs[order[start + r]];
      const auto n = static_cast<std::int64_t>(input.size());
      ids[static_cast<std::int64_t>(r)].narrow(0, 0, n).copy_(torch::tensor(input, torch::kInt64));
      mask[static_cast<std::int64_t>(r)].narrow(0, 0, n).fill_(1);
    }
    torch::Tensor logits = model.forward(ids.to(model.device()), mask.to(model.device()));
    for (std::size_t r = 0; r < rows; ++r) {
      const std::size_t index = order[start + r];
      const auto& continuation = requests[index].continuation;
      const auto n = static_cast<std::int64_t>(continuation.size()), length = static_cast<std::int64_t>(inputs[index].size());
      // The continuation's tokens are predicted at the input's last n positions.
      torch::Tensor logp = logits[static_cast<std::int64_t>(r)].narrow(0, length - n, n).log_softmax(-1);
      torch::Tensor targets = torch::tensor(continuation, torch::kInt64).to(logp.device());
      results[index].loglik = logp.gather(1, targets.unsqueeze(1)).sum().item<double>();
      results[index].is_greedy = logp.argmax(-1).eq(targets).all().item<bool>();
    }
  }
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
