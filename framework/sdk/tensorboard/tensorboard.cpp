#include "moelab/lib/tensorboard.h"

#include "event.pb.h"

#include <boost/crc.hpp>
#include <fmt/format.h>

#include <unistd.h>

#include <algorithm>
#include <cfloat>
#include <chrono>
#include <cmath>
#include <ctime>
#include <fstream>
#include <stdexcept>

namespace moelab {

namespace fs = std::filesystem;
namespace pb = moelab::tensorboard;

namespace {

double wall_time() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

std::string host_name() {
  char name[256] = {};
  if (gethostname(name, sizeof name - 1) != 0 || name[0] == '\0') return "localhost";
  return name;
}

// A name TensorBoard's loader picks up ("tfevents" in it), new in `dir`.
fs::path new_event_file(const fs::path& dir) {
  const std::string base = fmt::format("events.out.tfevents.{}.{}", static_cast<long long>(std::time(nullptr)), host_name());
  fs::path file = dir / base;
  for (int n = 2; fs::exists(file); ++n) file = dir / fmt::format("{}.{}", base, n);
  return file;
}

void put_le(std::string& out, std::uint64_t value, int bytes) {
  for (int i = 0; i < bytes; ++i) out.push_back(static_cast<char>((value >> (8 * i)) & 0xff));
}

// Numbers of `value` under `prefix`, objects joined with "/", at most `depth` levels down.
void numbers_of(const nlohmann::json& value, const std::string& prefix, int depth, std::vector<std::pair<std::string, double>>& out) {
  if (value.is_number()) {
    out.emplace_back(prefix, value.get<double>());
  } else if (value.is_object() && depth > 0) {
    for (const auto& [key, item] : value.items()) numbers_of(item, prefix + "/" + key, depth - 1, out);
  }
}

int png_colorspace(const std::string& bytes) {
  if (bytes.size() < 26) return 3;
  switch (static_cast<unsigned char>(bytes[25])) {  // IHDR colour type
    case 0: return 1;                                // grayscale
    case 4: return 2;                                // grayscale + alpha
    case 6: return 4;                                // RGBA
    default: return 3;                               // RGB, palette
  }
}

}  // namespace

struct TensorBoardWriter::Stream {
  std::ofstream out;
};

const std::vector<double>& tensorboard_bucket_limits() {
  static const std::vector<double> limits = [] {
    std::vector<double> positive;
    for (double v = 1e-12; v < 1e20; v *= 1.1) positive.push_back(v);
    std::vector<double> all;
    all.reserve(2 * positive.size() + 3);
    all.push_back(-DBL_MAX);
    for (auto it = positive.rbegin(); it != positive.rend(); ++it) all.push_back(-*it);
    all.push_back(0.0);
    all.insert(all.end(), positive.begin(), positive.end());
    all.push_back(DBL_MAX);
    return all;
  }();
  return limits;
}

std::uint32_t masked_crc32c(const void* data, std::size_t size) {
  boost::crc_optimal<32, 0x1EDC6F41, 0xFFFFFFFF, 0xFFFFFFFF, true, true> crc;
  crc.process_bytes(data, size);
  const std::uint32_t c = crc.checksum();
  return ((c >> 15) | (c << 17)) + 0xa282ead8u;
}

std::pair<int, int> png_size(const std::string& bytes, const std::string& what) {
  static const char kSignature[] = "\x89PNG\r\n\x1a\n";
  if (bytes.size() < 24 || bytes.compare(0, 8, kSignature, 8) != 0 || bytes.compare(12, 4, "IHDR") != 0)
    throw std::runtime_error(fmt::format("{}: not a PNG image (expected the PNG signature and an IHDR chunk in the first 24 bytes, "
                                         "found {} bytes)", what, bytes.size()));
  auto be32 = [&](std::size_t at) {
    std::uint32_t v = 0;
    for (std::size_t i = 0; i < 4; ++i) v = (v << 8) | static_cast<unsigned char>(bytes[at + i]);
    return static_cast<int>(v);
  };
  return {be32(16), be32(20)};
}

TensorBoardWriter::TensorBoardWriter(const fs::path& dir) : stream_(std::make_unique<Stream>()) {
  fs::create_directories(dir);
  file_ = new_event_file(dir);
  stream_->out.open(file_, std::ios::binary);
  if (!stream_->out) throw std::runtime_error(fmt::format("cannot create the TensorBoard event file {}", file_.string()));
  pb::Event event;
  event.set_wall_time(wall_time());
  event.set_file_version("brain.Event:2");
  write_event(event.SerializeAsString());
}

TensorBoardWriter::~TensorBoardWriter() = default;

void TensorBoardWriter::write_event(const std::string& data) {
  std::string record;
  record.reserve(data.size() + 16);
  put_le(record, data.size(), 8);
  put_le(record, masked_crc32c(record.data(), 8), 4);
  record += data;
  put_le(record, masked_crc32c(data.data(), data.size()), 4);
  std::lock_guard<std::mutex> lock(mutex_);
  stream_->out.write(record.data(), static_cast<std::streamsize>(record.size()));
  stream_->out.flush();
  if (!stream_->out) throw std::runtime_error(fmt::format("cannot write to the TensorBoard event file {} (disk full?)", file_.string()));
}

void TensorBoardWriter::add_scalar(const std::string& tag, double value, std::int64_t step) {
  pb::Event event;
  event.set_wall_time(wall_time());
  event.set_step(step);
  pb::Summary::Value* v = event.mutable_summary()->add_value();
  v->set_tag(tag);
  v->set_simple_value(static_cast<float>(value));
  write_event(event.SerializeAsString());
}

void TensorBoardWriter::add_histogram(const std::string& tag, const std::vector<double>& values, std::int64_t step) {
  const std::vector<double>& limits = tensorboard_bucket_limits();
  std::vector<double> counts(limits.size(), 0.0);
  double min = DBL_MAX, max = -DBL_MAX, num = 0, sum = 0, sum_squares = 0;
  for (double x : values) {
    if (!std::isfinite(x)) continue;
    min = std::min(min, x);
    max = std::max(max, x);
    num += 1;
    sum += x;
    sum_squares += x * x;
    counts[static_cast<std::size_t>(std::upper_bound(limits.begin(), limits.end(), x) - limits.begin())] += 1;
  }
  if (num == 0) return;
  pb::Event event;
  event.set_wall_time(wall_time());
  event.set_step(step);
  pb::Summary::Value* v = event.mutable_summary()->add_value();
  v->set_tag(tag);
  pb::HistogramProto* h = v->mutable_histo();
  h->set_min(min);
  h->set_max(max);
  h->set_num(num);
  h->set_sum(sum);
  h->set_sum_squares(sum_squares);
  // TensorFlow's Histogram::EncodeToProto(preserve_zero_buckets = false): a run of empty buckets is one
  // bucket up to the run's last limit.
  for (std::size_t i = 0; i < limits.size();) {
    double end = limits[i], count = counts[i];
    ++i;
    if (count <= 0.0)
      while (i < limits.size() && counts[i] <= 0.0) end = limits[i++];
    h->add_bucket_limit(end);
    h->add_bucket(count);
  }
  write_event(event.SerializeAsString());
}

void TensorBoardWriter::add_image(const std::string& tag, const std::string& png_bytes, int width, int height, std::int64_t step) {
  pb::Event event;
  event.set_wall_time(wall_time());
  event.set_step(step);
  pb::Summary::Value* v = event.mutable_summary()->add_value();
  v->set_tag(tag);
  pb::Summary::Image* image = v->mutable_image();
  image->set_height(height);
  image->set_width(width);
  image->set_colorspace(png_colorspace(png_bytes));
  image->set_encoded_image_string(png_bytes);
  write_event(event.SerializeAsString());
}

void TensorBoardWriter::add_metrics_row(const nlohmann::json& row) {
  if (!row.is_object()) return;
  std::string prefix = row.contains("stage") && row["stage"].is_string() ? row["stage"].get<std::string>() : "metrics";
  for (const auto& [key, value] : row.items())
    if (value.is_string() && key != "stage" && key != "time") prefix += "/" + value.get<std::string>();
  const nlohmann::json* step_field = row.contains("step") ? &row["step"] : row.contains("epoch") ? &row["epoch"] : nullptr;
  const bool has_step = step_field && step_field->is_number_integer();
  std::vector<std::pair<std::string, double>> numbers;
  for (const auto& [key, value] : row.items()) {
    if (key == "attempt" || key == "step" || (key == "epoch" && has_step && !row.contains("step"))) continue;
    numbers_of(value, prefix + "/" + key, 8, numbers);
  }
  for (const auto& [tag, value] : numbers) {
    std::int64_t step = 0;
    if (has_step) {
      step = step_field->get<std::int64_t>();
    } else {
      std::lock_guard<std::mutex> lock(mutex_);
      step = counters_[tag]++;
    }
    add_scalar(tag, value, step);
  }
}

void TensorBoardWriter::add_stage_summary(const std::string& stage, const nlohmann::json& summary, std::int64_t step) {
  std::vector<std::pair<std::string, double>> numbers;
  if (summary.is_object())
    for (const auto& [key, value] : summary.items()) numbers_of(value, stage + "/summary/" + key, 3, numbers);
  for (const auto& [tag, value] : numbers) add_scalar(tag, value, step);
}

}  // namespace moelab
