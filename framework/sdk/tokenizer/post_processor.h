// tokenizer.json's post_processor as HF's `tokenizer(text)` applies it to one text: the ids its single
// template puts before and after the text (TemplateProcessing, BertProcessing, RobertaProcessing,
// ByteLevel, which adds none, and a Sequence of these). Pair templates are not read.
#pragma once

#include "moelab/lib/json_read.h"

#include <cstdint>
#include <string>
#include <vector>

namespace moelab {

struct SpecialTokens {
  std::vector<std::int64_t> prefix, suffix;
  std::string description;  // "<s> (id 1) prepended", "... prepended and ... appended", or "nothing added"
};

// `post_processor` may be null (nothing added). Types or templates it does not implement are errors
// naming its file and the component.
SpecialTokens read_post_processor(const JsonValue& post_processor);

}  // namespace moelab
