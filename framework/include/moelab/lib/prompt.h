// Prompt formatting from config: a multiple-choice template (question, lettered choices, answer cue)
// and an optional chat wrapper, so Instruct models are prompted the way they were tuned.
#pragma once

#include "moelab/dataset.h"

#include <string>

namespace moelab {

struct PromptFormat {
  // {question} and {choices} are replaced; {choices} is one choice_template line per option.
  std::string question_template = "Question: {question}\n{choices}Answer:";
  std::string choice_template = "{letter}. {text}\n";  // {letter}, {text}
  // Chat wrapper, used when chat_template is not empty: {system} and {prompt} are replaced.
  std::string chat_template;
  std::string system;
};

// The prompt text for one example. Throws naming the template when a placeholder is unknown.
std::string format_prompt(const Example& example, const PromptFormat& format);

}  // namespace moelab
