#include "moelab/lib/multiple_choice.h"

#include "moelab/lib/objective_batch.h"

#include <fmt/format.h>

#include <stdexcept>

namespace moelab {

McItem prepare_item(const Example& example, const Tokenizer& tokenizer, const PromptFormat& format, std::size_t max_len) {
  McItem item;
  item.key = example.id;
  item.letters = example.letters;
  item.answer = example.answer;
  if (item.letters.empty()) throw std::runtime_error(fmt::format("{}: item '{}' has no answer choices", example.origin, example.id));
  if (item.answer < 0 || item.answer >= static_cast<std::int64_t>(item.letters.size()))
    throw std::runtime_error(fmt::format("{}: item '{}' has no gold answer among its {} choices", example.origin, example.id, item.letters.size()));
  bool ready = example.record.is_object() && example.record.contains("prompt") && example.record["prompt"].is_string();
  item.prompt = ready ? example.record["prompt"].get<std::string>() : format_prompt(example, format);
  item.prompt_ids = tokenizer.encode(item.prompt);
  if (item.prompt_ids.size() > max_len)
    item.prompt_ids.erase(item.prompt_ids.begin(), item.prompt_ids.end() - static_cast<std::ptrdiff_t>(max_len));
  for (const auto& letter : item.letters) {
    std::vector<std::int64_t> ids = tokenizer.encode(" " + letter);
    if (ids.size() != 1) ids = tokenizer.encode(letter);
    if (ids.size() != 1)
      throw std::runtime_error(fmt::format("{}: answer letter \"{}\" is not a single token for this tokenizer", example.origin, letter));
    item.letter_ids.push_back(ids[0]);
  }
  return item;
}

McBatch make_batch(const std::vector<const McItem*>& items, std::int64_t pad_id, Padding padding) {
  std::size_t width = 0, choices = 0;
  for (const auto* item : items) {
    width = std::max(width, item->prompt_ids.size());
    choices = std::max(choices, item->letter_ids.size());
  }
  const auto rows = static_cast<std::int64_t>(items.size());
  McBatch batch;
  batch.input_ids = torch::full({rows, static_cast<std::int64_t>(width)}, pad_id, torch::kInt64);
  batch.attention_mask = torch::zeros({rows, static_cast<std::int64_t>(width)}, torch::kInt64);
  batch.letter_ids = torch::full({rows, static_cast<std::int64_t>(choices)}, -1, torch::kInt64);
  batch.labels = torch::zeros({rows}, torch::kInt64);
  auto ids = batch.input_ids.accessor<std::int64_t, 2>();
  auto mask = batch.attention_mask.accessor<std::int64_t, 2>();
  auto letters = batch.letter_ids.accessor<std::int64_t, 2>();
  for (std::int64_t r = 0; r < rows; ++r) {
    const McItem& item = *items[r];
    std::size_t offset = padding == Padding::left ? width - item.prompt_ids.size() : 0;
    for (std::size_t t = 0; t < item.prompt_ids.size(); ++t) {
      ids[r][offset + t] = item.prompt_ids[t];
      mask[r][offset + t] = 1;
    }
    for (std::size_t c = 0; c < item.letter_ids.size(); ++c) letters[r][c] = item.letter_ids[c];
    batch.labels[r] = std::max<std::int64_t>(item.answer, 0);
    batch.keys.push_back(item.key);
  }
  return batch;
}

ObjectiveBatch objective_batch(Model& model, const McBatch& batch, const ObjectiveNeeds& needs) {
  ObjectiveBatch ob = forward_for_objective(model, batch.input_ids, batch.attention_mask, needs);
  if (!needs.choices) return ob;
  ob.choice_ids = batch.letter_ids.to(ob.last_logits.device());
  ob.labels = batch.labels.to(ob.last_logits.device());
  ob.sample_keys = batch.keys;
  return ob;
}

torch::Tensor last_positions(const torch::Tensor& attention_mask) {
  const auto width = attention_mask.size(1);
  torch::Tensor index = torch::arange(width, attention_mask.options().dtype(torch::kInt64)).unsqueeze(0);
  return torch::where(attention_mask.ne(0), index, torch::full_like(index, -1)).amax(1);
}

torch::Tensor at_positions(const torch::Tensor& x, const torch::Tensor& positions) {
  torch::Tensor rows = torch::arange(x.size(0), positions.options());
  return x.index({rows, positions.to(x.device())});
}

const Options<PromptOptions>& prompt_options() {
  static const auto options = [] {
    const PromptOptions defaults;
    return Options<PromptOptions>()
        .string("question_template", &PromptOptions::question_template, defaults.question_template, "prompt: {question} and {choices}")
        .string("choice_template", &PromptOptions::choice_template, defaults.choice_template, "one line per choice: {letter} and {text}")
        .string("chat_template", &PromptOptions::chat_template, "", "chat wrapper with {system} and {prompt}; empty: none")
        .string("system", &PromptOptions::system, "", "system message for chat_template")
        .integer("max_len", &PromptOptions::max_len, defaults.max_len, "prompt tokens kept (the last ones)")
        .at_least(1);
  }();
  return options;
}

}  // namespace moelab
