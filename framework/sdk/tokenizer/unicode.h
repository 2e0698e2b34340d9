// Text helpers for the tokenizer: GPT-2's byte <-> printable-character map, UTF-8 splitting and
// lossy decoding, and NFC normalization (ICU).
#pragma once

#include <array>
#include <string>
#include <string_view>
#include <vector>

namespace moelab::unicode {

// The UTF-8 encoded character that stands for each byte in byte-level BPE vocabularies.
const std::array<std::string, 256>& byte_to_char();
// Inverse of byte_to_char for a code point, or -1 when it stands for no byte.
int char_to_byte(char32_t code_point);

// Splits UTF-8 into characters (invalid bytes become one-byte pieces).
std::vector<std::string_view> characters(std::string_view text);
// Decodes one UTF-8 character at `text` (advancing `i`); returns U+FFFD for an invalid sequence.
char32_t next_code_point(std::string_view text, std::size_t& i);
// Replaces each maximal invalid UTF-8 subsequence with U+FFFD (Rust's String::from_utf8_lossy).
std::string utf8_lossy(std::string_view bytes);

std::string nfc(std::string_view text);

}  // namespace moelab::unicode
