// Levelled logging to stderr and to the run's log.txt, and progress lines for long loops.
#pragma once

#include <fmt/format.h>

#include <chrono>
#include <string>

namespace moelab {

enum class LogLevel { debug, info, warn, error };

namespace log {
void set_level(LogLevel level);
void write(LogLevel level, const std::string& message);

template <class... Args>
void debug(fmt::format_string<Args...> f, Args&&... args) { write(LogLevel::debug, fmt::format(f, std::forward<Args>(args)...)); }
template <class... Args>
void info(fmt::format_string<Args...> f, Args&&... args) { write(LogLevel::info, fmt::format(f, std::forward<Args>(args)...)); }
template <class... Args>
void warn(fmt::format_string<Args...> f, Args&&... args) { write(LogLevel::warn, fmt::format(f, std::forward<Args>(args)...)); }
template <class... Args>
void error(fmt::format_string<Args...> f, Args&&... args) { write(LogLevel::error, fmt::format(f, std::forward<Args>(args)...)); }
}  // namespace log

// Shows step/total, items per second and ETA: redrawn in place on a terminal, a plain line every
// few seconds otherwise. `unit` names the items counted by advance(), for example "tokens".
class Progress {
 public:
  Progress(std::string label, long long total_steps, std::string unit = "items");
  ~Progress();
  void advance(long long items = 0, const std::string& note = "");
  void finish();

 private:
  void print(bool final_line);

  std::string label_, unit_, note_;
  long long total_, step_ = 0, items_ = 0;
  std::chrono::steady_clock::time_point start_, last_print_;
  bool tty_, finished_ = false;
};

}  // namespace moelab
