// The collect stage: the routing it streams to chunks equals the router logits the model core returns
// for the same tokens; the token cap holds; the RoMA export reads back; and configs/routing_study.toml
// runs end to end into a report whose figures are PNG files.
#include "moe_model.h"
#include "moelab/moelab.h"
#include "moelab/lib/files.h"
#include "moelab/lib/quant.h"
#include "moelab/lib/quantized_checkpoint.h"
#include "moelab/lib/safetensors.h"
#include "moelab/lib/routing_results.h"
#include "test_run.h"

#include <fmt/format.h>
#include <gmock/gmock.h>

#include <fstream>
#include <regex>

using moelab::test::TempDir;
using testing::HasSubstr;

namespace {

namespace fs = std::filesystem;

const fs::path kTiny = fs::path(MOELAB_BINARY_DIR) / "models" / "tiny-olmoe";

std::map<std::string, torch::Tensor> read_chunks(const fs::path& dir) {
  std::vector<fs::path> files;
  for (const auto& entry : fs::directory_iterator(dir)) files.push_back(entry.path());
  std::sort(files.begin(), files.end());
  std::map<std::string, std::vector<torch::Tensor>> parts;
  for (const auto& f : files) {
    moelab::SafetensorsFile chunk(f);
    for (const auto& name : chunk.names()) parts[name].push_back(chunk.get(name).clone());
  }
  std::map<std::string, torch::Tensor> out;
  for (auto& [name, p] : parts) out[name] = torch::cat(p);
  return out;
}

TEST(Collect, ChunksMatchTheModelsRouterLogitsAndRespectTheTokenCap) {
  TempDir dir;
  const std::string first = "The cat sat on the mat and looked at the birds in the garden.";
  const std::string second = "Two plus two is four, and four plus four is eight.";
  dir.write("a.txt", first + "\n\n" + second + "\n");
  dir.write("b.txt", "x = 1\n\ny = 2\n");
  auto run = moelab::test::start_run(dir, "stages = []\n[model]\npath = \"" + kTiny.string() + "\"\n"
                                          "[a]\nplugin = \"text\"\npath = \"a.txt\"\n[b]\nplugin = \"text\"\npath = \"b.txt\"\n"
                                          "[study]\nplugin = \"collect\"\nsets = [\"a\", \"b\"]\nfull_probs = true\nprecision = \"float32\"\n"
                                          "max_len = 8\nbatch_tokens = 20\nchunk_tokens = 10\nmax_tokens_per_set = 12\n");
  fs::path out = dir.path() / "study_out";
  fs::create_directories(out);
  nlohmann::json summary;
  run->make<moelab::Stage>("study")->run(out, summary);
  auto chunks = read_chunks(out / "chunks" / "primary");
  EXPECT_GT(summary["collection"]["primary"]["chunks"].get<long long>(), 1);

  const moelab::Tokenizer& tokenizer = run->tokenizer();
  std::vector<std::int64_t> a = tokenizer.encode(first);
  ASSERT_GT(a.size(), 12u);  // set a is capped inside its first document; set b's two short documents fit
  const auto b = static_cast<long long>(tokenizer.encode("x = 1").size() + tokenizer.encode("y = 2").size());
  ASSERT_LE(b, 12);
  const long long total = 12 + b;
  ASSERT_EQ(chunks["topk_ids"].size(0), total);
  EXPECT_EQ(chunks["set_ids"].narrow(0, 0, 12).sum().item<int64_t>(), 0);
  EXPECT_EQ(chunks["set_ids"].narrow(0, 12, total - 12).min().item<int64_t>(), 1);

  // The first 8 tokens of set a are one window (set a's windows go shortest first: it follows the 4-token
  // one): the same forward on a fresh model gives the same routing.
  auto model = moelab::load_model(kTiny, torch::kCPU, torch::kFloat32);
  torch::NoGradGuard no_grad;
  std::vector<std::int64_t> window(a.begin(), a.begin() + 8);
  model->forward(torch::tensor(window).unsqueeze(0), {});
  const long long at = 4;
  EXPECT_TRUE(torch::equal(chunks["token_ids"].narrow(0, 0, 4).to(torch::kInt64), torch::tensor(std::vector<std::int64_t>(a.begin() + 8, a.begin() + 12))));
  EXPECT_TRUE(torch::equal(chunks["token_ids"].narrow(0, at, 8).to(torch::kInt64), torch::tensor(window)));
  const auto& routing = model->routing();
  ASSERT_EQ(static_cast<long long>(routing.size()), chunks["probs"].size(1));
  for (std::size_t l = 0; l < routing.size(); ++l) {
    torch::Tensor expected = routing[l].logits.softmax(-1);
    torch::Tensor stored = chunks["probs"].narrow(0, at, 8).select(1, static_cast<long long>(l));
    EXPECT_TRUE(torch::allclose(stored, expected, 1e-5, 1e-6)) << "layer " << l;
    EXPECT_TRUE(torch::equal(chunks["topk_ids"].narrow(0, at, 8).select(1, static_cast<long long>(l)).to(torch::kInt64), routing[l].topk_ids));
    torch::Tensor entropy = -(expected * expected.log()).sum(-1);
    EXPECT_TRUE(torch::allclose(chunks["entropy"].narrow(0, at, 8).select(1, static_cast<long long>(l)), entropy, 1e-5, 1e-6));
  }
  // RoMA export: one entry per document that ended inside the cap (set b's two), readable by RoMA's reader.
  auto results = moelab::read_routing_results(out / "routing_results.json");
  EXPECT_EQ(results.size(), 2u);
  for (const auto& r : results) EXPECT_EQ(r.routing.size(), model->info().moe_layers.size());
}

TEST(Collect, ComparesFullAndQuantizedExpertsOnTheSameTokensAndRestoresTheModel) {
  TempDir dir;
  dir.write("a.txt", "The cat sat on the mat and looked at the birds in the garden.\n\nTwo plus two is four.\n");
  auto run = moelab::test::start_run(dir, "stages = []\n[model]\npath = \"" + kTiny.string() + "\"\n"
                                          "[a]\nplugin = \"text\"\npath = \"a.txt\"\n[diff]\nplugin = \"routing_diff\"\n"
                                          "[study]\nplugin = \"collect\"\nsets = [\"a\"]\nanalyzers = [\"diff\"]\ncompare_with = \"q.safetensors\"\n");
  moelab::Model& model = run->model();
  // A quantized checkpoint of every expert matrix in INT3 (round to nearest), made through the SDK.
  moelab::QuantizedCheckpoint checkpoint;
  const moelab::QuantSpec spec{moelab::QuantFormat::int3, 32};
  for (int layer : model.info().moe_layers) {
    moelab::ExpertWeights ex = model.expert_weights(layer);
    const torch::Tensor* stacks[3] = {&ex.gate, &ex.up, &ex.down};
    for (int p = 0; p < 3; ++p)
      for (int64_t e = 0; e < stacks[p]->size(0); ++e) {
        torch::Tensor w = (*stacks[p])[e];
        moelab::QuantGrids grids = moelab::fit_grids(w, spec);
        checkpoint.matrices.push_back({fmt::format("{}{}.{}.weight", ex.prefix, e, ex.names[p]), moelab::pack(moelab::fake_quantize(w, grids, spec), grids, spec)});
      }
  }
  moelab::save_quantized_checkpoint(dir.path() / "q.safetensors", model, checkpoint);
  std::map<std::string, torch::Tensor> before;
  for (auto& [name, t] : model.named_weights()) before[name] = t.clone();
  fs::path out = dir.path() / "study_out";
  fs::create_directories(out);
  nlohmann::json summary;
  run->make<moelab::Stage>("study")->run(out, summary);
  EXPECT_EQ(summary["collection"]["primary"]["tokens"], summary["collection"]["compare"]["tokens"]);
  EXPECT_GT(summary["analyses"]["diff"]["changed_topk_share"].get<double>(), 0.0);
  for (auto& [name, t] : model.named_weights()) EXPECT_TRUE(torch::equal(t, before[name])) << name;
}

TEST(RoutingStudy, ConfigRunsEndToEndIntoAReportWithPngFigures) {
  TempDir dir;
  auto r = moelab::test::run_command(moelab::test::runexp_binary() + " " + MOELAB_SOURCE_DIR + "/configs/routing_study.toml --set run_dir=" +
                                     dir.path().string());
  ASSERT_EQ(r.status, 0) << r.output;
  fs::path run = fs::directory_iterator(dir.path() / "routing_study")->path();
  fs::path study = run / "study";
  std::string html = moelab::read_file(study / "index.html");
  std::regex image("<img src=\"([^\"]+)\"");
  int images = 0;
  for (auto it = std::sregex_iterator(html.begin(), html.end(), image); it != std::sregex_iterator(); ++it, ++images) {
    fs::path png = study / (*it)[1].str();
    ASSERT_TRUE(fs::exists(png)) << png;
    std::ifstream in(png, std::ios::binary);
    char signature[4];
    in.read(signature, 4);
    EXPECT_EQ(std::string(signature, 4), "\x89PNG") << png;
  }
  EXPECT_GE(images, 10);
  auto summary = nlohmann::json::parse(moelab::read_file(run / "summary.json"));
  const auto& analyses = summary["stages"]["study"]["analyses"];
  for (const char* analyzer : {"usage", "entropy", "coactivation", "geometry", "alignment", "specialization", "diff"})
    EXPECT_TRUE(analyses.contains(analyzer)) << analyzer;
  // The finetuned routers change some routing; the compare pass covers the same tokens.
  EXPECT_GT(analyses["diff"]["changed_topk_share"].get<double>(), 0.0);
  EXPECT_EQ(summary["stages"]["study"]["collection"]["primary"]["tokens"], summary["stages"]["study"]["collection"]["compare"]["tokens"]);
  EXPECT_TRUE(fs::exists(study / "usage" / "expert_usage.csv"));
  const std::string metrics = moelab::read_file(run / "metrics.jsonl");
  EXPECT_THAT(metrics, HasSubstr("\"analyzer\":\"specialization\""));
  // A line per chunk written (to watch a long run live) and one at the end of each pass.
  EXPECT_THAT(metrics, HasSubstr("\"chunks\":1,\"stage\":\"study\",\"state\":\"primary\""));
  EXPECT_THAT(metrics, HasSubstr("\"chunks\":2,\"stage\":\"study\",\"state\":\"primary\""));
}

}  // namespace
