// Safetensors files: a memory-mapped reader that checks the header strictly (offsets inside the file,
// no overlaps, byte counts that match shapes without overflow) and an atomic writer. Errors name the
// file and tensor.
#pragma once

#include <nlohmann/json.hpp>
#include <torch/types.h>

#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace moelab {

class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::filesystem::path& file);

  const std::filesystem::path& path() const { return path_; }
  std::vector<std::string> names() const;
  bool contains(const std::string& name) const { return entries_.count(name) > 0; }
  // A CPU tensor over the mapped bytes (copy-on-write: writing never touches the file).
  torch::Tensor get(const std::string& name) const;
  // From the header, without touching the data; throw naming the file when the tensor is absent.
  torch::ScalarType dtype(const std::string& name) const { return entry(name).dtype; }
  const std::vector<int64_t>& shape(const std::string& name) const { return entry(name).shape; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  struct Entry {
    torch::ScalarType dtype;
    std::vector<int64_t> shape;
    std::size_t begin, end;
  };
  struct Mapping;
  const Entry& entry(const std::string& name) const;

  std::filesystem::path path_;
  std::shared_ptr<Mapping> mapping_;
  const std::uint8_t* data_ = nullptr;
  std::map<std::string, Entry> entries_;
  std::map<std::string, std::string> metadata_;
};

// A model folder's weights: model.safetensors, or shards listed by model.safetensors.index.json.
class Checkpoint {
 public:
  explicit Checkpoint(const std::filesystem::path& folder);
  bool contains(const std::string& name) const { return where_.count(name) > 0; }
  torch::Tensor get(const std::string& name) const;  // throws naming the folder and the tensor
  std::vector<std::string> names() const;
  // The file that holds `name` (its shape and dtype, without reading data).
  const SafetensorsFile& file_of(const std::string& name) const;

 private:
  std::filesystem::path folder_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, const SafetensorsFile*> where_;
};

// Writes tensors (any device; contiguous copies are made) with string metadata, atomically.
void write_safetensors(const std::filesystem::path& file, const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace moelab
