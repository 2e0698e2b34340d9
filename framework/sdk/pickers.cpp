#include "moelab/lib/pickers.h"

#include <fmt/format.h>

#include <stdexcept>

namespace moelab {

torch::Tensor& PickState::probabilities() {
  if (!probs.defined()) probs = scores.softmax(-1).to(torch::kFloat64);
  return probs;
}

Picker::~Picker() = default;

namespace {

// Hugging Face's RepetitionPenaltyLogitsProcessor over the tokens each row has seen (-1: none).
class RepetitionPenalty final : public Picker {
 public:
  explicit RepetitionPenalty(double penalty) : penalty_(penalty) {}
  void apply(PickState& state) const override {
    if (!state.history.defined()) throw std::runtime_error("repetition_penalty needs each row's token history, and none was given");
    const torch::Tensor& s = state.scores;
    const std::int64_t vocab = s.size(-1);
    torch::Tensor shifted = state.history.to(s.device(), torch::kInt64) + 1;  // column 0 collects the -1s
    torch::Tensor seen = torch::zeros({s.size(0), vocab + 1}, s.options().dtype(torch::kBool)).scatter_(1, shifted, true).narrow(1, 1, vocab);
    state.scores = torch::where(seen, torch::where(s < 0, s * penalty_, s / penalty_), s);
  }

 private:
  double penalty_;
};

class Temperature final : public Picker {
 public:
  explicit Temperature(double temperature) : temperature_(temperature) {}
  void apply(PickState& state) const override {
    torch::Tensor& p = state.probabilities();
    p = temperature_ == 0 ? torch::zeros_like(p).scatter_(-1, p.argmax(-1, true), 1.0) : p.pow(1.0 / temperature_);
    state.order = torch::Tensor();
  }

 private:
  double temperature_;
};

class TopK final : public Picker {
 public:
  explicit TopK(long long k) : k_(k) {}
  void apply(PickState& state) const override {
    torch::Tensor& p = state.probabilities();
    if (k_ == 0 || k_ >= p.size(-1)) return;
    torch::Tensor kth = std::get<0>(p.topk(k_, -1)).narrow(-1, k_ - 1, 1);
    p = p.masked_fill(p < kth, 0.0);  // zeroes a tail, so a descending order stays descending
  }

 private:
  long long k_;
};

// The smallest set of most likely tokens holding top_p of the mass: a token stays while the more likely ones
// hold less than top_p, so the most likely token always stays.
class TopP final : public Picker {
 public:
  explicit TopP(double top_p) : top_p_(top_p) {}
  void apply(PickState& state) const override {
    torch::Tensor& p = state.probabilities();
    p = p / p.sum(-1, true);
    auto [sorted, order] = p.sort(-1, /*descending=*/true);
    torch::Tensor before = sorted.cumsum(-1) - sorted;
    p = torch::zeros_like(p).scatter_(-1, order, sorted.masked_fill(before >= top_p_, 0.0));
    state.order = order;
  }

 private:
  double top_p_;
};

// The most likely token (the lowest id on ties): of the probabilities when a picker made them, else of the scores.
class Greedy final : public Picker {
 public:
  void apply(PickState& state) const override { state.tokens = (state.probs.defined() ? state.probs : state.scores).argmax(-1); }
};

// Inverse-CDF draw over the tokens by descending probability (the order a picker left, else sorted here).
class Draw final : public Picker {
 public:
  void apply(PickState& state) const override {
    torch::Tensor& p = state.probabilities();
    torch::Tensor order = state.order, sorted;
    if (order.defined()) sorted = p.gather(-1, order);
    else std::tie(sorted, order) = p.sort(-1, /*descending=*/true);
    torch::Tensor cdf = sorted.cumsum(-1);
    torch::Tensor target = state.uniform.to(cdf.device(), torch::kFloat64).unsqueeze(-1) * cdf.narrow(-1, cdf.size(-1) - 1, 1);
    torch::Tensor index = torch::searchsorted(cdf, target).clamp_max(cdf.size(-1) - 1);
    state.tokens = order.gather(-1, index).squeeze(-1);
  }
};

}  // namespace

std::unique_ptr<Picker> make_picker(const std::string& name, const PickSettings& settings) {
  if (name == "repetition_penalty") return std::make_unique<RepetitionPenalty>(settings.repetition_penalty);
  if (name == "temperature") return std::make_unique<Temperature>(settings.temperature);
  if (name == "top_k") return std::make_unique<TopK>(settings.top_k);
  if (name == "top_p") return std::make_unique<TopP>(settings.top_p);
  if (name == "greedy") return std::make_unique<Greedy>();
  if (name == "draw") return std::make_unique<Draw>();
  throw std::invalid_argument(fmt::format("\"{}\" is not a picker (repetition_penalty, temperature, top_k, top_p, greedy, draw)", name));
}

}  // namespace moelab
