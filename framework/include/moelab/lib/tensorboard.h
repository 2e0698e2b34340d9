// TensorBoard event files: scalars, histograms and PNG images in the format TensorBoard reads
// (`tensorboard --logdir`). Each record is a TensorBoard Event protobuf framed as TFRecord (length,
// masked CRC32C of the length, data, masked CRC32C of the data); the file's first event carries
// file_version "brain.Event:2". Every add_* call is written and flushed before it returns, so a crash
// keeps what was logged. Calls from several threads are serialized.
#pragma once

#include <nlohmann/json.hpp>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace moelab {

class TensorBoardWriter {
 public:
  // Creates `dir` and a new events.out.tfevents.<unix seconds>.<hostname> in it (".2", ".3", ... appended
  // when that name is taken), and writes the file_version event.
  explicit TensorBoardWriter(const std::filesystem::path& dir);
  ~TensorBoardWriter();
  TensorBoardWriter(const TensorBoardWriter&) = delete;
  TensorBoardWriter& operator=(const TensorBoardWriter&) = delete;

  const std::filesystem::path& file() const { return file_; }

  // Stored as float (TensorBoard's simple_value).
  void add_scalar(const std::string& tag, double value, std::int64_t step);
  // min, max, count, sum, sum of squares and counts in TensorBoard's default buckets
  // (tensorboard_bucket_limits), with runs of empty buckets merged as TensorFlow writes them.
  // Non-finite values are left out; no finite value: nothing is written.
  void add_histogram(const std::string& tag, const std::vector<double>& values, std::int64_t step);
  // A PNG file's bytes; width and height as its header says (png_size).
  void add_image(const std::string& tag, const std::string& png_bytes, int width, int height, std::int64_t step);

  // One metrics.jsonl row as scalars. Numbers become "<stage>/<key>", keys of nested objects joined with
  // "/" (arrays and booleans are left out); string values other than "stage" and "time" name a subgroup,
  // "<stage>/<value>/<key>" (an analyzer's id, a sampler's name). The step is the row's "step", else its
  // "epoch", else the count of earlier values of that tag. "attempt" is bookkeeping, not a scalar.
  void add_metrics_row(const nlohmann::json& row);
  // A finished stage's summary.json numbers as "<stage>/summary/<key path>" at `step` (objects joined
  // with "/" down to four levels; arrays, strings and booleans left out).
  void add_stage_summary(const std::string& stage, const nlohmann::json& summary, std::int64_t step);

 private:
  void write_event(const std::string& serialized_event);

  std::filesystem::path file_;
  std::mutex mutex_;
  struct Stream;
  std::unique_ptr<Stream> stream_;
  std::map<std::string, std::int64_t> counters_;  // add_metrics_row: values so far per tag without a step
};

// TensorBoard's default histogram bucket limits (TensorFlow's histogram.cc): -DBL_MAX, -1e20 ..
// -1e-12 and 1e-12 .. 1e20 in steps of x1.1, 0, DBL_MAX; a value counts in the first bucket whose
// limit is greater than it.
const std::vector<double>& tensorboard_bucket_limits();

// TFRecord's masked CRC32C: rotate the CRC32C (Castagnoli) of the bytes right by 15 bits, add 0xa282ead8.
std::uint32_t masked_crc32c(const void* data, std::size_t size);

// Width and height of a PNG from its IHDR chunk; throws naming `what` when the bytes are not a PNG.
std::pair<int, int> png_size(const std::string& bytes, const std::string& what);

}  // namespace moelab
