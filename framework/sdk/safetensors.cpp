#include "moelab/lib/safetensors.h"

#include "moelab/lib/files.h"
#include "moelab/lib/json_read.h"
#include "moelab/lib/log.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <limits>
#include <optional>
#include <stdexcept>

namespace moelab {

namespace fs = std::filesystem;

namespace {

const std::vector<std::pair<std::string, torch::ScalarType>>& dtype_table() {
  static const std::vector<std::pair<std::string, torch::ScalarType>> table = {
      {"F64", torch::kFloat64}, {"F32", torch::kFloat32}, {"F16", torch::kFloat16}, {"BF16", torch::kBFloat16},
      {"I64", torch::kInt64},   {"I32", torch::kInt32},   {"I16", torch::kInt16},   {"I8", torch::kInt8},
      {"U8", torch::kUInt8},    {"BOOL", torch::kBool}};
  return table;
}

std::string dtype_name(torch::ScalarType t) {
  for (const auto& [name, type] : dtype_table())
    if (type == t) return name;
  throw std::runtime_error(fmt::format("safetensors: dtype {} cannot be written", c10::toString(t)));
}

[[noreturn]] void bad(const fs::path& file, const std::string& what) {
  throw std::runtime_error(fmt::format("{}: invalid safetensors file: {}", file.string(), what));
}

constexpr std::uint64_t kMaxHeader = 100ull << 20;

}  // namespace

struct SafetensorsFile::Mapping {
  void* address = MAP_FAILED;
  std::size_t size = 0;
  ~Mapping() {
    if (address != MAP_FAILED) munmap(address, size);
  }
};

SafetensorsFile::SafetensorsFile(const fs::path& file) : path_(file), mapping_(std::make_shared<Mapping>()) {
  int fd = ::open(file.c_str(), O_RDONLY);
  if (fd < 0) throw std::runtime_error(fmt::format("cannot open {}: {}", file.string(), std::strerror(errno)));
  struct stat st {};
  ::fstat(fd, &st);
  mapping_->size = static_cast<std::size_t>(st.st_size);
  if (mapping_->size < 8) {
    ::close(fd);
    bad(file, fmt::format("{} bytes is too short for the 8-byte header length", mapping_->size));
  }
  mapping_->address = ::mmap(nullptr, mapping_->size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (mapping_->address == MAP_FAILED) throw std::runtime_error(fmt::format("cannot map {}", file.string()));
  const auto* bytes = static_cast<const std::uint8_t*>(mapping_->address);

  std::uint64_t header_size = 0;
  for (int i = 7; i >= 0; --i) header_size = (header_size << 8) | bytes[i];
  if (header_size > kMaxHeader || 8 + header_size > mapping_->size)
    bad(file, fmt::format("header length {} does not fit in the file ({} bytes): truncated or not safetensors", header_size,
                          mapping_->size));
  nlohmann::json header;
  try {
    header = parse_json(std::string_view(reinterpret_cast<const char*>(bytes + 8), header_size), "header", /*max_depth=*/8);
  } catch (const std::runtime_error& e) {
    bad(file, fmt::format("header is not JSON ({})", e.what()));
  }
  if (!header.is_object()) bad(file, "header is not a JSON object");
  data_ = bytes + 8 + header_size;
  const std::size_t data_size = mapping_->size - 8 - header_size;

  std::vector<std::pair<std::size_t, std::string>> starts;
  for (const auto& [name, info] : header.items()) {
    if (name == "__metadata__") {
      if (!info.is_object()) bad(file, "__metadata__ is not an object");
      for (const auto& [k, v] : info.items()) {
        if (!v.is_string()) bad(file, fmt::format("__metadata__ value of '{}' is not a string", k));
        metadata_[k] = v.get<std::string>();
      }
      continue;
    }
    auto where = [&, &name = name](const std::string& what) { bad(file, fmt::format("tensor '{}': {}", name, what)); };
    if (!info.is_object() || !info.contains("dtype") || !info.contains("shape") || !info.contains("data_offsets"))
      where("needs dtype, shape and data_offsets");
    Entry entry{};
    std::string dtype = info["dtype"].is_string() ? info["dtype"].get<std::string>() : "";
    auto known = std::find_if(dtype_table().begin(), dtype_table().end(), [&](const auto& d) { return d.first == dtype; });
    if (known == dtype_table().end()) where(fmt::format("dtype '{}' is not supported by this build", dtype));
    entry.dtype = known->second;
    std::uint64_t elements = 1;
    bool overflow = false;
    if (!info["shape"].is_array()) where("shape is not an array");
    for (const auto& d : info["shape"]) {
      if (!d.is_number_unsigned()) where("shape has a negative or non-integer dimension");
      if (d.get<std::uint64_t>() > static_cast<std::uint64_t>(std::numeric_limits<int64_t>::max()))
        where(fmt::format("shape {} has a dimension beyond 2^63", info["shape"].dump()));
      entry.shape.push_back(d.get<int64_t>());
      overflow = __builtin_mul_overflow(elements, d.get<std::uint64_t>(), &elements) || overflow;
    }
    const auto& offsets = info["data_offsets"];
    if (!offsets.is_array() || offsets.size() != 2 || !offsets[0].is_number_unsigned() || !offsets[1].is_number_unsigned())
      where("data_offsets must be [begin, end]");
    entry.begin = offsets[0].get<std::size_t>();
    entry.end = offsets[1].get<std::size_t>();
    if (entry.begin > entry.end || entry.end > data_size)
      where(fmt::format("data_offsets [{}, {}] lie outside the {} data bytes (truncated file?)", entry.begin, entry.end, data_size));
    std::uint64_t expected = 0;
    overflow = __builtin_mul_overflow(elements, static_cast<std::uint64_t>(c10::elementSize(entry.dtype)), &expected) || overflow;
    overflow = overflow || expected > static_cast<std::uint64_t>(std::numeric_limits<int64_t>::max());
    if (overflow) where(fmt::format("{} {} holds more bytes than 2^63 (corrupt header?)", dtype, info["shape"].dump()));
    if (entry.end - entry.begin != expected)
      where(fmt::format("holds {} bytes, but {} {} needs {}", entry.end - entry.begin, dtype, info["shape"].dump(), expected));
    starts.emplace_back(entry.begin, name);
    entries_.emplace(name, std::move(entry));
  }
  std::sort(starts.begin(), starts.end());
  for (std::size_t i = 1; i < starts.size(); ++i) {
    const Entry& previous = entries_.at(starts[i - 1].second);
    if (previous.end > starts[i].first && previous.end > previous.begin)
      bad(file, fmt::format("tensors '{}' and '{}' overlap", starts[i - 1].second, starts[i].second));
  }
}

std::vector<std::string> SafetensorsFile::names() const {
  std::vector<std::string> out;
  for (const auto& [name, e] : entries_) out.push_back(name);
  return out;
}

const SafetensorsFile::Entry& SafetensorsFile::entry(const std::string& name) const {
  auto it = entries_.find(name);
  if (it == entries_.end()) throw std::runtime_error(fmt::format("{}: no tensor '{}'", path_.string(), name));
  return it->second;
}

torch::Tensor SafetensorsFile::get(const std::string& name) const {
  const Entry& e = entry(name);
  void* at = const_cast<std::uint8_t*>(data_ + e.begin);
  auto keep = mapping_;
  return torch::from_blob(at, e.shape, [keep](void*) {}, torch::TensorOptions().dtype(e.dtype));
}

Checkpoint::Checkpoint(const fs::path& folder) : folder_(folder) {
  fs::path single = folder / "model.safetensors", index = folder / "model.safetensors.index.json";
  std::vector<fs::path> shards;
  if (fs::exists(index)) {
    const nlohmann::json j = read_json_file(index);
    if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object())
      throw std::runtime_error(fmt::format("{}: needs a \"weight_map\" object", index.string()));
    const JsonValue weight_map = JsonValue(j, index.string())["weight_map"];
    std::map<std::string, const SafetensorsFile*> by_file;
    for (const auto& [tensor, shard] : j["weight_map"].items()) {
      const std::string shard_name = weight_map.entry(tensor).get<std::string>();
      if (!by_file.count(shard_name)) {
        files_.push_back(std::make_unique<SafetensorsFile>(folder / shard_name));
        by_file[shard_name] = files_.back().get();
      }
      if (!by_file[shard_name]->contains(tensor))
        throw std::runtime_error(fmt::format("{} maps '{}' to {}, which does not hold it", index.string(), tensor, shard_name));
      where_[tensor] = by_file[shard_name];
    }
  } else if (fs::exists(single)) {
    files_.push_back(std::make_unique<SafetensorsFile>(single));
    for (const auto& name : files_.back()->names()) where_[name] = files_.back().get();
  } else {
    throw std::runtime_error(fmt::format("{} has neither model.safetensors nor model.safetensors.index.json", folder.string()));
  }
}

torch::Tensor Checkpoint::get(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end()) throw std::runtime_error(fmt::format("checkpoint {} has no tensor '{}'", folder_.string(), name));
  return it->second->get(name);
}

