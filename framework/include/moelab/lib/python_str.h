// Python's str methods on UTF-8 text, so preprocessing written in Python (lm-eval's task definitions)
// gives the same strings here: whitespace, lengths and case follow Python 3, not ASCII.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace moelab::py {

// len(s): code points.
std::size_t len(std::string_view s);
// s.strip() / s.lstrip() / s.rstrip() without arguments: Python's whitespace (str.isspace), Unicode included.
std::string_view strip(std::string_view s);
std::string_view lstrip(std::string_view s);
std::string_view rstrip(std::string_view s);
// s.capitalize(): the first character in title case, every other one in lower case (full case mappings).
std::string capitalize(std::string_view s);
// s.replace(old, new): one left-to-right pass over non-overlapping occurrences.
std::string replace(std::string_view s, std::string_view old, std::string_view replacement);

}  // namespace moelab::py
