#include "log_sink.h"
#include "moelab/lib/log.h"

#include <unistd.h>

#include <cstdio>
#include <ctime>
#include <fstream>
#include <map>
#include <mutex>
#include <vector>

namespace moelab {

namespace {
struct Sink {
  std::mutex mutex;
  LogLevel level = LogLevel::info;
  std::ofstream file;
  bool progress_line_open = false;  // a progress line is drawn on the terminal without a newline
  // Warnings already printed, by kind ("kind:...") or text ("text:..."): the first message and how many
  // more were only counted, in the order first seen.
  struct Repeat {
    std::string key, first;
    long long more = 0;
  };
  std::vector<Repeat> repeats;
  std::map<std::string, std::size_t> repeat_index;
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

namespace {
// Writes one line to log.txt and, unless `counted_only` or below the level, to stderr. Holds the lock.
void emit(Sink& s, LogLevel level, const std::string& message, bool counted_only) {
  std::string line = fmt::format("{} {:5} {}\n", timestamp(), level_tag(level), message);
  if (s.file.is_open()) s.file << line << std::flush;
  if (counted_only || level < s.level) return;
  if (s.progress_line_open) std::fputs("\n", stderr);
  s.progress_line_open = false;
  std::fputs(line.c_str(), stderr);
}

// True when `key` was seen before (its count goes up); records it otherwise.
bool seen_before(Sink& s, const std::string& key, const std::string& message) {
  auto [it, added] = s.repeat_index.emplace(key, s.repeats.size());
  if (added) {
    s.repeats.push_back({key, message});
    return false;
  }
  ++s.repeats[it->second].more;
  return true;
}
}  // namespace

void write(LogLevel level, const std::string& message) {
  Sink& s = sink();
  std::lock_guard lock(s.mutex);
  emit(s, level, message, level == LogLevel::warn && seen_before(s, "text:" + message, message));
}

void write_once(const std::string& kind, const std::string& message) {
  Sink& s = sink();
  std::lock_guard lock(s.mutex);
  emit(s, LogLevel::warn, message, seen_before(s, "kind:" + kind, message));
}

void result(const std::string& title, const std::string& text) {
  Sink& s = sink();
  std::lock_guard lock(s.mutex);
  emit(s, LogLevel::info, title + " (results on stdout):\n" + text, /*counted_only=*/true);
  if (s.progress_line_open) std::fputs("\n", stderr);
  s.progress_line_open = false;
  std::fflush(stderr);
  std::fputs((title + "\n" + text + (text.empty() || text.back() != '\n' ? "\n" : "")).c_str(), stdout);
  std::fflush(stdout);
}

int summarize_repeats() {
  Sink& s = sink();
  std::lock_guard lock(s.mutex);
  int lines = 0;
  for (const auto& r : s.repeats) {
    if (r.more == 0) continue;
    const bool by_kind = r.key.rfind("kind:", 0) == 0;
    emit(s, LogLevel::warn,
         by_kind ? fmt::format("{} more warning{} like this one ({}): {}", r.more, r.more == 1 ? "" : "s", r.key.substr(5), r.first)
                 : fmt::format("this warning was repeated {} more time{}: {}", r.more, r.more == 1 ? "" : "s", r.first),
         false);
    ++lines;
  }
  s.repeats.clear();
  s.repeat_index.clear();
  return lines;
}
}  // namespace log

Progress::Progress(std::string label, long long total_steps, std::string unit)
    : label_(std::move(label)),
      unit_(std::move(unit)),
      total_(total_steps),
      start_(std::chrono::steady_clock::now()),
      last_print_(start_),
      tty_(isatty(fileno(stderr)) != 0) {}

Progress Progress::bytes(std::string label, long long total_bytes) {
  Progress p(std::move(label), total_bytes, "GB");
  p.bytes_ = true;
  return p;
}

Progress::Progress(Progress&& other) noexcept
    : label_(std::move(other.label_)),
      unit_(std::move(other.unit_)),
      note_(std::move(other.note_)),
      total_(other.total_),
      step_(other.step_),
      items_(other.items_),
      start_(other.start_),
      last_print_(other.last_print_),
      tty_(other.tty_),
      finished_(other.finished_),
      bytes_(other.bytes_) {
  other.finished_ = true;
}

Progress::~Progress() { finish(); }

void Progress::advance(long long items, const std::string& note) { advance_steps(1, items, note); }

void Progress::advance_steps(long long steps, long long items, const std::string& note) {
  step_ += steps;
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
  if (bytes_) {
    const bool gb = total_ >= 1'000'000'000;  // MB below a GB: a tiny model's load reads "0.00 GB" otherwise
    const double unit = gb ? 1e9 : 1e6;
    line = fmt::format("{} {:.2f}/{:.2f} {} | {:.2f} {}/s", label_, step_ / unit, total_ / unit, gb ? "GB" : "MB",
                       elapsed > 0 ? step_ / unit / elapsed : 0.0, gb ? "GB" : "MB");
  }
  else if (items_ > 0) line += fmt::format(" | {:.1f} {}/s", rate, unit_);
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
