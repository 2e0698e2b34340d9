#include "moelab/lib/prompt.h"

#include <fmt/format.h>

#include <map>
#include <stdexcept>

namespace moelab {

namespace {
// Replaces {name} placeholders; "{{" and "}}" stand for literal braces.
std::string fill(const std::string& text, const std::map<std::string, std::string>& values, const char* which) {
  std::string out;
  for (std::size_t i = 0; i < text.size(); ++i) {
    if (text.compare(i, 2, "{{") == 0 || text.compare(i, 2, "}}") == 0) {
      out += text[i++];
      continue;
    }
    if (text[i] != '{') {
      out += text[i];
      continue;
    }
    std::size_t close = text.find('}', i);
    if (close == std::string::npos) throw std::runtime_error(fmt::format("{}: unclosed '{{' in \"{}\"", which, text));
    std::string name = text.substr(i + 1, close - i - 1);
    auto it = values.find(name);
    if (it == values.end()) {
      std::string known;
      for (const auto& [k, v] : values) known += (known.empty() ? "{" : ", {") + k + "}";
      throw std::runtime_error(fmt::format("{}: unknown placeholder {{{}}} in \"{}\"; known: {}", which, name, text, known));
    }
    out += it->second;
    i = close;
  }
  return out;
}
}  // namespace

std::string format_prompt(const Example& example, const PromptFormat& format) {
  std::string choices;
  for (std::size_t i = 0; i < example.choices.size(); ++i)
    choices += fill(format.choice_template, {{"letter", example.letters.at(i)}, {"text", example.choices[i]}}, "choice_template");
  std::string prompt = fill(format.question_template, {{"question", example.text}, {"choices", choices}}, "question_template");
  if (format.chat_template.empty()) return prompt;
  return fill(format.chat_template, {{"system", format.system}, {"prompt", prompt}}, "chat_template");
}

}  // namespace moelab
