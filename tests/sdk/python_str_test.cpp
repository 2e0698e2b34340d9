// Python's str methods as lm-eval's preprocessing uses them: values are what CPython 3 returns.
#include "moelab/lib/python_str.h"

#include <gtest/gtest.h>

namespace {

TEST(PythonStr, LenCountsCodePoints) {
  EXPECT_EQ(moelab::py::len("日本の駅"), 4u);
  EXPECT_EQ(moelab::py::len("naïve façade"), 12u);
  EXPECT_EQ(moelab::py::len(""), 0u);
}

TEST(PythonStr, StripUsesPythonsWhitespace) {
  EXPECT_EQ(moelab::py::strip(" \t\n x y \r\v\f"), "x y");
  EXPECT_EQ(moelab::py::strip("\u00a0\u3000x\u2009\u0085"), "x");  // no-break, ideographic, thin space, NEL
  EXPECT_EQ(moelab::py::rstrip("Answer: \n "), "Answer:");
  EXPECT_EQ(moelab::py::lstrip("  a "), "a ");
  EXPECT_EQ(moelab::py::strip("\u200bx"), "\u200bx");  // zero width space is not whitespace in Python
}

TEST(PythonStr, CapitalizeLowersTheRest) {
  EXPECT_EQ(moelab::py::capitalize("he Is On A ROOF."), "He is on a roof.");
  EXPECT_EQ(moelab::py::capitalize("éCOLE"), "École");
  EXPECT_EQ(moelab::py::capitalize("ßIG"), "Ssig");      // full title-case mapping
  EXPECT_EQ(moelab::py::capitalize("ǆEMAL"), "ǅemal");  // title case, not upper case
  EXPECT_EQ(moelab::py::capitalize("1ST Place"), "1st place");
  EXPECT_EQ(moelab::py::capitalize(""), "");
}

TEST(PythonStr, ReplaceIsOnePass) {
  EXPECT_EQ(moelab::py::replace("a    b   c", "  ", " "), "a  b  c");
  EXPECT_EQ(moelab::py::replace("x [title] y", " [title]", ". "), "x.  y");
}

}  // namespace
