// sbert: a tiny random sentence-transformers encoder (tests/fixtures/sbert, made by make_fixture.py
// with sentence-transformers): WordPiece ids equal HF tokenizers', embeddings equal sentence-transformers'.
#include "moelab/moelab.h"
#include "moelab/lib/files.h"
#include "moelab/lib/safetensors.h"
#include "test_run.h"

#include <gmock/gmock.h>

namespace {

namespace fs = std::filesystem;
const fs::path kFixture = fs::path(MOELAB_SOURCE_DIR) / "tests" / "fixtures" / "sbert";

std::vector<std::string> texts() { return nlohmann::json::parse(moelab::read_file(kFixture / "texts.json")).get<std::vector<std::string>>(); }

TEST(WordPiece, IdsEqualHfTokenizersOnTheCorpus) {
  auto tokenizer = moelab::Tokenizer::from_file(kFixture / "tokenizer.json");
  moelab::SafetensorsFile expected(kFixture / "expected.safetensors");
  torch::Tensor ids = expected.get("ids");
  auto all = texts();
  ASSERT_EQ(ids.size(0), static_cast<long long>(all.size()));
  for (std::size_t i = 0; i < all.size(); ++i) {
    torch::Tensor row = ids[static_cast<long long>(i)];
    row = row.masked_select(row.ge(0));
    std::vector<std::int64_t> want(row.data_ptr<std::int64_t>(), row.data_ptr<std::int64_t>() + row.numel());
    EXPECT_EQ(tokenizer->encode(all[i]), want) << "text " << i << ": " << all[i];
  }
}

TEST(Sbert, EmbeddingsEqualSentenceTransformers) {
  moelab::test::TempDir dir;
  auto run = moelab::test::start_run(dir, "stages = []\n[e]\nplugin = \"sbert\"\npath = \"" + kFixture.string() + "\"\nbatch_size = 5\n");
  torch::Tensor got = run->make<moelab::Embedder>("e")->embed(texts());
  torch::Tensor want = moelab::SafetensorsFile(kFixture / "expected.safetensors").get("embeddings");
  ASSERT_EQ(got.sizes(), want.sizes());
  EXPECT_LT((got - want).abs().max().item<double>(), 1e-5);
  EXPECT_TRUE(torch::allclose(got.norm(2, 1), torch::ones(got.size(0)), 1e-5, 1e-5));
}

TEST(Sbert, MissingFolderIsNamed) {
  moelab::test::TempDir dir;
  auto run = moelab::test::start_run(dir, "stages = []\n[e]\nplugin = \"sbert\"\npath = \"nowhere\"\n");
  EXPECT_THAT(moelab::test::error_of([&] { run->make<moelab::Embedder>("e"); }), testing::HasSubstr("nowhere"));
}

}  // namespace
