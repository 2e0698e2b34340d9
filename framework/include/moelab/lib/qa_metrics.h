// Exact match and F1 of a generated answer against a gold answer, as the official SQuAD v1.1 evaluation
// script computes them: both normalised (lower case, string.punctuation characters deleted, the articles
// a, an, the removed as whole words, whitespace collapsed), F1 over the common whitespace tokens.
#pragma once

#include <string>
#include <string_view>

namespace moelab {

// SQuAD's normalize_answer: "The U.S. (1,000 km)" -> "us 1000 km".
std::string squad_normalize(std::string_view answer);
// 1 when the normalised answers are equal, else 0.
double squad_exact_match(std::string_view prediction, std::string_view gold);
// Harmonic mean of precision and recall of the normalised tokens (a multiset intersection); 0 without a
// common token, so also when either side normalises to nothing.
double squad_f1(std::string_view prediction, std::string_view gold);

}  // namespace moelab
