// UTF-8 validity for text read from users' files: the tokenizer needs valid UTF-8, and a reader that
// checks first can name the file and line of a bad byte.
#pragma once

#include <cstddef>
#include <string_view>

namespace moelab {

// Offset of the first byte that starts no valid UTF-8 sequence, or std::string_view::npos when `text` is valid.
std::size_t first_invalid_utf8(std::string_view text);

}  // namespace moelab
