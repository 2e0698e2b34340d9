// The collect stage's forward pipeline: many short documents fill forwards close to batch_tokens (a
// benchmark once ran forwards of max_len tokens instead), a batch_tokens below max_len is refused, the
// async path (side-stream copies, writer thread) writes the same bytes as the synchronous one, and a
// chunk that cannot be written fails the stage naming the file.
#include "moelab/moelab.h"
#include "moelab/lib/files.h"
#include "test_run.h"

#include <ATen/Context.h>
#include <fmt/format.h>
#include <gmock/gmock.h>
#include <torch/cuda.h>

#include <cmath>

using moelab::test::TempDir;
using testing::HasSubstr;

namespace {

namespace fs = std::filesystem;

const fs::path kTiny = fs::path(MOELAB_BINARY_DIR) / "models" / "tiny-olmoe";

// `documents` paragraphs of 2-40 words, seeded, so their token counts spread as a text set's do.
std::string short_documents(int documents) {
  const char* words[] = {"the", "cat", "sat", "on", "a", "mat", "two", "plus", "four", "is", "eight", "code", "x", "=", "1;", "return",
                         "river", "bank", "of", "light", "and", "then", "proof", "let", "n", "be", "prime", "while", "(i", "<", "10)"};
  const auto vocabulary = static_cast<unsigned long long>(std::size(words));
  unsigned long long state = 7;
  auto next = [&] { return (state = state * 6364136223846793005ULL + 1442695040888963407ULL) >> 33; };
  std::string text;
  for (int d = 0; d < documents; ++d) {
    const unsigned long long length = 2 + next() % 39;
    for (unsigned long long w = 0; w < length; ++w) text += std::string(w ? " " : "") + words[next() % vocabulary];
    text += "\n\n";
  }
  return text;
}

std::string study_toml(const std::string& keys, const std::string& model_keys = "") {
  return "stages = []\n[model]\npath = \"" + kTiny.string() + "\"\n" + model_keys + "[a]\nplugin = \"text\"\npath = \"a.txt\"\n" +
         "[b]\nplugin = \"text\"\npath = \"b.txt\"\n[study]\nplugin = \"collect\"\nsets = [\"a\", \"b\"]\n" + keys;
}

nlohmann::json run_study(const TempDir& dir, const std::string& toml, const std::string& out_name) {
  auto run = moelab::test::start_run(dir, toml);
  const fs::path out = dir.path() / out_name;
  fs::create_directories(out);
  nlohmann::json summary;
  run->make<moelab::Stage>("study")->run(out, summary);
  return summary;
}

// Every file under `a` has a file of the same bytes under `b`, and the other way round.
void expect_same_files(const fs::path& a, const fs::path& b) {
  std::vector<std::string> names_a, names_b;
  for (const auto& e : fs::directory_iterator(a)) names_a.push_back(e.path().filename().string());
  for (const auto& e : fs::directory_iterator(b)) names_b.push_back(e.path().filename().string());
  std::sort(names_a.begin(), names_a.end());
  std::sort(names_b.begin(), names_b.end());
  ASSERT_EQ(names_a, names_b);
  ASSERT_GT(names_a.size(), 2u);
  for (const auto& name : names_a) EXPECT_TRUE(moelab::read_file(a / name) == moelab::read_file(b / name)) << name;
}

TEST(CollectPipeline, ManyShortDocumentsFillForwardsCloseToBatchTokens) {
  TempDir dir;
  dir.write("a.txt", short_documents(300));
  dir.write("b.txt", short_documents(200));
  const long long batch_tokens = 512, max_len = 64;
  nlohmann::json summary = run_study(dir, study_toml(fmt::format("max_len = {}\nbatch_tokens = {}\nmax_tokens_per_set = 0\n", max_len, batch_tokens)),
                                     "out");
  const nlohmann::json& c = summary["collection"]["primary"];
  const auto tokens = c["tokens"].get<long long>();
  ASSERT_GT(tokens, 20 * batch_tokens);  // enough documents that all but the last forward could be full
  const auto forwards = c["forwards"].get<long long>();
  EXPECT_EQ(c["batch_tokens"].get<long long>(), batch_tokens);
  // Forwards of max_len tokens (the regression) would need tokens / 64 of them; length-sorted rows leave
  // little padding, so the forwards hold close to batch_tokens real tokens.
  EXPECT_GE(c["mean_tokens_per_forward"].get<double>(), 0.85 * batch_tokens) << c.dump();
  EXPECT_LE(forwards, static_cast<long long>(std::ceil(tokens / (0.85 * batch_tokens))) + 1) << c.dump();
  EXPECT_NEAR(c["mean_tokens_per_forward"].get<double>(), static_cast<double>(tokens) / forwards, 1e-9);
  EXPECT_LT(c["padding_share"].get<double>(), 0.1) << c.dump();
  // Forward-only time next to the pass's, for a benchmark to report both.
  EXPECT_GT(c["forward_seconds"].get<double>(), 0.0);
  EXPECT_LE(c["forward_seconds"].get<double>(), c["seconds"].get<double>());
  EXPECT_GE(c["forward_tokens_per_second"].get<double>(), c["tokens_per_second"].get<double>());
}

TEST(CollectPipeline, BatchTokensBelowMaxLenIsRefusedNamingBothKeys) {
  TempDir dir;
  dir.write("a.txt", "one document\n");
  dir.write("b.txt", "another one\n");
  auto run = moelab::test::start_run(dir, study_toml("max_len = 2048\nbatch_tokens = 512\n"));
  try {
    run->make<moelab::Stage>("study");
    FAIL() << "batch_tokens below max_len was accepted";
  } catch (const std::exception& e) {
    EXPECT_THAT(e.what(), HasSubstr("batch_tokens"));
    EXPECT_THAT(e.what(), HasSubstr("max_len = 2048"));
  }
}

const std::string kRecordKeys = "max_len = 64\nbatch_tokens = 256\nchunk_tokens = 300\nfull_probs = true\nmax_tokens_per_set = 0\n";

TEST(CollectPipeline, AsyncWritesTheSameBytesAsTheSynchronousPath) {
  TempDir dir;
  dir.write("a.txt", short_documents(120));
  dir.write("b.txt", short_documents(80));
  nlohmann::json on = run_study(dir, study_toml(kRecordKeys + "async = true\nasync_queue = 2\n"), "on");
  nlohmann::json off = run_study(dir, study_toml(kRecordKeys + "async = false\n"), "off");
  EXPECT_TRUE(on["collection"]["primary"]["async"].get<bool>());
  EXPECT_FALSE(off["collection"]["primary"]["async"].get<bool>());
  EXPECT_EQ(on["collection"]["primary"]["chunks"], off["collection"]["primary"]["chunks"]);
  expect_same_files(dir.path() / "on" / "chunks" / "primary", dir.path() / "off" / "chunks" / "primary");
  EXPECT_TRUE(moelab::read_file(dir.path() / "on" / "routing_results.json") == moelab::read_file(dir.path() / "off" / "routing_results.json"));
}

TEST(CollectPipeline, AsyncOnCudaWritesTheSameBytesAsTheSynchronousPath) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  // Deterministic kernels (index_add_ in the expert combine), so two forwards of the same tokens agree bit for bit.
  const bool deterministic = at::globalContext().deterministicAlgorithms();
  at::globalContext().setDeterministicAlgorithms(true, /*warn_only=*/true);
  TempDir dir;
  dir.write("a.txt", short_documents(120));
  dir.write("b.txt", short_documents(80));
  const std::string cuda = "device = \"cuda\"\n";
  nlohmann::json on = run_study(dir, study_toml(kRecordKeys + "async = true\nasync_queue = 2\n", cuda), "on");
  nlohmann::json off = run_study(dir, study_toml(kRecordKeys + "async = false\n", cuda), "off");
  at::globalContext().setDeterministicAlgorithms(deterministic, false);
  expect_same_files(dir.path() / "on" / "chunks" / "primary", dir.path() / "off" / "chunks" / "primary");
  EXPECT_TRUE(moelab::read_file(dir.path() / "on" / "routing_results.json") == moelab::read_file(dir.path() / "off" / "routing_results.json"));
}

TEST(CollectPipeline, AChunkThatCannotBeWrittenFailsTheStageNamingTheFile) {
  for (const bool async : {true, false}) {
    TempDir dir;
    dir.write("a.txt", short_documents(120));
    dir.write("b.txt", short_documents(80));
    // A folder where the second chunk file goes: the rename onto it fails.
    const fs::path blocked = dir.path() / "out" / "chunks" / "primary" / "chunk_00001.safetensors";
    fs::create_directories(blocked / "taken");
    try {
      run_study(dir, study_toml(kRecordKeys + fmt::format("async = {}\n", async)), "out");
      ADD_FAILURE() << "async = " << async << ": the stage finished without its second chunk";
    } catch (const std::exception& e) {
      EXPECT_THAT(e.what(), HasSubstr(blocked.string())) << "async = " << async;
    }
  }
}

}  // namespace
