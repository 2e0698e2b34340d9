#include "moelab/lib/calibration.h"

#include "moelab/lib/log.h"
#include "moelab/lib/seeded.h"

#include <fmt/format.h>
#include <torch/torch.h>


namespace moelab {

torch::Tensor token_stream(const Dataset& dataset, const Tokenizer& tokenizer, bool add_special_tokens) {
  std::string text;
  for (std::size_t i = 0; i < dataset.size(); ++i) text += (i ? "\n\n" : "") + dataset.at(i).text;
  std::vector<std::int64_t> ids = tokenizer.encode(text, add_special_tokens);
  log::info("token stream: {} documents, {} tokens; add_special_tokens: {}", dataset.size(), ids.size(),
            add_special_tokens ? tokenizer.special_tokens_added() + ", by tokenizer.json's post_processor" : "off");
  return torch::tensor(ids, torch::kInt64);
}

torch::Tensor random_windows(const torch::Tensor& stream, long long count, long long length, std::uint64_t seed, const std::string& what) {
  const long long n = stream.numel();
  if (count < 1 || length < 2) throw std::runtime_error(fmt::format("{}: need at least 1 window of at least 2 tokens", what));
  if (n < length + 1)
    throw std::runtime_error(fmt::format("{}: the text has {} tokens, fewer than one window of {} (+1); use more text or a shorter seqlen", what, n, length));
  SeededRng rng(seed);
  std::vector<torch::Tensor> rows;
  for (long long i = 0; i < count; ++i) rows.push_back(stream.narrow(0, static_cast<long long>(rng.below(static_cast<std::uint64_t>(n - length))), length));
  return torch::stack(rows);
}

}  // namespace moelab
