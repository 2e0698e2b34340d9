// Writing user-visible outputs so an interrupted run never leaves a half-written file.
#pragma once

#include <nlohmann/json.hpp>

#include <filesystem>
#include <string>

namespace moelab {

// Writes to a temporary file beside `path`, flushes it, then renames it over `path`.
void write_file_atomic(const std::filesystem::path& path, const std::string& content);
std::string read_file(const std::filesystem::path& path);
// The file parsed as JSON; a parse error names the file and the position.
nlohmann::json read_json(const std::filesystem::path& path);

}  // namespace moelab
