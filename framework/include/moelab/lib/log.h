// Levelled logging to stderr and to the run's log.txt, and progress lines for long loops.
#pragma once

#include <fmt/format.h>

#include <chrono>
#include <string>

namespace moelab {

enum class LogLevel { debug, info, warn, error };

namespace log {
void set_level(LogLevel level);
// A warning whose text was already printed is only counted (and kept in log.txt); see summarize_repeats.
void write(LogLevel level, const std::string& message);
// A warning of a kind (a short fixed name, e.g. "quantize.no_calibration_tokens") is printed the first
// time only; later ones go to log.txt and are counted, for warnings whose text varies (layer, expert).
void write_once(const std::string& kind, const std::string& message);
// One line per warning that repeated ("... (N more like it: KIND)"), then the counts start again. The
// host calls it when a run ends; returns how many such lines it wrote.
int summarize_repeats();
// A results table or summary for the reader: printed to stdout (log lines go to stderr, so
// `runexp ... > results.md` keeps only results) and kept in log.txt.
void result(const std::string& title, const std::string& text);

template <class... Args>
void debug(fmt::format_string<Args...> f, Args&&... args) { write(LogLevel::debug, fmt::format(f, std::forward<Args>(args)...)); }
template <class... Args>
void info(fmt::format_string<Args...> f, Args&&... args) { write(LogLevel::info, fmt::format(f, std::forward<Args>(args)...)); }
template <class... Args>
void warn(fmt::format_string<Args...> f, Args&&... args) { write(LogLevel::warn, fmt::format(f, std::forward<Args>(args)...)); }
template <class... Args>
void warn_once(const std::string& kind, fmt::format_string<Args...> f, Args&&... args) {
  write_once(kind, fmt::format(f, std::forward<Args>(args)...));
}
template <class... Args>
void error(fmt::format_string<Args...> f, Args&&... args) { write(LogLevel::error, fmt::format(f, std::forward<Args>(args)...)); }
}  // namespace log

// Shows step/total, items per second and ETA: redrawn in place on a terminal, a plain line every
// few seconds otherwise. `unit` names the items counted by advance(), for example "tokens".
// Progress::bytes counts bytes instead of steps and shows "GB done/total | GB/s | ETA" (model loading;
// MB below 1 GB).
class Progress {
 public:
  Progress(std::string label, long long total_steps, std::string unit = "items");
  static Progress bytes(std::string label, long long total_bytes);
  Progress(Progress&& other) noexcept;
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;
  ~Progress();
  // `steps` steps done (1 by default), `items` more items of `unit` (rate), a note shown after the counts.
  void advance(long long items = 0, const std::string& note = "");
  void advance_steps(long long steps, long long items = 0, const std::string& note = "");
  void finish();

 private:
  void print(bool final_line);

  std::string label_, unit_, note_;
  long long total_, step_ = 0, items_ = 0;
  std::chrono::steady_clock::time_point start_, last_print_;
  bool tty_, finished_ = false, bytes_ = false;
};

}  // namespace moelab
