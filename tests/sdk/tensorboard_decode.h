// TensorBoard event files read back record by record with the SDK's compiled protobuf, each record's two
// TFRecord CRCs checked by a CRC32C of its own (not the writer's). Built in a library of its own that sees
// no LibTorch headers: a LibTorch distribution may ship protobuf headers of another version than protoc's.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace moelab::test {

struct DecodedHistogram {
  double min = 0, max = 0, num = 0, sum = 0, sum_squares = 0;
  std::vector<double> bucket_limit, bucket;
};

struct DecodedImage {
  int width = 0, height = 0, colorspace = 0;
  std::string png;
};

struct DecodedValue {
  enum class Kind { none, scalar, histogram, image };
  std::string tag;
  Kind kind = Kind::none;
  float simple_value = 0;
  DecodedHistogram histo;
  DecodedImage image;
};

struct DecodedEvent {
  double wall_time = 0;
  std::int64_t step = 0;
  std::string file_version;  // "" unless the event is a file_version record
  bool has_summary = false;
  std::vector<DecodedValue> values;
};

// CRC32C (Castagnoli), bit by bit.
std::uint32_t crc32c(const std::string& bytes);

// Every event of `file`; throws "record N: length CRC mismatch" / "data CRC mismatch" / "truncated ..." /
// "not an Event".
std::vector<DecodedEvent> read_events(const std::filesystem::path& file);

}  // namespace moelab::test
