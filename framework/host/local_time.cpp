#include "local_time.h"

#include <ctime>

namespace moelab {

std::string local_time_text(const char* format) {
  const std::time_t now = std::time(nullptr);
  std::tm local{};
  localtime_r(&now, &local);
  char text[32];
  return std::strftime(text, sizeof text, format, &local) > 0 ? text : "";
}

}  // namespace moelab