const SafetensorsFile& Checkpoint::file_of(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end()) throw std::runtime_error(fmt::format("checkpoint {} has no tensor '{}'", folder_.string(), name));
  return *it->second;
}

std::vector<std::string> Checkpoint::names() const {
  std::vector<std::string> out;
  for (const auto& [name, f] : where_) out.push_back(name);
  return out;
}

void write_safetensors(const fs::path& file, const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  nlohmann::json header = nlohmann::json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::size_t offset = 0;
  for (const auto& [name, t] : tensors) {
    std::size_t bytes = t.numel() * t.element_size();
    header[name] = {{"dtype", dtype_name(t.scalar_type())}, {"shape", t.sizes().vec()}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // keeps tensor data 8-byte aligned
  char size[8];
  for (int i = 0; i < 8; ++i) size[i] = static_cast<char>((static_cast<std::uint64_t>(text.size()) >> (8 * i)) & 0xff);
  // Streamed tensor by tensor into a temporary file renamed over `file` (as write_file_atomic does), so a
  // checkpoint of many GB is never held twice in memory; a progress line for the large ones.
  if (file.has_parent_path()) fs::create_directories(file.parent_path());
  fs::path tmp = file;
  tmp += fmt::format(".tmp.{}", ::getpid());
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f) throw std::runtime_error(fmt::format("cannot write {}", tmp.string()));
  std::optional<Progress> progress;
  if (offset >= (std::size_t{1} << 30)) progress.emplace(Progress::bytes("writing " + file.filename().string(), static_cast<long long>(offset)));
  bool ok = std::fwrite(size, 1, 8, f) == 8 && std::fwrite(text.data(), 1, text.size(), f) == text.size();
  for (const auto& [name, t] : tensors) {
    if (!ok) break;
    torch::Tensor c = t.detach().to(torch::kCPU).contiguous();
    const std::size_t bytes = c.numel() * c.element_size();
    ok = std::fwrite(c.data_ptr(), 1, bytes, f) == bytes;
    if (progress) progress->advance_steps(static_cast<long long>(bytes));
  }
  ok = std::fflush(f) == 0 && ok;
  ok = ::fsync(fileno(f)) == 0 && ok;
  ok = std::fclose(f) == 0 && ok;
  if (!ok) {
    fs::remove(tmp);
    throw std::runtime_error(fmt::format("writing {} failed (disk full?)", file.string()));
  }
  fs::rename(tmp, file);
}

}  // namespace moelab
