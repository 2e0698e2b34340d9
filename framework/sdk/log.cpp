#include "log_sink.h"
#include "moelab/lib/log.h"

#include <unistd.h>

#include <cstdio>
#include <ctime>
#include <fstream>
#include <mutex>

namespace moelab {

namespace {
struct Sink {
  std::mutex mutex;
  LogLevel level = LogLevel::info;
  std::ofstream file;
  bool progress_line_open = false;  // a progress line is drawn on the terminal without a newline
};

Sink& sink() {
  static Sink s;
  return s;
}

const char* level_tag(LogLevel level) {
  switch (level) {
    case LogLevel::debug: return "debug";
    case LogLevel::info: return "info";
    case LogLevel::warn: return "WARN";
    case LogLevel::error: return "ERROR";
  }
  return "";
}

std::string timestamp() {
  std::time_t now = std::time(nullptr);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S", std::localtime(&now));
  return buf;
}

std::string format_duration(double seconds) {
  if (seconds < 0 || seconds > 1e7) return "?";
  long long s = static_cast<long long>(seconds + 0.5);
  if (s >= 3600) return fmt::format("{}h{:02}m", s / 3600, s % 3600 / 60);
  if (s >= 60) return fmt::format("{}m{:02}s", s / 60, s % 60);
  return fmt::format("{}s", s);
}
}  // namespace

namespace log {
void set_level(LogLevel level) { sink().level = level; }

void set_file(const std::filesystem::path& path) {
  std::lock_guard lock(sink().mutex);
  sink().file.close();
  if (!path.empty()) sink().file.open(path, std::ios::app);
}

void write(LogLevel level, const std::string& message) {
  Sink& s = sink();
  std::lock_guard lock(s.mutex);
  std::string line = fmt::format("{} {:5} {}\n", timestamp(), level_tag(level), message);
  if (s.file.is_open()) s.file << line << std::flush;
  if (level < s.level) return;
  if (s.progress_line_open) std::fputs("\n", stderr);
  s.progress_line_open = false;
  std::fputs(line.c_str(), stderr);
}
}  // namespace log

Progress::Progress(std::string label, long long total_steps, std::string unit)
    : label_(std::move(label)),
      unit_(std::move(unit)),
      total_(total_steps),
      start_(std::chrono::steady_clock::now()),
      last_print_(start_),
      tty_(isatty(fileno(stderr)) != 0) {}

Progress::~Progress() { finish(); }

void Progress::advance(long long items, const std::string& note) {
  ++step_;
  items_ += items;
  note_ = note;
  auto now = std::chrono::steady_clock::now();
  double since = std::chrono::duration<double>(now - last_print_).count();
  if (since >= (tty_ ? 0.2 : 5.0)) {
    last_print_ = now;
    print(false);
  }
}

void Progress::finish() {
  if (finished_) return;
  finished_ = true;
  print(true);
}

void Progress::print(bool final_line) {
  double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  double rate = elapsed > 0 ? items_ / elapsed : 0.0;
  double eta = step_ > 0 && total_ > 0 ? elapsed / step_ * (total_ - step_) : -1;
  std::string line = fmt::format("{} {}/{}", label_, step_, total_);
  if (items_ > 0) line += fmt::format(" | {:.1f} {}/s", rate, unit_);
  line += final_line ? fmt::format(" | took {}", format_duration(elapsed)) : fmt::format(" | ETA {}", format_duration(eta));
  if (!note_.empty()) line += " | " + note_;
  if (final_line || !tty_) {
    log::info("{}", line);
    return;
  }
  Sink& s = sink();
  std::lock_guard lock(s.mutex);
  std::fprintf(stderr, "\r%s\033[K", line.c_str());
  std::fflush(stderr);
  s.progress_line_open = true;
}

}  // namespace moelab
