// TensorBoard event files: every record read back with the SDK's compiled Event protobuf and both of its
// TFRecord CRCs checked by a CRC32C of the test's own (tensorboard_decode.h), values and steps equal to what
// was logged, a flipped byte caught by the CRCs, and a tiny run whose <run>/tb/ holds its training losses,
// expert-load histograms, stage summary and the figures of a reused stage.
// With MOELAB_TB_CHECK_DIR set, the end-to-end run is copied there with tb_expected.json for
// benchmarks/tb_check.py (TensorBoard's own reader, on the GPU box).
#include "moelab/lib/files.h"
#include "moelab/lib/tensorboard.h"
#include "tensorboard_decode.h"
#include "test_run.h"
#include "tiny_run.h"

#include <boost/crc.hpp>
#include <gmock/gmock.h>
#include <nlohmann/json.hpp>

#include <cfloat>
#include <cmath>
#include <cstdlib>
#include <map>
#include <numeric>
#include <sstream>

namespace {

namespace fs = std::filesystem;
using moelab::test::crc32c;
using moelab::test::DecodedEvent;
using moelab::test::DecodedHistogram;
using moelab::test::DecodedImage;
using moelab::test::DecodedValue;
using moelab::test::error_of;
using moelab::test::read_events;
using moelab::test::TempDir;
using testing::HasSubstr;

const std::string kData = std::string(MOELAB_SOURCE_DIR) + "/configs/data";

std::uint32_t masked(std::uint32_t crc) { return ((crc >> 15) | (crc << 17)) + 0xa282ead8u; }

std::uint64_t le(const std::string& bytes, std::size_t at, int n) {
  std::uint64_t v = 0;
  for (int i = n - 1; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(bytes[at + static_cast<std::size_t>(i)]);
  return v;
}

fs::path only_event_file(const fs::path& dir) {
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().filename().string().rfind("events.out.tfevents.", 0) == 0) files.push_back(e.path());
  EXPECT_EQ(files.size(), 1u) << dir;
  return files.empty() ? fs::path() : files[0];
}

// A real w x h RGB PNG (stored zlib block), gradient pixels.
std::string tiny_png(int w, int h) {
  auto be32 = [](std::uint32_t v) {
    return std::string{static_cast<char>(v >> 24), static_cast<char>(v >> 16), static_cast<char>(v >> 8), static_cast<char>(v)};
  };
  auto chunk = [&](const std::string& type, const std::string& data) {
    boost::crc_32_type crc;
    crc.process_bytes((type + data).data(), type.size() + data.size());
    return be32(static_cast<std::uint32_t>(data.size())) + type + data + be32(crc.checksum());
  };
  std::string raw;
  for (int y = 0; y < h; ++y) {
    raw.push_back(0);  // filter: none
    for (int x = 0; x < w; ++x) raw += std::string{static_cast<char>(40 * x), static_cast<char>(60 * y), static_cast<char>(200)};
  }
  std::uint32_t a = 1, b = 0;
  for (unsigned char c : raw) a = (a + c) % 65521, b = (b + a) % 65521;
  const auto n = static_cast<std::uint16_t>(raw.size());
  std::string zlib = {0x78, 0x01, 0x01, static_cast<char>(n & 0xff), static_cast<char>(n >> 8), static_cast<char>(~n & 0xff),
                      static_cast<char>((~n >> 8) & 0xff)};
  zlib += raw + be32((b << 16) | a);
  const std::string ihdr = be32(static_cast<std::uint32_t>(w)) + be32(static_cast<std::uint32_t>(h)) + std::string{8, 2, 0, 0, 0};
  return std::string("\x89PNG\r\n\x1a\n", 8) + chunk("IHDR", ihdr) + chunk("IDAT", zlib) + chunk("IEND", "");
}

// Checks a histogram against the values it was made of: summary numbers, every bucket's count equal to
// the values in [previous limit, limit), and each non-empty bucket one of TensorBoard's default buckets.
void expect_histogram_of(const DecodedHistogram& h, const std::vector<double>& values) {
  double min = DBL_MAX, max = -DBL_MAX, sum = 0, squares = 0;
  for (double v : values) min = std::min(min, v), max = std::max(max, v), sum += v, squares += v * v;
  EXPECT_EQ(h.min, min);
  EXPECT_EQ(h.max, max);
  EXPECT_EQ(h.num, static_cast<double>(values.size()));
  EXPECT_DOUBLE_EQ(h.sum, sum);
  EXPECT_DOUBLE_EQ(h.sum_squares, squares);
  ASSERT_EQ(h.bucket_limit.size(), h.bucket.size());
  ASSERT_FALSE(h.bucket.empty());
  EXPECT_EQ(h.bucket_limit.back(), DBL_MAX);
  const std::vector<double>& limits = moelab::tensorboard_bucket_limits();
  double total = 0;
  for (std::size_t i = 0; i < h.bucket.size(); ++i) {
    const double lower = i == 0 ? -DBL_MAX : h.bucket_limit[i - 1], upper = h.bucket_limit[i];
    if (i > 0) EXPECT_LT(lower, upper);
    double in_range = 0;
    for (double v : values) in_range += (v >= lower && v < upper) || (i == 0 && v == -DBL_MAX) ? 1 : 0;
    EXPECT_EQ(h.bucket[i], in_range) << "bucket [" << lower << ", " << upper << ")";
    total += h.bucket[i];
    if (h.bucket[i] > 0 && i > 0) {
      auto at = std::lower_bound(limits.begin(), limits.end(), upper);
      ASSERT_TRUE(at != limits.begin() && at != limits.end() && *at == upper) << upper;
      EXPECT_EQ(*(at - 1), lower) << "a non-empty bucket is one default bucket";
    }
  }
  EXPECT_EQ(total, static_cast<double>(values.size()));
}

TEST(TensorBoard, MaskedCrc32cMatchesTheKnownCheckValue) {
  EXPECT_EQ(crc32c("123456789"), 0xE3069283u);  // CRC-32C check value
  const std::string text = "123456789";
  EXPECT_EQ(moelab::masked_crc32c(text.data(), text.size()), masked(0xE3069283u));
}

TEST(TensorBoard, DefaultBucketsAreTensorFlows) {
  const std::vector<double>& limits = moelab::tensorboard_bucket_limits();
  ASSERT_EQ(limits.size(), 1551u);  // 774 positive limits 1e-12 * 1.1^k below 1e20, their negatives, 0, +-DBL_MAX
  EXPECT_EQ(limits.front(), -DBL_MAX);
  EXPECT_EQ(limits.back(), DBL_MAX);
  EXPECT_EQ(limits[775], 0.0);
  EXPECT_EQ(limits[776], 1e-12);
  EXPECT_DOUBLE_EQ(limits[777], 1.1e-12);
  EXPECT_EQ(limits[774], -1e-12);
  EXPECT_LT(limits[1549], 1e20);
  EXPECT_GT(limits[1549] * 1.1, 1e20);
  EXPECT_TRUE(std::is_sorted(limits.begin(), limits.end()));
}

TEST(TensorBoard, ScalarsHistogramsAndImagesDecodeWithTheirStepsAndValues) {
  TempDir dir;
  const std::vector<double> values = {0.5, 0.5, -1.0, 3.25, 0.0, 1e-13, 7e5, -2.5e-3};
  const std::string png = tiny_png(5, 3);
  fs::path file;
  {
    moelab::TensorBoardWriter tb(dir.path() / "tb");
    file = tb.file();
    EXPECT_EQ(file.parent_path(), dir.path() / "tb");
    EXPECT_THAT(file.filename().string(), testing::StartsWith("events.out.tfevents."));
    tb.add_scalar("train/loss", 1.25, 0);
    tb.add_scalar("train/loss", 0.8125, 7);
    tb.add_histogram("train/expert_load/layer3", values, 7);
    tb.add_histogram("train/empty", {std::nan("")}, 8);  // nothing finite: nothing written
    const auto [w, h] = moelab::png_size(png, "tiny.png");
    EXPECT_EQ(w, 5);
    EXPECT_EQ(h, 3);
    tb.add_image("collect/usage/load", png, w, h, 9);
    // Every call is on disk when it returns (no buffering until the writer closes).
    EXPECT_EQ(read_events(file).size(), 5u);
  }
  std::vector<DecodedEvent> events = read_events(file);
  ASSERT_EQ(events.size(), 5u);
  EXPECT_EQ(events[0].file_version, "brain.Event:2");
  EXPECT_GT(events[0].wall_time, 1.7e9);
  for (std::size_t i = 1; i < events.size(); ++i) {
    ASSERT_TRUE(events[i].has_summary);
    ASSERT_EQ(events[i].values.size(), 1u);
    EXPECT_GE(events[i].wall_time, events[i - 1].wall_time);
  }
  EXPECT_EQ(events[1].step, 0);
  EXPECT_EQ(events[1].values[0].tag, "train/loss");
  EXPECT_EQ(events[1].values[0].simple_value, 1.25f);
  EXPECT_EQ(events[2].step, 7);
  EXPECT_EQ(events[2].values[0].simple_value, 0.8125f);
  const DecodedValue& histo = events[3].values[0];
  EXPECT_EQ(events[3].step, 7);
  EXPECT_EQ(histo.tag, "train/expert_load/layer3");
  ASSERT_EQ(histo.kind, DecodedValue::Kind::histogram);
  expect_histogram_of(histo.histo, values);
  const DecodedValue& image = events[4].values[0];
  EXPECT_EQ(events[4].step, 9);
  EXPECT_EQ(image.tag, "collect/usage/load");
  ASSERT_EQ(image.kind, DecodedValue::Kind::image);
  EXPECT_EQ(image.image.width, 5);
  EXPECT_EQ(image.image.height, 3);
  EXPECT_EQ(image.image.colorspace, 3);
  EXPECT_EQ(image.image.png, png);
}

TEST(TensorBoard, AFlippedByteIsACrcFailure) {
  TempDir dir;
  fs::path file;
  {
    moelab::TensorBoardWriter tb(dir.path());
    file = tb.file();
    tb.add_scalar("a", 1.0, 0);
    tb.add_scalar("a", 2.0, 1);
  }
  const std::string good = moelab::read_file(file);
  ASSERT_EQ(read_events(file).size(), 3u);
  const std::size_t second = 12 + le(good, 0, 8) + 4;  // where the second record starts
  auto flipped = [&](std::size_t at) {
    std::string bad = good;
    bad[at] = static_cast<char>(bad[at] ^ 0x10);
    moelab::write_file_atomic(file, bad);
    return error_of([&] { read_events(file); });
  };
  EXPECT_THAT(flipped(second + 12 + 3), HasSubstr("record 1: data CRC mismatch"));
  EXPECT_THAT(flipped(second + 1), HasSubstr("record 1: length CRC mismatch"));
  EXPECT_THAT(flipped(good.size() - 1), HasSubstr("record 2: data CRC mismatch"));
}

TEST(TensorBoard, MetricsRowsAndStageSummariesBecomeScalars) {
  TempDir dir;
  fs::path file;
  {
    moelab::TensorBoardWriter tb(dir.path());
    file = tb.file();
    tb.add_metrics_row({{"stage", "ft"}, {"epoch", 0}, {"step", 3}, {"attempt", 1}, {"lr", 0.5}, {"loss", 1.5}, {"skipped", true},
                        {"time", "2026-01-01T00:00:00"}});
    tb.add_metrics_row({{"stage", "ft"}, {"epoch", 2}, {"loss", 1.0}});  // epoch means: the epoch is the step
    for (double e : {2.0, 1.5})
      tb.add_metrics_row({{"stage", "collect"}, {"analyzer", "usage"}, {"numbers", {{"entropy", e}, {"list", {1, 2}}}}});
    tb.add_stage_summary("ft", {{"accuracy", 0.75}, {"steps", 8}, {"checkpoint", "x"}, {"epochs", {1, 2}},
                                {"relative_router_change", {{"14", 0.25}}}},
                         0);
  }
  std::vector<std::tuple<std::string, std::int64_t, float>> got;
  for (const DecodedEvent& e : read_events(file))
    if (e.has_summary) got.emplace_back(e.values[0].tag, e.step, e.values[0].simple_value);
  const std::vector<std::tuple<std::string, std::int64_t, float>> expected = {
      {"ft/epoch", 3, 0.0f}, {"ft/loss", 3, 1.5f}, {"ft/lr", 3, 0.5f}, {"ft/loss", 2, 1.0f},
      {"collect/usage/numbers/entropy", 0, 2.0f}, {"collect/usage/numbers/entropy", 1, 1.5f},
      {"ft/summary/accuracy", 0, 0.75f}, {"ft/summary/relative_router_change/14", 0, 0.25f}, {"ft/summary/steps", 0, 8.0f}};
  EXPECT_EQ(got, expected);
}

TEST(TensorBoard, PngSizeRefusesWhatIsNotAPng) {
  EXPECT_THAT(error_of([] { moelab::png_size("GIF89a....................", "fig.png"); }),
              HasSubstr("fig.png: not a PNG image (expected the PNG signature and an IHDR chunk"));
}

std::vector<nlohmann::json> metrics_rows(const fs::path& run_dir) {
  std::vector<nlohmann::json> rows;
  std::istringstream lines(moelab::read_file(run_dir / "metrics.jsonl"));
  for (std::string line; std::getline(lines, line);) rows.push_back(nlohmann::json::parse(line));
  return rows;
}

std::string finetune_toml(const std::string& extra = "") {
  return "stages = [\"train\"]\n" + extra + "[data]\nplugin = \"jsonl\"\npath = \"" + kData +
         "/arith_train.jsonl\"\n[task]\nplugin = \"task_ce\"\n"
         "[train]\nplugin = \"finetune\"\ndataset = \"data\"\nobjective = \"task\"\nlast_layers = 2\nepochs = 2\nbatch_size = 16\n"
         "histogram_every = 3\n";
}

TEST(TensorBoard, ATinyRunLogsItsLossesHistogramsSummaryAndReusedFigures) {
  TempDir dir;
  auto run = moelab::test::start_run(dir, finetune_toml());
  run->run_stages();
  const fs::path run_dir = run->run_dir();
  // What a stage or analyzer gives the context directly, as the GPU check compares it.
  const std::vector<double> probe = {0.125, 0.25, 0.25, 0.375, 1e-3, 0.0};
  run->record_histogram("probe/values", probe, 5);
  const fs::path png = run_dir / "probe.png";
  moelab::write_file_atomic(png, tiny_png(4, 2));
  run->record_image("probe/figure", png, 6);
  EXPECT_THAT(error_of([&] { run->record_image("probe/bad", run_dir / "metrics.jsonl", 0); }), HasSubstr("metrics.jsonl: not a PNG image"));

  const std::vector<DecodedEvent> events = read_events(only_event_file(run_dir / "tb"));
  ASSERT_FALSE(events.empty());
  EXPECT_EQ(events[0].file_version, "brain.Event:2");
  std::map<std::string, std::map<std::int64_t, float>> scalars;
  std::map<std::string, std::map<std::int64_t, DecodedHistogram>> histograms;
  std::map<std::string, DecodedImage> images;
  for (const DecodedEvent& e : events)
    for (const DecodedValue& v : e.values) {
      if (v.kind == DecodedValue::Kind::histogram) histograms[v.tag][e.step] = v.histo;
      else if (v.kind == DecodedValue::Kind::image) images[v.tag] = v.image;
      else if (v.kind == DecodedValue::Kind::scalar) scalars[v.tag][e.step] = v.simple_value;
    }
  int steps = 0;
  for (const nlohmann::json& row : metrics_rows(run_dir)) {
    if (!row.contains("step")) continue;
    ++steps;
    const std::int64_t step = row["step"].get<std::int64_t>();
    for (const char* key : {"loss", "lr"}) {
      ASSERT_TRUE(scalars[std::string("train/") + key].count(step)) << key << " at step " << step;
      EXPECT_EQ(scalars[std::string("train/") + key][step], static_cast<float>(row[key].get<double>())) << key << " at step " << step;
    }
  }
  EXPECT_EQ(steps, 8);  // 64 questions, batch 16, 2 epochs
  EXPECT_EQ(scalars["train/loss"].size(), 8u);
  const auto summary = nlohmann::json::parse(moelab::read_file(run_dir / "train" / "summary.json"));
  EXPECT_EQ(scalars["train/summary/steps"][0], 8.0f);
  EXPECT_EQ(scalars["train/summary/tokens_per_second"][0], static_cast<float>(summary["tokens_per_second"].get<double>()));

  const moelab::ModelInfo& info = run->model().info();
  for (int layer : info.moe_layers) {
    // Steps 0 and 3 (epoch 0) route every layer; epoch 1 (step 6) runs from the first trained layer on (cache_hidden).
    const std::string load = "train/expert_load/layer" + std::to_string(layer);
    const bool trained = layer >= info.moe_layers[info.moe_layers.size() - 2];
    ASSERT_EQ(histograms[load].size(), trained ? 3u : 2u) << load;
    for (const auto& [step, h] : histograms[load]) {
      EXPECT_TRUE(step == 0 || step == 3 || (trained && step == 6)) << load << " at step " << step;
      EXPECT_EQ(h.num, static_cast<double>(info.num_experts)) << load;  // one share per expert
      EXPECT_NEAR(h.sum, 1.0, 1e-9) << load;                            // the shares of all routed slots
    }
    const DecodedHistogram& probs = histograms["train/router_probs/layer" + std::to_string(layer)][0];
    EXPECT_GE(probs.min, 0.0);
    EXPECT_LE(probs.max, 1.0);
    EXPECT_NEAR(probs.sum * info.num_experts, probs.num, 1e-3 * probs.num);  // each token's probabilities sum to 1
  }
  ASSERT_EQ(histograms["probe/values"].size(), 1u);
  expect_histogram_of(histograms["probe/values"][5], probe);
  ASSERT_TRUE(images.count("probe/figure"));
  EXPECT_EQ(images["probe/figure"].png, moelab::read_file(png));
  EXPECT_EQ(images["probe/figure"].width, 4);

  nlohmann::json expected = {{"histograms", {{{"tag", "probe/values"}, {"step", 5}, {"values", probe}}}},
                             {"images", {{{"tag", "probe/figure"}, {"step", 6}, {"file", "probe.png"}, {"width", 4}, {"height", 2}}}}};
  moelab::write_file_atomic(run_dir / "tb_expected.json", expected.dump(2) + "\n");
  if (const char* keep = std::getenv("MOELAB_TB_CHECK_DIR")) {
    fs::remove_all(keep);
    fs::copy(run_dir, keep, fs::copy_options::recursive);
  }

  // A figure in the finished stage's folder reaches TensorBoard with the stage, here when a new run (another
  // config) reuses the stage: its metrics rows, summary and figures go to the new run's tb/.
  const std::string figure = tiny_png(3, 3);
  moelab::write_file_atomic(run_dir / "train" / "plots" / "loss.png", figure);
  run.reset();
  moelab::ExperimentRun second(moelab::test::resolve_text(dir, "run_dir = \"runs\"\n" + finetune_toml("log_level = \"warn\"\n")),
                               moelab::test::built_plugins(), true);
  ASSERT_NE(second.run_dir(), run_dir);
  second.run_stages();
  std::map<std::string, int> tags;
  std::string logged_figure;
  for (const DecodedEvent& e : read_events(only_event_file(second.run_dir() / "tb")))
    for (const DecodedValue& v : e.values) {
      ++tags[v.tag];
      if (v.tag == "train/plots/loss") logged_figure = v.image.png;
    }
  EXPECT_EQ(tags["train/loss"], 8);
  EXPECT_EQ(tags["train/summary/steps"], 1);
  EXPECT_EQ(logged_figure, figure);
}

TEST(TensorBoard, RouterTrainingLogsProbabilityAndLoadHistogramsEveryNSteps) {
  TempDir dir;
  moelab::test::TinyRun run(moelab::test::resolve_text(dir, finetune_toml(), {"train.epochs=1", "train.histogram_every=2"}),
                            dir.path() / "run", torch::kFloat32);
  run.run_stages();
  const moelab::ModelInfo& info = run.model().info();
  std::map<std::string, std::vector<std::int64_t>> steps;
  for (const auto& h : run.histograms()) steps[h.tag].push_back(h.step);
  EXPECT_EQ(steps.size(), 2 * info.moe_layers.size());
  for (int layer : info.moe_layers)
    for (const char* what : {"router_probs", "expert_load"})
      EXPECT_EQ(steps["train/" + std::string(what) + "/layer" + std::to_string(layer)], (std::vector<std::int64_t>{0, 2}))
          << what << " layer " << layer;
  // The probabilities: E per token, each token's summing to 1; the load: E shares summing to 1.
  const auto& probs = run.histograms()[0];
  ASSERT_EQ(probs.tag, "train/router_probs/layer" + std::to_string(info.moe_layers.front()));
  const auto experts = static_cast<std::size_t>(info.num_experts);
  ASSERT_EQ(probs.values.size() % experts, 0u);
  ASSERT_GT(probs.values.size(), 0u);
  for (std::size_t t = 0; t < probs.values.size(); t += experts)
    EXPECT_NEAR(std::accumulate(probs.values.begin() + t, probs.values.begin() + t + experts, 0.0), 1.0, 1e-5) << "token " << t / experts;
  const auto& load = run.histograms()[1];
  ASSERT_EQ(load.tag, "train/expert_load/layer" + std::to_string(info.moe_layers.front()));
  ASSERT_EQ(load.values.size(), experts);
  EXPECT_NEAR(std::accumulate(load.values.begin(), load.values.end(), 0.0), 1.0, 1e-9);

  TempDir off;
  moelab::test::TinyRun quiet(moelab::test::resolve_text(off, finetune_toml(), {"train.epochs=1", "train.histogram_every=0"}),
                              off.path() / "run", torch::kFloat32);
  quiet.run_stages();
  EXPECT_TRUE(quiet.histograms().empty());
}

TEST(TensorBoard, TensorboardFalseWritesNoEventFiles) {
  TempDir dir;
  auto run = moelab::test::start_run(dir, "tensorboard = false\nstages = []\n");
  run->record_metrics({{"stage", "x"}, {"loss", 1.0}});
  run->record_histogram("x/h", {1.0}, 0);
  EXPECT_FALSE(fs::exists(run->run_dir() / "tb"));
  auto on = moelab::test::start_run(dir, "stages = []\n");
  EXPECT_TRUE(fs::exists(on->run_dir() / "tb"));
}

}  // namespace
