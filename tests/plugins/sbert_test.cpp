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

// config.json is checked against the tensors before any text is embedded (#14): a config naming fewer
// layers than stored, a head count that does not divide the width, a vocabulary size or width that the
// embedding does not have all end in an error naming the key or the tensor.
TEST(Sbert, ConfigIsCheckedAgainstTheWeights) {
  auto error_with = [](const std::string& key, const nlohmann::json& value) {
    moelab::test::TempDir dir;
    const fs::path folder = dir.path() / "sbert";
    fs::copy(kFixture, folder, fs::copy_options::recursive);
    nlohmann::json config = nlohmann::json::parse(moelab::read_file(folder / "config.json"));
    config[key] = value;
    moelab::write_file_atomic(folder / "config.json", config.dump());
    auto run = moelab::test::start_run(dir, "stages = []\n[e]\nplugin = \"sbert\"\npath = \"" + folder.string() + "\"\n");
    return moelab::test::error_of([&] { run->make<moelab::Embedder>("e"); });
  };
  using testing::AllOf;
  using testing::HasSubstr;
  EXPECT_THAT(error_with("num_hidden_layers", 1), AllOf(HasSubstr("num_hidden_layers: is 1"), HasSubstr("encoder.layer.1.")));
  EXPECT_THAT(error_with("num_hidden_layers", 3), HasSubstr("lacks encoder.layer.2."));
  EXPECT_THAT(error_with("num_hidden_layers", 0), HasSubstr("num_hidden_layers: must be at least 1"));
  EXPECT_THAT(error_with("num_attention_heads", 0), HasSubstr("num_attention_heads: must be at least 1 and divide hidden_size 32"));
  EXPECT_THAT(error_with("num_attention_heads", 5), HasSubstr("num_attention_heads"));
  EXPECT_THAT(error_with("vocab_size", 600), AllOf(HasSubstr("vocab_size: is 600"), HasSubstr("has 700 rows")));
  EXPECT_THAT(error_with("hidden_size", 64), AllOf(HasSubstr("embeddings.word_embeddings.weight has shape [700, 32]"), HasSubstr("expects [700, 64]")));
  EXPECT_THAT(error_with("intermediate_size", 48), HasSubstr("encoder.layer.0.intermediate.dense.weight has shape [64, 32]"));
  EXPECT_THAT(error_with("max_position_embeddings", 4096), AllOf(HasSubstr("max_position_embeddings: is 4096"), HasSubstr("has 64 rows")));
  EXPECT_THAT(error_with("num_hidden_layers", "two"), HasSubstr("num_hidden_layers"));
}

}  // namespace
