#include "elf_check.h"

#include <elf.h>
#include <fmt/format.h>

#include <cstring>
#include <fstream>
#include <vector>

namespace moelab {

std::string elf_shared_object_problem(const std::filesystem::path& file) {
  std::error_code ec;
  const std::uintmax_t size = std::filesystem::file_size(file, ec);
  if (ec) return "cannot read its size: " + ec.message();
  std::ifstream in(file, std::ios::binary);
  Elf64_Ehdr header{};
  if (!in.read(reinterpret_cast<char*>(&header), sizeof header))
    return fmt::format("{} bytes, shorter than an ELF header", size);
  if (std::memcmp(header.e_ident, ELFMAG, SELFMAG) != 0) return "not an ELF file";
  if (header.e_ident[EI_CLASS] != ELFCLASS64 || header.e_ident[EI_DATA] != ELFDATA2LSB) return "not a 64-bit little-endian ELF file";
  if (header.e_type != ET_DYN) return "not a shared object";
  // Header counts and sizes are 16-bit, so their products cannot overflow; offsets are checked first.
  auto fits = [&](std::uint64_t offset, std::uint64_t bytes) { return offset <= size && bytes <= size - offset; };
  if (header.e_phentsize != sizeof(Elf64_Phdr) || !fits(header.e_phoff, std::uint64_t{header.e_phnum} * header.e_phentsize))
    return fmt::format("its program headers lie past its end ({} bytes): cut short or still being written", size);
  if (header.e_shnum != 0 && !fits(header.e_shoff, std::uint64_t{header.e_shnum} * header.e_shentsize))
    return fmt::format("its section table lies past its end ({} bytes): cut short or still being written", size);
  std::vector<Elf64_Phdr> segments(header.e_phnum);
  in.seekg(static_cast<std::streamoff>(header.e_phoff));
  if (!in.read(reinterpret_cast<char*>(segments.data()), static_cast<std::streamsize>(segments.size() * sizeof(Elf64_Phdr))))
    return "cannot read its program headers";
  for (const Elf64_Phdr& segment : segments)
    if (segment.p_type == PT_LOAD && !fits(segment.p_offset, segment.p_filesz))
      return fmt::format("a loadable segment ends at byte {}, past its end ({} bytes): cut short or still being written",
                         segment.p_offset + segment.p_filesz, size);
  return {};
}

}  // namespace moelab
