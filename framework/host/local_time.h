// The current local time as text, for run folder names and the timestamps of summaries and metrics rows.
#pragma once

#include <string>

namespace moelab {

// The current local time formatted by strftime's `format` (at most 31 characters).
std::string local_time_text(const char* format);

}  // namespace moelab
