// Checks that a file is a whole ELF shared object before dlopen maps it: a plugin library that is still
// being written (or was cut short) makes dlopen read past its end and the process die of SIGBUS.
#pragma once

#include <filesystem>
#include <string>

namespace moelab {

// Empty when `file` is a complete 64-bit little-endian ELF shared object (every program segment and the
// section table lie inside the file); otherwise what is wrong, in words.
std::string elf_shared_object_problem(const std::filesystem::path& file);

}  // namespace moelab
