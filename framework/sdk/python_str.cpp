#include "moelab/lib/python_str.h"

#include <unicode/uchar.h>
#include <unicode/ustring.h>
#include <unicode/utf8.h>

#include <stdexcept>
#include <vector>

namespace moelab::py {
namespace {

// str.isspace: bidirectional class WS, B or S, or general category Zs.
bool is_space(UChar32 c) {
  switch (u_charDirection(c)) {
    case U_WHITE_SPACE_NEUTRAL:
    case U_BLOCK_SEPARATOR:
    case U_SEGMENT_SEPARATOR:
      return true;
    default:
      return u_charType(c) == U_SPACE_SEPARATOR;
  }
}

// Code point at byte `i` of `s`, advancing `i`; invalid bytes read as U+FFFD.
UChar32 next(std::string_view s, std::size_t& i) {
  UChar32 c;
  const auto length = static_cast<int32_t>(s.size());
  auto at = static_cast<int32_t>(i);
  U8_NEXT(s.data(), at, length, c);
  i = static_cast<std::size_t>(at);
  return c < 0 ? 0xFFFD : c;
}

std::u16string to_utf16(std::string_view s) {
  std::u16string out;
  for (std::size_t i = 0; i < s.size();) {
    UChar32 c = next(s, i);
    if (c > 0xFFFF) {
      out.push_back(static_cast<char16_t>(U16_LEAD(c)));
      out.push_back(static_cast<char16_t>(U16_TRAIL(c)));
    } else {
      out.push_back(static_cast<char16_t>(c));
    }
  }
  return out;
}

std::string to_utf8(const std::u16string& s) {
  std::string out;
  for (std::size_t i = 0; i < s.size();) {
    UChar32 c;
    U16_NEXT(s.data(), i, s.size(), c);
    char buffer[4];
    int32_t n = 0;
    U8_APPEND_UNSAFE(buffer, n, c);
    out.append(buffer, static_cast<std::size_t>(n));
  }
  return out;
}

// An ICU full case mapping (u_strToLower / u_strToTitle) of a UTF-16 string.
template <class Mapping>
std::u16string mapped(const std::u16string& s, Mapping mapping) {
  std::u16string out(s.size() * 3 + 4, u'\0');
  UErrorCode status = U_ZERO_ERROR;
  int32_t n = mapping(reinterpret_cast<UChar*>(out.data()), static_cast<int32_t>(out.size()), reinterpret_cast<const UChar*>(s.data()),
                      static_cast<int32_t>(s.size()), &status);
  if (U_FAILURE(status)) throw std::runtime_error(std::string("python_str: ICU case mapping failed: ") + u_errorName(status));
  out.resize(static_cast<std::size_t>(n));
  return out;
}

}  // namespace

std::size_t len(std::string_view s) {
  std::size_t n = 0;
  for (std::size_t i = 0; i < s.size(); ++n) next(s, i);
  return n;
}

std::string_view lstrip(std::string_view s) {
  std::size_t i = 0;
  while (i < s.size()) {
    std::size_t after = i;
    if (!is_space(next(s, after))) break;
    i = after;
  }
  return s.substr(i);
}

std::string_view rstrip(std::string_view s) {
  std::size_t end = 0;  // byte just past the last non-space character
  for (std::size_t i = 0; i < s.size();)
    if (!is_space(next(s, i))) end = i;
  return s.substr(0, end);
}

std::string_view strip(std::string_view s) { return rstrip(lstrip(s)); }

std::string capitalize(std::string_view s) {
  if (s.empty()) return "";
  std::size_t first_end = 0;
  next(s, first_end);
  // The first character alone, title-cased as a one-character word; the rest lower-cased.
  std::u16string head = mapped(to_utf16(s.substr(0, first_end)), [](UChar* d, int32_t dn, const UChar* src, int32_t sn, UErrorCode* e) {
    return u_strToTitle(d, dn, src, sn, nullptr, "", e);
  });
  std::u16string tail = mapped(to_utf16(s.substr(first_end)), [](UChar* d, int32_t dn, const UChar* src, int32_t sn, UErrorCode* e) {
    return u_strToLower(d, dn, src, sn, "", e);
  });
  return to_utf8(head) + to_utf8(tail);
}

std::string replace(std::string_view s, std::string_view old, std::string_view replacement) {
  if (old.empty()) throw std::invalid_argument("py::replace: empty pattern");
  std::string out;
  std::size_t at = 0;
  for (std::size_t found; (found = s.find(old, at)) != std::string_view::npos; at = found + old.size()) {
    out.append(s.substr(at, found - at));
    out.append(replacement);
  }
  out.append(s.substr(at));
  return out;
}

}  // namespace moelab::py
