#include "moelab/lib/vocab_check.h"

#include <fmt/format.h>

#include <algorithm>
#include <stdexcept>

namespace moelab {

std::int64_t largest_token_id(const Tokenizer& tokenizer) {
  std::int64_t largest = static_cast<std::int64_t>(tokenizer.vocab_size()) - 1;  // the id -> token table's last index
  for (std::int64_t id : tokenizer.encode("", /*add_special_tokens=*/true)) largest = std::max(largest, id);
  return largest;
}

void check_tokenizer_fits_model(const Tokenizer& tokenizer, const std::filesystem::path& tokenizer_file, const ModelInfo& model,
                                const std::filesystem::path& model_folder) {
  const std::int64_t largest = largest_token_id(tokenizer);
  if (largest < model.vocab_size) return;
  throw std::runtime_error(fmt::format(
      "{}: token id {} (\"{}\") is outside the model's vocabulary: {} has vocab_size = {} (embedding rows 0-{}); this tokenizer "
      "does not belong to this model",
      tokenizer_file.string(), largest, tokenizer.decode({largest}), (model_folder / "config.json").string(), model.vocab_size,
      model.vocab_size - 1));
}

}  // namespace moelab
