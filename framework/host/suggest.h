// "Did you mean" hints for misspelt names.
#pragma once

#include <string>
#include <vector>

namespace moelab {

// Returns " (did you mean 'x'?)" for the closest candidate within a small edit distance, else "".
std::string did_you_mean(const std::string& word, const std::vector<std::string>& candidates);

}  // namespace moelab
