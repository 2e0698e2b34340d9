// lm-eval's loglikelihood scoring against tests/fixtures/loglik (made by make_loglik_fixture.py with
// transformers and HF tokenizers): request ids, logliks within 1e-4, is_greedy and acc / acc_norm
// predictions for GPT-NeoX, Llama-3, Qwen3 and SentencePiece (Llama 2) tokenizers; then the evaluate
// stage on the same questions in the HellaSwag, ARC and Winogrande forms.
#include "moe_model.h"
#include "moelab/moelab.h"
#include "moelab/lib/files.h"
#include "moelab/lib/loglik.h"
#include "test_run.h"

#include <gmock/gmock.h>

namespace {

namespace fs = std::filesystem;
using moelab::test::TempDir;
using nlohmann::json;

const fs::path kFixture = fs::path(MOELAB_SOURCE_DIR) / "tests" / "fixtures" / "loglik";

fs::path tokenizer_file(const std::string& name) {
  if (name == "gpt_neox") return fs::path(MOELAB_SOURCE_DIR) / "framework" / "model" / "tiny" / "tokenizer.json";
  return fs::path(MOELAB_TOKENIZER_DIR) / name / "tokenizer.json";
}

const json& fixture(const std::string& name) {
  static const json all = json::parse(moelab::read_file(kFixture / "expected.json"));
  return all.at("tokenizers").at(name);
}

std::vector<double> logliks_of(const json& doc, const std::vector<moelab::LoglikResult>& results) {
  std::vector<double> out;
  for (const auto& r : doc["requests"]) out.push_back(results.at(r.get<std::size_t>()).loglik);
  return out;
}

class LmEvalParity : public testing::TestWithParam<std::string> {};

TEST_P(LmEvalParity, RequestsLogliksAndPredictionsMatchTransformers) {
  const json& expected = fixture(GetParam());
  auto tokenizer = moelab::Tokenizer::from_file(tokenizer_file(GetParam()));
  auto model = moelab::load_model(kFixture / "model", torch::kCPU, torch::kFloat32);
  std::vector<moelab::LoglikRequest> requests;
  for (const auto& r : expected["requests"]) {
    requests.push_back(moelab::encode_pair(*tokenizer, r["context"].get<std::string>(), r["continuation"].get<std::string>()));
    EXPECT_EQ(requests.back().context, r["context_ids"].get<std::vector<std::int64_t>>()) << r["context"];
    EXPECT_EQ(requests.back().continuation, r["continuation_ids"].get<std::vector<std::int64_t>>()) << r["continuation"];
  }
  // Batches of 3 mix lengths (right padding); one request per forward must give the same numbers.
  const auto results = moelab::score_requests(*model, requests, 3, 256);
  const auto alone = moelab::score_requests(*model, requests, 1, 256);
  for (std::size_t i = 0; i < requests.size(); ++i) {
    const json& r = expected["requests"][i];
    EXPECT_NEAR(results[i].loglik, r["loglik"].get<double>(), 1e-4) << r["context"] << " | " << r["continuation"];
    EXPECT_EQ(results[i].is_greedy, r["is_greedy"].get<bool>()) << r["continuation"];
    EXPECT_NEAR(alone[i].loglik, results[i].loglik, 1e-5) << r["continuation"];
  }
  for (const auto& doc : expected["docs"]) {
    const std::vector<double> logliks = logliks_of(doc, results);
    EXPECT_EQ(moelab::acc_prediction(logliks), doc["acc_pred"].get<std::size_t>()) << doc["requests"];
    if (!doc.value("partial", false))
      EXPECT_EQ(moelab::acc_norm_prediction(logliks, doc["choices"].get<std::vector<std::string>>()), doc["acc_norm_pred"].get<std::size_t>())
          << doc["choices"];
  }
}

INSTANTIATE_TEST_SUITE_P(Tokenizers, LmEvalParity, testing::Values("gpt_neox", "llama3", "qwen3", "llama2"));

// add_bos_token encodes both texts with the tokenizer's special tokens: Llama 2's BOS leads the context
// and the continuation's ids stay the same.
TEST(Loglik, AddBosTokenPutsTheBosBeforeTheContextOnly) {
  const json& r = fixture("llama2")["requests"][4];  // context ending in a space, non-ASCII continuation
  auto tokenizer = moelab::Tokenizer::from_file(tokenizer_file("llama2"));
  auto request = moelab::encode_pair(*tokenizer, r["context"].get<std::string>(), r["continuation"].get<std::string>(), true);
  std::vector<std::int64_t> context = {1};
  for (const auto& id : r["context_ids"]) context.push_back(id.get<std::int64_t>());
  EXPECT_EQ(request.context, context);
  EXPECT_EQ(request.continuation, r["continuation_ids"].get<std::vector<std::int64_t>>());
}

// The model's own greedy tokens are greedy, and their loglik is the sum of each step's top log-probability.
TEST(Loglik, IsGreedyWhenTheContinuationIsTheArgmax) {
  auto model = moelab::load_model(kFixture / "model", torch::kCPU, torch::kFloat32);
  torch::NoGradGuard no_grad;
  std::vector<std::int64_t> ids = {100, 2000, 30000};
  double best = 0;
  for (int step = 0; step < 2; ++step) {
    torch::Tensor logp = model->forward(torch::tensor(ids).unsqueeze(0), {})[0][-1].log_softmax(-1);
    ids.push_back(logp.argmax().item<std::int64_t>());
    best += logp.max().item<double>();
  }
  moelab::LoglikRequest greedy{{100, 2000, 30000}, {ids[3], ids[4]}};
  moelab::LoglikRequest other{{100, 2000, 30000}, {ids[3], ids[4] + 1}};
  auto results = moelab::score_requests(*model, {greedy, other}, 2, 256);
  EXPECT_TRUE(results[0].is_greedy);
  EXPECT_NEAR(results[0].loglik, best, 1e-5);
  EXPECT_FALSE(results[1].is_greedy);
  // Truncation keeps the last max_length input tokens, as lm-eval does.
  auto truncated = moelab::score_requests(*model, {greedy}, 1, 2);
  torch::Tensor logp = model->forward(torch::tensor(std::vector<std::int64_t>{30000, ids[3]}).unsqueeze(0), {})[0].log_softmax(-1);
  EXPECT_NEAR(truncated[0].loglik, logp[0][ids[3]].item<double>() + logp[1][ids[4]].item<double>(), 1e-5);
}

TEST(Loglik, AccNormDividesByCharactersNotBytes) {
  // Per byte + 1 (the old rule) "日本" (6 bytes: -3 / 7) would beat "ab" (-2.5 / 3); per character (-3 / 2) it loses.
  EXPECT_EQ(moelab::acc_norm_prediction({-3.0, -2.5}, {"日本", "ab"}), 1u);
  EXPECT_EQ(moelab::acc_prediction({-3.0, -2.5, -2.5}), 1u);  // the first of equal scores, as numpy's argmax
}

// The evaluate stage on the fixture's questions, in dataset forms: predictions.json carries each
// choice's loglik and is_greedy, equal to transformers' within 1e-4, and lm-eval's predictions.
class EvaluateParity : public testing::TestWithParam<std::string> {};

TEST_P(EvaluateParity, PredictionsCarryTransformersLogliks) {
  TempDir dir;
  fs::create_directories(dir.path() / "model");
  for (const char* file : {"config.json", "model.safetensors"}) fs::copy_file(kFixture / "model" / file, dir.path() / "model" / file);
  fs::copy_file(tokenizer_file(GetParam()), dir.path() / "model" / "tokenizer.json");
  dir.write("mc.jsonl",
            R"({"id": "arc", "question": "Which gas do plants take in?", "choices": {"text": ["carbon dioxide", "oxygen", "helium", "neon"], "label": ["A", "B", "C", "D"]}, "answerKey": "A"})" "\n"
            R"({"id": "hs", "activity_label": "Roof shingle removal", "ctx_a": "A man is sitting on a roof.", "ctx_b": "he", "endings": ["starts pulling up roofing on a roof.", "is using wrap to wrap a pair of skis."], "label": "0"})" "\n");
  dir.write("wg.jsonl", R"({"sentence": "The trophy doesn't fit into the suitcase because the _ is too large.", "option1": "trophy", "option2": "suitcase", "answer": "1"})" "\n");
  const std::string head = "stages = []\n[model]\npath = \"" + (dir.path() / "model").string() + "\"\ndevice = \"cpu\"\n";
  const json& expected = fixture(GetParam());
  // (data file, scoring line, fixture docs in file order)
  for (const auto& [file, scoring, docs] : std::vector<std::tuple<std::string, std::string, std::vector<int>>>{
           {"mc.jsonl", "scoring = \"loglik\"\n", {0, 3}}, {"wg.jsonl", "", {6}}}) {
    auto run = moelab::test::start_run(dir, head + "[data]\nplugin = \"jsonl\"\npath = \"" + file + "\"\n[eval]\nplugin = \"evaluate\"\n"
                                                   "dataset = \"data\"\nbatch_size = 3\n" + scoring);
    fs::create_directories(dir.path() / "out");
    json summary;
    run->make<moelab::Stage>("eval")->run(dir.path() / "out", summary);
    EXPECT_EQ(summary["scoring"], "loglik") << file;
    auto predictions = json::parse(moelab::read_file(dir.path() / "out" / "predictions.json"));
    ASSERT_EQ(predictions.size(), docs.size());
    for (std::size_t q = 0; q < docs.size(); ++q) {
      const json& doc = expected["docs"][docs[q]];
      const json& row = predictions[q]["base"];
      ASSERT_EQ(row["loglik"].size(), doc["requests"].size()) << file;
      for (std::size_t c = 0; c < doc["requests"].size(); ++c) {
        const json& r = expected["requests"][doc["requests"][c].get<std::size_t>()];
        EXPECT_NEAR(row["loglik"][c].get<double>(), r["loglik"].get<double>(), 1e-4) << r["continuation"];
        EXPECT_EQ(row["is_greedy"][c].get<bool>(), r["is_greedy"].get<bool>());
      }
      EXPECT_EQ(row["acc"], std::string(1, static_cast<char>('A' + doc["acc_pred"].get<int>()))) << file;
      if (doc.contains("acc_norm_pred")) EXPECT_EQ(row["acc_norm"], std::string(1, static_cast<char>('A' + doc["acc_norm_pred"].get<int>())));
      else EXPECT_FALSE(row.contains("acc_norm")) << "Winogrande reports acc only";
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Tokenizers, EvaluateParity, testing::Values("gpt_neox", "llama2"));

}  // namespace
