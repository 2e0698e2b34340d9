// Shared by the libFuzzer targets: inputs written to a per-process scratch folder for readers that take
// a path, and the rule for what counts as a finding. A reader may refuse any input by throwing; ASan,
// UBSan, a crash, a hang or runaway memory is a finding. With MOELAB_FUZZ_STRICT=1 an exception that is
// not a std::runtime_error (a bare nlohmann, std::out_of_range or c10 message that names no file) is one too.
#pragma once

#include "moelab/lib/log.h"

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <typeinfo>

namespace moelab::fuzz {

// A folder of this process under /dev/shm (or $TMPDIR), removed at exit.
inline const std::filesystem::path& scratch() {
  static const std::filesystem::path dir = [] {
    std::filesystem::path base = std::filesystem::exists("/dev/shm") ? "/dev/shm" : std::filesystem::temp_directory_path();
    if (const char* t = std::getenv("TMPDIR")) base = t;
    std::filesystem::path d = base / ("moelab-fuzz-" + std::to_string(::getpid()));
    std::filesystem::create_directories(d);
    std::atexit([] { std::error_code ignored; std::filesystem::remove_all(scratch(), ignored); });
    return d;
  }();
  return dir;
}

// Writes `bytes` to scratch()/name and returns the path.
inline std::filesystem::path write_input(const std::string& name, std::string_view bytes) {
  std::filesystem::path file = scratch() / name;
  std::filesystem::create_directories(file.parent_path());
  std::ofstream(file, std::ios::binary | std::ios::trunc).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  return file;
}

inline void quiet_logs() { log::set_level(LogLevel::error); }

inline bool env_is_1(const char* name) { return std::getenv(name) && std::string(std::getenv(name)) == "1"; }

// Runs `read` on one input: refusals are fine, except non-runtime_error ones in strict mode.
// MOELAB_FUZZ_VERBOSE=1 prints each refusal (to check that the seeds are accepted).
template <class F>
void run_reader(F&& read) {
  static const bool strict = env_is_1("MOELAB_FUZZ_STRICT"), verbose = env_is_1("MOELAB_FUZZ_VERBOSE");
  try {
    read();
  } catch (const std::runtime_error& e) {
    if (verbose) std::fprintf(stderr, "refused: %s\n", e.what());
  } catch (const std::exception& e) {
    if (verbose) std::fprintf(stderr, "refused (%s): %s\n", typeid(e).name(), e.what());
    if (!strict) return;
    std::fprintf(stderr, "MOELAB_FUZZ_STRICT: %s escaped the reader: %s\n", typeid(e).name(), e.what());
    std::abort();
  }
}

}  // namespace moelab::fuzz
