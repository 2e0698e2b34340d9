// hashed_bow embeddings and the neighbours stage's graph (self excluded, kernel weights).
#include "moelab/moelab.h"
#include "moelab/lib/files.h"
#include "test_run.h"

namespace {

TEST(HashedBow, UnitRowsAndIdenticalTextsAreIdentical) {
  moelab::test::TempDir dir;
  auto run = moelab::test::start_run(dir, "stages = []\n[e]\nplugin = \"hashed_bow\"\ndim = 64\n");
  auto e = run->make<moelab::Embedder>("e")->embed({"Plants need light.", "plants NEED light", "Copper conducts electricity"});
  ASSERT_EQ(e.sizes(), (std::vector<int64_t>{3, 64}));
  EXPECT_TRUE(torch::allclose(e.norm(2, 1), torch::ones(3)));
  EXPECT_NEAR(e[0].dot(e[1]).item<double>(), 1.0, 1e-6);
  EXPECT_LT(e[0].dot(e[2]).item<double>(), 0.5);
}

TEST(Neighbours, ExcludesSelfAndNormalizesKernelWeights) {
  moelab::test::TempDir dir;
  dir.write("d.jsonl", R"({"id": "a", "t": "red apple fruit"}
{"id": "b", "t": "red apple fruit pie"}
{"id": "c", "t": "copper wire electricity"}
{"id": "d", "t": "copper wire current electricity"}
)");
  auto run = moelab::test::start_run(dir, R"(stages = ["n"]
[d]
plugin = "jsonl"
path = "d.jsonl"
text_field = "t"
[e]
plugin = "hashed_bow"
[n]
plugin = "neighbours"
dataset = "d"
embedder = "e"
k = 2
sigma = 0.4
)");
  nlohmann::json summary;
  run->make<moelab::Stage>("n")->run(dir.path(), summary);
  auto graph = nlohmann::json::parse(moelab::read_file(dir.path() / "neighbours.json"));
  for (const auto& [id, row] : graph.items()) {
    ASSERT_EQ(row.size(), 2u);
    double total = 0;
    for (const auto& n : row) {
      EXPECT_NE(n["id"], id);
      total += n["weight"].get<double>();
    }
    EXPECT_NEAR(total, 1.0, 1e-6);
    // The closer neighbour gets the larger weight: W ~ exp(-(1 - cos)^2 / (2 sigma^2)).
    double c0 = row[0]["cos"], c1 = row[1]["cos"];
    double expected_ratio = std::exp(-(1 - c0) * (1 - c0) / 0.32) / std::exp(-(1 - c1) * (1 - c1) / 0.32);
    EXPECT_NEAR(row[0]["weight"].get<double>() / row[1]["weight"].get<double>(), expected_ratio, 1e-4);
  }
  EXPECT_EQ(graph["a"][0]["id"], "b");
  EXPECT_EQ(graph["c"][0]["id"], "d");
  EXPECT_EQ(summary["samples"], 4);
}

}  // namespace
