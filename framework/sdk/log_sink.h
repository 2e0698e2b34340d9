// Host-side control of where log lines go (the SDK's log.h only writes).
#pragma once

#include <filesystem>

namespace moelab::log {
// Also append every line to `path` (the run's log.txt); an empty path stops that.
void set_file(const std::filesystem::path& path);
}  // namespace moelab::log
