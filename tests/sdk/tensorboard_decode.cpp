#include "tensorboard_decode.h"

#include "event.pb.h"

#include <fstream>
#include <sstream>
#include <stdexcept>

namespace moelab::test {

namespace {

std::uint32_t masked(std::uint32_t crc) { return ((crc >> 15) | (crc << 17)) + 0xa282ead8u; }

std::uint64_t le(const std::string& bytes, std::size_t at, int n) {
  std::uint64_t v = 0;
  for (int i = n - 1; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(bytes[at + static_cast<std::size_t>(i)]);
  return v;
}

DecodedValue decode(const moelab::tensorboard::Summary::Value& v) {
  DecodedValue out;
  out.tag = v.tag();
  if (v.has_histo()) {
    const auto& h = v.histo();
    out.kind = DecodedValue::Kind::histogram;
    out.histo = {h.min(), h.max(), h.num(), h.sum(), h.sum_squares(), {h.bucket_limit().begin(), h.bucket_limit().end()},
                 {h.bucket().begin(), h.bucket().end()}};
  } else if (v.has_image()) {
    out.kind = DecodedValue::Kind::image;
    out.image = {v.image().width(), v.image().height(), v.image().colorspace(), v.image().encoded_image_string()};
  } else if (v.value_case() == moelab::tensorboard::Summary::Value::kSimpleValue) {
    out.kind = DecodedValue::Kind::scalar;
    out.simple_value = v.simple_value();
  }
  return out;
}

}  // namespace

std::uint32_t crc32c(const std::string& bytes) {
  std::uint32_t crc = 0xFFFFFFFFu;
  for (unsigned char b : bytes) {
    crc ^= b;
    for (int i = 0; i < 8; ++i) crc = (crc >> 1) ^ (0x82F63B78u & (0u - (crc & 1u)));
  }
  return ~crc;
}

std::vector<DecodedEvent> read_events(const std::filesystem::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open " + file.string());
  std::ostringstream buffer;
  buffer << in.rdbuf();
  const std::string bytes = buffer.str();
  std::vector<DecodedEvent> events;
  std::size_t at = 0;
  for (int record = 0; at < bytes.size(); ++record) {
    const std::string where = "record " + std::to_string(record);
    if (bytes.size() - at < 12) throw std::runtime_error(where + ": truncated header");
    const std::uint64_t length = le(bytes, at, 8);
    if (le(bytes, at + 8, 4) != masked(crc32c(bytes.substr(at, 8)))) throw std::runtime_error(where + ": length CRC mismatch");
    if (bytes.size() - at - 12 < length + 4) throw std::runtime_error(where + ": truncated data");
    const std::string data = bytes.substr(at + 12, length);
    if (le(bytes, at + 12 + length, 4) != masked(crc32c(data))) throw std::runtime_error(where + ": data CRC mismatch");
    moelab::tensorboard::Event event;
    if (!event.ParseFromString(data)) throw std::runtime_error(where + ": not an Event");
    DecodedEvent out;
    out.wall_time = event.wall_time();
    out.step = event.step();
    out.file_version = event.file_version();
    out.has_summary = event.has_summary();
    for (const auto& v : event.summary().value()) out.values.push_back(decode(v));
    events.push_back(std::move(out));
    at += 12 + length + 4;
  }
  return events;
}

}  // namespace moelab::test
