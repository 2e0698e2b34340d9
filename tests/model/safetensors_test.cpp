// Safetensors: round trips of every dtype, shards, and clear errors (never a crash) on damaged files.
#include "moelab/lib/files.h"
#include "moelab/lib/safetensors.h"
#include "test_run.h"

#include <gmock/gmock.h>

using moelab::test::error_of;
using testing::HasSubstr;

namespace {

namespace fs = std::filesystem;

std::string header_file(const std::string& header, std::size_t data_bytes) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((header.size() >> (8 * i)) & 0xff);
  return out + header + std::string(data_bytes, '\0');
}

TEST(Safetensors, RoundTripsEveryDtypeWithMetadata) {
  moelab::test::TempDir dir;
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  for (auto dtype : {torch::kFloat64, torch::kFloat32, torch::kFloat16, torch::kBFloat16, torch::kInt64, torch::kInt32,
                     torch::kInt16, torch::kInt8, torch::kUInt8, torch::kBool})
    tensors.emplace_back(std::string(c10::toString(dtype)), (torch::arange(12) % 5).reshape({3, 4}).to(dtype));
  tensors.emplace_back("empty", torch::zeros({0, 3}));
  moelab::write_safetensors(dir.path() / "t.safetensors", tensors, {{"purpose", "test"}});
  moelab::SafetensorsFile file(dir.path() / "t.safetensors");
  EXPECT_EQ(file.metadata().at("purpose"), "test");
  for (const auto& [name, t] : tensors) {
    torch::Tensor back = file.get(name);
    EXPECT_EQ(back.scalar_type(), t.scalar_type()) << name;
    EXPECT_TRUE(torch::equal(back, t)) << name;
  }
  file.get("Float").add_(1);  // copy-on-write: the file is untouched
  EXPECT_TRUE(torch::equal(moelab::SafetensorsFile(dir.path() / "t.safetensors").get("Float"), tensors[1].second));
}

TEST(Safetensors, ShardedCheckpointsFollowTheIndex) {
  moelab::test::TempDir dir;
  moelab::write_safetensors(dir.path() / "model-00001-of-00002.safetensors", {{"a", torch::ones({2})}});
  moelab::write_safetensors(dir.path() / "model-00002-of-00002.safetensors", {{"b", torch::zeros({3})}});
  dir.write("model.safetensors.index.json",
            R"({"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}})");
  moelab::Checkpoint ckpt(dir.path());
  EXPECT_EQ(ckpt.get("b").numel(), 3);
  EXPECT_THAT(error_of([&] { ckpt.get("c"); }), HasSubstr("has no tensor 'c'"));
  dir.write("model.safetensors.index.json", R"({"weight_map": {"a": "model-00002-of-00002.safetensors"}})");
  EXPECT_THAT(error_of([&] { moelab::Checkpoint again(dir.path()); }), HasSubstr("maps 'a' to model-00002-of-00002.safetensors"));
  dir.write("model.safetensors.index.json", R"({"weight_map": {"a": 1}})");
  EXPECT_THAT(error_of([&] { moelab::Checkpoint again(dir.path()); }),
              HasSubstr("model.safetensors.index.json: weight_map[\"a\"]: expected a string, found number 1"));
  EXPECT_EQ(ckpt.file_of("b").shape("b"), std::vector<int64_t>({3}));
  EXPECT_EQ(ckpt.file_of("a").dtype("a"), torch::kFloat32);
}

TEST(Safetensors, DamagedFilesGiveErrorsNamingFileAndTensor) {
  moelab::test::TempDir dir;
  moelab::write_safetensors(dir.path() / "good.safetensors", {{"w", torch::ones({4, 4})}});
  std::string good = moelab::read_file(dir.path() / "good.safetensors");
  auto check = [&](const std::string& name, const std::string& content, const std::string& message) {
    fs::path file = dir.write(name, content);
    std::string error = error_of([&] { moelab::SafetensorsFile f(file); });
    EXPECT_THAT(error, HasSubstr(file.string())) << name;
    EXPECT_THAT(error, HasSubstr(message)) << name;
  };
  check("truncated.safetensors", good.substr(0, good.size() - 10), "tensor 'w': data_offsets [0, 64] lie outside");
  check("tiny.safetensors", "abc", "too short");
  check("huge_header.safetensors", std::string("\xff\xff\xff\x00\x00\x00\x00\x00", 8) + "{}", "does not fit in the file");
  check("not_json.safetensors", header_file("{nope", 0), "header is not JSON");
  check("bad_dtype.safetensors", header_file(R"({"w": {"dtype": "F4", "shape": [2], "data_offsets": [0, 1]}})", 1),
        "tensor 'w': dtype 'F4' is not supported");
  check("size_mismatch.safetensors", header_file(R"({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 12]}})", 12),
        "tensor 'w': holds 12 bytes, but F32 [2,2] needs 16");
  check("overlap.safetensors",
        header_file(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})", 12),
        "tensors 'a' and 'b' overlap");
  check("negative.safetensors", header_file(R"({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}})", 4), "negative");
  check("missing_fields.safetensors", header_file(R"({"w": {"dtype": "F32"}})", 0), "needs dtype, shape and data_offsets");
  // Shape products that wrap around 2^64 (here to 0 bytes) and dimensions beyond int64 are refused, not mapped.
  check("overflow.safetensors", header_file(R"({"w": {"dtype": "F32", "shape": [4294967296, 4294967296, 16], "data_offsets": [0, 0]}})", 0),
        "tensor 'w': F32 [4294967296,4294967296,16] holds more bytes than 2^63");
  check("huge_dim.safetensors", header_file(R"({"w": {"dtype": "U8", "shape": [18446744073709551615], "data_offsets": [0, 0]}})", 0),
        "tensor 'w': shape [18446744073709551615] has a dimension beyond 2^63");
  check("deep.safetensors", header_file(std::string(100000, '[') + std::string(100000, ']'), 0), "nesting deeper than 8 levels");
  EXPECT_THAT(error_of([&] { moelab::SafetensorsFile f(dir.path() / "absent.safetensors"); }), HasSubstr("cannot open"));
}

}  // namespace
