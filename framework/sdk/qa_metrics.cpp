#include "moelab/lib/qa_metrics.h"

#include <unicode/locid.h>
#include <unicode/uchar.h>
#include <unicode/unistr.h>

#include <map>
#include <string>
#include <vector>

namespace moelab {

namespace {

constexpr std::string_view kAsciiPunctuation = R"(!"#$%&'()*+,-./:;<=>?@[\]^_`{|}~)";  // Python's string.punctuation

// Python's str.isspace: bidirectional class WS, B or S, or category Zs.
bool is_space(UChar32 c) {
  const UCharDirection d = u_charDirection(c);
  return d == U_WHITE_SPACE_NEUTRAL || d == U_BLOCK_SEPARATOR || d == U_SEGMENT_SEPARATOR || u_charType(c) == U_SPACE_SEPARATOR;
}

// Python's re \w on str: isalnum() or '_'.
bool is_word(UChar32 c) {
  switch (u_charType(c)) {
    case U_UPPERCASE_LETTER: case U_LOWERCASE_LETTER: case U_TITLECASE_LETTER: case U_MODIFIER_LETTER: case U_OTHER_LETTER:
    case U_DECIMAL_DIGIT_NUMBER: case U_LETTER_NUMBER: case U_OTHER_NUMBER:
      return true;
    default:
      return c == '_' || u_getIntPropertyValue(c, UCHAR_NUMERIC_TYPE) != U_NT_NONE;
  }
}

std::vector<std::string> normalized_tokens(std::string_view answer) {
  icu::UnicodeString lower = icu::UnicodeString::fromUTF8(icu::StringPiece(answer.data(), static_cast<int32_t>(answer.size())));
  lower.toLower(icu::Locale::getRoot());
  std::vector<UChar32> chars;  // lower case, punctuation deleted
  for (int32_t i = 0; i < lower.length(); i = lower.moveIndex32(i, 1)) {
    const UChar32 c = lower.char32At(i);
    if (c >= 128 || kAsciiPunctuation.find(static_cast<char>(c)) == std::string_view::npos) chars.push_back(c);
  }
  // re.sub(r"\b(a|an|the)\b", " ", text): a run of word characters that is an article becomes a space.
  std::vector<UChar32> spaced;
  for (std::size_t i = 0; i < chars.size();) {
    std::size_t end = i + 1;
    if (is_word(chars[i]))
      while (end < chars.size() && is_word(chars[end])) ++end;
    const std::u32string run(chars.begin() + static_cast<std::ptrdiff_t>(i), chars.begin() + static_cast<std::ptrdiff_t>(end));
    if (run == U"a" || run == U"an" || run == U"the") spaced.push_back(' ');
    else spaced.insert(spaced.end(), run.begin(), run.end());
    i = end;
  }
  std::vector<std::string> tokens;  // " ".join(text.split()), split again
  std::string current;
  for (UChar32 c : spaced) {
    if (is_space(c)) {
      if (!current.empty()) tokens.push_back(std::move(current));
      current.clear();
    } else {
      icu::UnicodeString(c).toUTF8String(current);
    }
  }
  if (!current.empty()) tokens.push_back(std::move(current));
  return tokens;
}

}  // namespace

std::string squad_normalize(std::string_view answer) {
  std::string out;
  for (const auto& token : normalized_tokens(answer)) out += (out.empty() ? "" : " ") + token;
  return out;
}

double squad_exact_match(std::string_view prediction, std::string_view gold) {
  return squad_normalize(prediction) == squad_normalize(gold) ? 1.0 : 0.0;
}

double squad_f1(std::string_view prediction, std::string_view gold) {
  const std::vector<std::string> p = normalized_tokens(prediction), g = normalized_tokens(gold);
  std::map<std::string, long long> gold_counts;
  for (const auto& t : g) ++gold_counts[t];
  long long common = 0;
  for (const auto& t : p)
    if (gold_counts[t]-- > 0) ++common;
  if (common == 0) return 0.0;
  const double precision = static_cast<double>(common) / static_cast<double>(p.size());
  const double recall = static_cast<double>(common) / static_cast<double>(g.size());
  return 2 * precision * recall / (precision + recall);
}

}  // namespace moelab
