// Multiple-choice items as token ids and left-padded batches, shared by the stages that collect
// routing, finetune and evaluate. The answer is read at each row's last prompt token, found through
// the attention mask, so no pad position is ever read.
#pragma once

#include "moelab/config.h"
#include "moelab/dataset.h"
#include "moelab/model.h"
#include "moelab/objective.h"
#include "moelab/options.h"
#include "moelab/plugin.h"
#include "moelab/lib/prompt.h"
#include "moelab/tokenizer.h"

#include <torch/types.h>

#include <string>
#include <vector>

namespace moelab {

struct McItem {
  std::string key;                      // Example::id
  std::string prompt;                   // the text the ids encode
  std::vector<std::int64_t> prompt_ids;
  std::vector<std::int64_t> letter_ids;  // token of " A", " B", ... one per choice
  std::vector<std::string> letters;
  std::int64_t answer = -1;
};

struct McBatch {
  torch::Tensor input_ids;       // [B, T] int64, left-padded
  torch::Tensor attention_mask;  // [B, T] int64
  torch::Tensor letter_ids;      // [B, C] int64, -1 where a row has fewer choices
  torch::Tensor labels;          // [B] int64
  std::vector<std::string> keys;
};

// The prompt is record["prompt"] when the dataset already holds one, else `format` applied to the
// example; it keeps its last `max_len` tokens. Letters must each be one token (" A" or "A"), and the
// example needs a gold answer.
McItem prepare_item(const Example& example, const Tokenizer& tokenizer, const PromptFormat& format, std::size_t max_len);
enum class Padding { left, right };
McBatch make_batch(const std::vector<const McItem*>& items, std::int64_t pad_id, Padding padding = Padding::left);

// One forward of `model` over `batch`, packaged with what an objective `needs` (forward_for_objective),
// choices included: the answer options, gold labels and sample keys of the rows.
ObjectiveBatch objective_batch(Model& model, const McBatch& batch, const ObjectiveNeeds& needs);

// [B] index of each row's last real token (left or right padding).
torch::Tensor last_positions(const torch::Tensor& attention_mask);
// Rows of x [B, T, ...] at positions [B] -> [B, ...].
torch::Tensor at_positions(const torch::Tensor& x, const torch::Tensor& positions);

// The prompt keys (question_template, choice_template, chat_template, system) and max_len, for
// Options::include: .include(&Settings::prompt, moelab::prompt_options()).
struct PromptOptions : PromptFormat {
  std::size_t max_len = 1024;  // prompt tokens kept (the last ones)
};
const Options<PromptOptions>& prompt_options();

}  // namespace moelab
