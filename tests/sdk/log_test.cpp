// Logging: a repeated warning is printed once and counted, then summarized with its count; results go
// to stdout and log lines to stderr; byte progress shows GB and GB/s.
#include "log_sink.h"
#include "moelab/lib/files.h"
#include "moelab/lib/log.h"
#include "test_run.h"

#include <gmock/gmock.h>

using moelab::test::TempDir;
using testing::HasSubstr;
using testing::Not;

namespace {

int occurrences(const std::string& text, const std::string& part) {
  int n = 0;
  for (std::size_t at = text.find(part); at != std::string::npos; at = text.find(part, at + 1)) ++n;
  return n;
}

TEST(Log, RepeatedWarningsArePrintedOnceAndSummarizedWithTheirCount) {
  TempDir dir;
  moelab::log::summarize_repeats();  // nothing left from other tests
  moelab::log::set_file(dir.path() / "log.txt");
  testing::internal::CaptureStderr();
  for (int i = 0; i < 4; ++i) moelab::log::warn("the same warning");
  for (int e = 0; e < 3; ++e) moelab::log::warn_once("test.no_tokens", "expert {} received no token", e);
  moelab::log::warn("a warning seen once");
  moelab::log::info("info lines are never counted");
  moelab::log::info("info lines are never counted");
  const std::string before = testing::internal::GetCapturedStderr();
  EXPECT_EQ(occurrences(before, "the same warning"), 1);
  EXPECT_EQ(occurrences(before, "received no token"), 1);
  EXPECT_THAT(before, HasSubstr("expert 0 received no token"));
  EXPECT_THAT(before, Not(HasSubstr("expert 1")));
  EXPECT_EQ(occurrences(before, "info lines are never counted"), 2);

  testing::internal::CaptureStderr();
  EXPECT_EQ(moelab::log::summarize_repeats(), 2);  // the warning seen once has nothing to summarize
  const std::string summary = testing::internal::GetCapturedStderr();
  EXPECT_THAT(summary, HasSubstr("this warning was repeated 3 more times: the same warning"));
  EXPECT_THAT(summary, HasSubstr("2 more warnings like this one (test.no_tokens): expert 0 received no token"));
  EXPECT_THAT(summary, Not(HasSubstr("a warning seen once")));
  // Counts start again: the same warning is printed once more after a summary.
  testing::internal::CaptureStderr();
  moelab::log::warn("the same warning");
  EXPECT_THAT(testing::internal::GetCapturedStderr(), HasSubstr("the same warning"));
  EXPECT_EQ(moelab::log::summarize_repeats(), 0);
  moelab::log::set_file({});
  // log.txt keeps every line, the counted ones too.
  const std::string file = moelab::read_file(dir.path() / "log.txt");
  EXPECT_EQ(occurrences(file, "the same warning"), 4 + 1 + 1);
  EXPECT_THAT(file, HasSubstr("expert 2 received no token"));
}

TEST(Log, ResultsGoToStdoutAndLogLinesToStderr) {
  TempDir dir;
  moelab::log::set_file(dir.path() / "log.txt");
  testing::internal::CaptureStdout();
  testing::internal::CaptureStderr();
  moelab::log::info("a log line");
  moelab::log::result("scores:", "| task | accuracy |\n| --- | --- |\n| arc | 50% |\n");
  const std::string err = testing::internal::GetCapturedStderr(), out = testing::internal::GetCapturedStdout();
  moelab::log::set_file({});
  EXPECT_EQ(out, "scores:\n| task | accuracy |\n| --- | --- |\n| arc | 50% |\n");
  EXPECT_THAT(err, HasSubstr("a log line"));
  EXPECT_THAT(err, Not(HasSubstr("| arc |")));
  EXPECT_THAT(moelab::read_file(dir.path() / "log.txt"), HasSubstr("| arc | 50% |"));
}

TEST(Log, ByteProgressShowsGigabytesAndRate) {
  testing::internal::CaptureStderr();
  {
    moelab::Progress progress = moelab::Progress::bytes("loading model", 3'000'000'000LL);
    progress.advance_steps(1'500'000'000LL, 0, "half");
    progress.advance_steps(1'500'000'000LL);
  }  // the final line, printed once (the moved-from object prints nothing)
  const std::string err = testing::internal::GetCapturedStderr();
  EXPECT_EQ(occurrences(err, "loading model 3.00/3.00 GB | "), 1) << err;
  EXPECT_THAT(err, testing::ContainsRegex("loading model 3\\.00/3\\.00 GB \\| [0-9.]+ GB/s \\| took"));
}

}  // namespace
