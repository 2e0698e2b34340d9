// Shared-prefix loglik scoring (score_requests with shared_prefix: a context runs once into a KV cache
// and its choices read it) against one padded row per request, in CPU fp32: equal logliks (1e-4),
// is_greedy and acc / acc_norm predictions on the tiny model over questions with 1 to 5 choices,
// contexts of different lengths, truncation and lm-eval splits that differ; the fixture architectures
// (MLA, sliding windows) on token ids; the forwards it makes (context once, continuation rows only);
// and the evaluate stage with shared_prefix on and off.
#include "moe_model.h"
#include "moelab/moelab.h"
#include "moelab/lib/files.h"
#include "moelab/lib/loglik.h"
#include "test_run.h"

#include <gmock/gmock.h>

#include <random>

namespace {

namespace fs = std::filesystem;
using moelab::LoglikRequest;
using moelab::LoglikResult;
using nlohmann::json;

const fs::path kTiny = fs::path(MOELAB_BINARY_DIR) / "models" / "tiny-olmoe";

// A question: its choices' requests and the choice texts acc_norm divides by.
struct Question {
  std::vector<LoglikRequest> requests;
  std::vector<std::string> texts;
};

Question question(const moelab::Tokenizer& tokenizer, const std::vector<std::pair<std::string, std::string>>& pairs) {
  Question q;
  for (const auto& [context, continuation] : pairs) {
    q.requests.push_back(moelab::encode_pair(tokenizer, context, continuation));
    q.texts.push_back(continuation);
  }
  return q;
}

Question same_context(const moelab::Tokenizer& tokenizer, const std::string& context, const std::vector<std::string>& choices) {
  std::vector<std::pair<std::string, std::string>> pairs;
  for (const auto& choice : choices) pairs.emplace_back(context, choice);
  return question(tokenizer, pairs);
}

std::vector<LoglikRequest> all_requests(const std::vector<Question>& questions) {
  std::vector<LoglikRequest> out;
  for (const auto& q : questions) out.insert(out.end(), q.requests.begin(), q.requests.end());
  return out;
}

// Shared and separate results agree: logliks within 1e-4, is_greedy, and each question's acc and acc_norm.
void expect_same(const std::vector<Question>& questions, const std::vector<LoglikResult>& shared, const std::vector<LoglikResult>& separate,
                 const std::string& label) {
  ASSERT_EQ(shared.size(), separate.size());
  std::size_t first = 0;
  for (std::size_t q = 0; q < questions.size(); ++q) {
    std::vector<double> a, b;
    for (std::size_t c = 0; c < questions[q].requests.size(); ++c) {
      const std::size_t i = first + c;
      EXPECT_NEAR(shared[i].loglik, separate[i].loglik, 1e-4) << label << ": question " << q << ", choice " << c;
      EXPECT_EQ(shared[i].is_greedy, separate[i].is_greedy) << label << ": question " << q << ", choice " << c;
      a.push_back(shared[i].loglik);
      b.push_back(separate[i].loglik);
    }
    EXPECT_EQ(moelab::acc_prediction(a), moelab::acc_prediction(b)) << label << ": question " << q;
    EXPECT_EQ(moelab::acc_norm_prediction(a, questions[q].texts), moelab::acc_norm_prediction(b, questions[q].texts)) << label << ": question " << q;
    first += questions[q].requests.size();
  }
}

// The model's own greedy continuation of `context` (steps tokens) and two that differ from it.
Question greedy_question(moelab::Model& model, const moelab::Tokenizer& tokenizer, const std::vector<std::int64_t>& context, int steps) {
  torch::NoGradGuard no_grad;
  std::vector<std::int64_t> ids = context;
  for (int step = 0; step < steps; ++step) ids.push_back(model.forward(torch::tensor(ids).unsqueeze(0), {})[0][-1].argmax().item<std::int64_t>());
  std::vector<std::int64_t> greedy(ids.begin() + static_cast<std::ptrdiff_t>(context.size()), ids.end());
  std::vector<std::int64_t> last_differs = greedy, first_differs = greedy;
  last_differs.back() = last_differs.back() == 5 ? 6 : 5;
  first_differs.front() = first_differs.front() == 5 ? 6 : 5;
  Question q;
  for (const auto& continuation : {greedy, last_differs, first_differs}) {
    q.requests.push_back({context, continuation});
    q.texts.push_back(tokenizer.decode(continuation));
  }
  return q;
}

// Questions on the tiny tokenizer: 1 to 5 choices, contexts of 1 to about 15 tokens, a context ending in
// a space, a continuation that merges with the context's last word, Winogrande-style contexts that differ
// per choice, and a context that two questions share.
std::vector<Question> tiny_questions(moelab::Model& model, const moelab::Tokenizer& tokenizer) {
  std::vector<Question> qs;
  qs.push_back(same_context(tokenizer, "Question: What colour is the sky on a clear day?\nAnswer:",
                            {" blue", " green", " a very bright shade of red", " yellow"}));
  qs.push_back(same_context(tokenizer, "Hi", {" there", " you all, how are you"}));
  qs.push_back(same_context(tokenizer, "The answer is ", {"42", "forty two", "none of these"}));
  qs.push_back(same_context(tokenizer, "The cat", {"s sat on the mat.", " sat on the mat."}));
  qs.push_back(question(tokenizer, {{"The trophy does not fit into the suitcase because the trophy", " is too large."},
                                    {"The trophy does not fit into the suitcase because the suitcase", " is too large."}}));
  qs.push_back(same_context(tokenizer, "Pick a number:", {" one", " two", " three", " four", " five"}));
  qs.push_back(same_context(tokenizer, "Hi", {" bye", " hello"}));
  qs.push_back(same_context(tokenizer, "A single choice here:", {" only this"}));
  qs.push_back(greedy_question(model, tokenizer, tokenizer.encode("Once upon a time"), 3));
  qs.push_back(greedy_question(model, tokenizer, tokenizer.encode("x"), 2));
  return qs;
}

TEST(LoglikPrefix, SharedEqualsSeparateScoringOnTheTinyModel) {
  auto model = moelab::load_model(kTiny, torch::kCPU, torch::kFloat32);
  auto tokenizer = moelab::Tokenizer::from_file(kTiny / "tokenizer.json");
  const std::vector<Question> questions = tiny_questions(*model, *tokenizer);
  const std::vector<LoglikRequest> requests = all_requests(questions);
  // The cases the questions are meant to hold.
  const LoglikRequest& merged = questions[3].requests[0];  // "The cat" + "s sat on the mat."
  const std::vector<std::int64_t> whole = tokenizer->encode("The cats sat on the mat.");
  ASSERT_FALSE(std::equal(merged.context.begin(), merged.context.end(), whole.begin())) << "the split should differ from the whole's tokens";
  EXPECT_EQ(questions[2].requests[0].context, tokenizer->encode("The answer is")) << "the trailing space moves to the continuation";
  EXPECT_EQ(questions[9].requests[0].context.size(), 1u) << "a one-token context leaves nothing to cache";
  const auto separate = moelab::score_requests(*model, requests, 16, 1024, /*shared_prefix=*/false);
  EXPECT_TRUE(separate[requests.size() - 3].is_greedy && separate[requests.size() - 6].is_greedy);
  EXPECT_FALSE(separate[requests.size() - 2].is_greedy || separate[requests.size() - 1].is_greedy);
  for (std::size_t batch : {1, 2, 3, 5, 16, 64})
    expect_same(questions, moelab::score_requests(*model, requests, batch, 1024), separate, "batch_size " + std::to_string(batch));
  // One padded row per request gives the same numbers in any batch.
  expect_same(questions, moelab::score_requests(*model, requests, 1, 1024, false), separate, "separate, batch_size 1");

  // Truncated to 8 input tokens, choices of different lengths keep different parts of their context.
  std::vector<Question> short_questions;
  for (const Question& q : questions) {
    Question kept;
    for (std::size_t c = 0; c < q.requests.size(); ++c)
      if (q.requests[c].continuation.size() <= 8) kept.requests.push_back(q.requests[c]), kept.texts.push_back(q.texts[c]);
    if (!kept.requests.empty()) short_questions.push_back(kept);
  }
  const std::vector<LoglikRequest> short_requests = all_requests(short_questions);
  const auto truncated = moelab::score_requests(*model, short_requests, 4, 8, false);
  expect_same(short_questions, moelab::score_requests(*model, short_requests, 4, 8), truncated, "max_length 8");
  EXPECT_GT(std::abs(truncated[0].loglik - separate[0].loglik), 1e-4) << "max_length 8 should truncate question 0's context";
}

// The fixture checkpoints of the other attention forms (MLA, sliding windows of 4 tokens, QK norms) on
// token ids: contexts of 1 to 12 tokens, 1 to 5 choices of 1 to 5 tokens.
class LoglikPrefixArchitectures : public testing::TestWithParam<std::string> {};

TEST_P(LoglikPrefixArchitectures, SharedEqualsSeparateScoring) {
  auto model = moelab::load_model(fs::path(MOELAB_SOURCE_DIR) / "tests" / "fixtures" / "models" / GetParam(), torch::kCPU, torch::kFloat32);
  std::mt19937 rng(15);
  auto token = [&] { return std::uniform_int_distribution<std::int64_t>(2, 255)(rng); };
  std::vector<Question> questions;
  for (std::size_t context_length : {12, 1, 7, 3, 12, 5, 1, 9}) {
    std::vector<std::int64_t> context(context_length);
    for (auto& id : context) id = token();
    Question q;
    for (int c = std::uniform_int_distribution<int>(1, 5)(rng); c > 0; --c) {
      std::vector<std::int64_t> continuation(static_cast<std::size_t>(std::uniform_int_distribution<int>(1, 5)(rng)));
      for (auto& id : continuation) id = token();
      q.requests.push_back({context, continuation});
      q.texts.push_back(std::string(continuation.size() + static_cast<std::size_t>(c), 'x'));
    }
    questions.push_back(q);
  }
  const std::vector<LoglikRequest> requests = all_requests(questions);
  const auto separate = moelab::score_requests(*model, requests, 8, 1024, false);
  for (std::size_t batch : {3, 8, 32}) expect_same(questions, moelab::score_requests(*model, requests, batch, 1024), separate, GetParam());
}

INSTANTIATE_TEST_SUITE_P(Fixtures, LoglikPrefixArchitectures,
                         testing::Values("olmoe", "deepseek_v2", "deepseek_v3", "mixtral_linear_sliding", "qwen2_moe_llama3_sliding", "qwen3_moe"));

// A model that records each forward's shape and cache use, passing everything to the real one.
class RecordingModel final : public moelab::Model {
 public:
  struct Call {
    std::int64_t rows, width;
    bool cached, last_only;
    long long replicas, past;
  };
  explicit RecordingModel(moelab::Model& inner) : inner_(inner) {}
  const moelab::ModelInfo& info() const override { return inner_.info(); }
  torch::Device device() const override { return inner_.device(); }
  torch::ScalarType dtype() const override { return inner_.dtype(); }
  torch::Tensor forward(const torch::Tensor& ids, const torch::Tensor& mask, moelab::KVCache* cache, bool last_only) override {
    calls.push_back({ids.size(0), ids.size(1), cache != nullptr, last_only, cache ? cache->replicas : 0, cache ? cache->length() : 0});
    return inner_.forward(ids, mask, cache, last_only);
  }
  const torch::Tensor& hidden_states() const override { return inner_.hidden_states(); }
  const std::vector<moelab::RouterTrace>& routing() const override { return inner_.routing(); }
  void set_router_transform(moelab::RouterTransform transform) override { inner_.set_router_transform(std::move(transform)); }
  torch::Tensor router_weight(int layer) override { return inner_.router_weight(layer); }
  moelab::NamedTensors named_weights() override { return inner_.named_weights(); }
  moelab::ExpertWeights expert_weights(int layer) override { return inner_.expert_weights(layer); }
  void set_moe_input_observer(moelab::MoeInputObserver observer) override { inner_.set_moe_input_observer(std::move(observer)); }

  std::vector<Call> calls;

 private:
  moelab::Model& inner_;
};

// Two questions of 4 choices and one of 2 in batches of 8 rows: the 4-choice contexts run once (their
// last token excepted, projecting one position) into one cache; 8 rows continue them (replicas 4), as wide
// as the longest continuation; the 2-choice question gets its own pair of forwards.
TEST(LoglikPrefix, TheContextRunsOnceAndOnlyContinuationRowsFollow) {
  auto inner = moelab::load_model(kTiny, torch::kCPU, torch::kFloat32);
  RecordingModel model(*inner);
  const std::vector<std::int64_t> a = {10, 11, 12, 13, 14, 15}, b = {20, 21, 22}, c = {30, 31, 32, 33};
  std::vector<LoglikRequest> requests;
  for (const auto& context : {a, b})
    for (std::int64_t choice = 0; choice < 4; ++choice) requests.push_back({context, std::vector<std::int64_t>(static_cast<std::size_t>(choice + 1), 40 + choice)});
  requests.push_back({c, {50, 51}});
  requests.push_back({c, {52}});
  moelab::score_requests(model, requests, 8, 1024);
  ASSERT_EQ(model.calls.size(), 4u);
  // Groups of 2 rows come first (by_size order), then the groups of 4.
  const auto& pair_prefix = model.calls[0];
  EXPECT_EQ(std::make_tuple(pair_prefix.rows, pair_prefix.width, pair_prefix.cached, pair_prefix.last_only), std::make_tuple(1, 3, true, true));
  const auto& pair_rows = model.calls[1];
  EXPECT_EQ(std::make_tuple(pair_rows.rows, pair_rows.width, pair_rows.replicas, pair_rows.past), std::make_tuple(2, 2, 2LL, 3LL));
  const auto& prefix = model.calls[2];
  EXPECT_EQ(std::make_tuple(prefix.rows, prefix.width, prefix.cached, prefix.last_only), std::make_tuple(2, 5, true, true));
  const auto& rows = model.calls[3];
  EXPECT_EQ(std::make_tuple(rows.rows, rows.width, rows.replicas, rows.past, rows.last_only), std::make_tuple(8, 4, 4LL, 5LL, false));

  // Switched off: one row per request, context included, in batches of 8.
  model.calls.clear();
  moelab::score_requests(model, requests, 8, 1024, false);
  ASSERT_EQ(model.calls.size(), 2u);
  EXPECT_EQ(std::make_tuple(model.calls[0].rows, model.calls[0].width, model.calls[0].cached), std::make_tuple(8, 9, false));
}

// The evaluate stage gives the same predictions.json with shared_prefix on (the default) and off, on the
// HellaSwag, ARC (loglik) and Winogrande samples.
TEST(LoglikPrefix, EvaluateSharedPrefixOnAndOffAgree) {
  const fs::path data = fs::path(MOELAB_SOURCE_DIR) / "configs" / "data";
  for (const char* file : {"hellaswag_sample.jsonl", "arc_sample.jsonl", "winogrande_sample.jsonl"}) {
    std::vector<json> predictions;
    for (const char* key : {"", "shared_prefix = false\n"}) {
      moelab::test::TempDir dir;
      auto run = moelab::test::start_run(dir, "stages = []\n[data]\nplugin = \"jsonl\"\npath = \"" + (data / file).string() +
                                                  "\"\n[eval]\nplugin = \"evaluate\"\ndataset = \"data\"\nscoring = \"loglik\"\nbatch_size = 6\n"
                                                  "bootstrap = 10\n" + key);
      fs::create_directories(dir.path() / "out");
      json summary;
      run->make<moelab::Stage>("eval")->run(dir.path() / "out", summary);
      predictions.push_back(json::parse(moelab::read_file(dir.path() / "out" / "predictions.json")));
    }
    const json &on = predictions[0], &off = predictions[1];
    ASSERT_EQ(on.size(), off.size()) << file;
    ASSERT_GT(on.size(), 0u) << file;
    for (std::size_t q = 0; q < on.size(); ++q) {
      const json &a = on[q]["base"], &b = off[q]["base"];
      ASSERT_EQ(a["loglik"].size(), b["loglik"].size()) << file << " " << q;
      for (std::size_t c = 0; c < a["loglik"].size(); ++c) EXPECT_NEAR(a["loglik"][c].get<double>(), b["loglik"][c].get<double>(), 1e-4) << file << " " << q;
      EXPECT_EQ(a["is_greedy"], b["is_greedy"]) << file << " " << q;
      EXPECT_EQ(a["acc"], b["acc"]) << file << " " << q;
      EXPECT_EQ(a.value("acc_norm", json()), b.value("acc_norm", json())) << file << " " << q;
    }
  }
}

}  // namespace
