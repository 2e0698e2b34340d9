// The tokenizer against HF `tokenizers` (ids and decoded text from tests/fixtures/tokenizers/
// make_expected.py) on a varied corpus, for four real files, and clear errors on malformed files.
#include "moelab/lib/files.h"
#include "moelab/lib/vocab_check.h"
#include "moelab/tokenizer.h"
#include "test_run.h"

#include <gmock/gmock.h>
#include <nlohmann/json.hpp>

#include <sstream>

using moelab::test::error_of;
using testing::HasSubstr;

namespace {

namespace fs = std::filesystem;
const fs::path kFixtures = fs::path(MOELAB_SOURCE_DIR) / "tests" / "fixtures" / "tokenizers";

// Metaspace-style variants of the llama2 file, built as make_expected.py builds them.
fs::path metaspace_variant(const std::string& name) {
  const std::string m = "\u2581";
  auto j = nlohmann::json::parse(moelab::read_file(fs::path(MOELAB_TOKENIZER_DIR) / "llama2" / "tokenizer.json"));
  j["normalizer"] = nullptr;
  bool split = name == "llama2_metaspace_split";
  j["pre_tokenizer"] = {{"type", "Metaspace"}, {"replacement", m}, {"prepend_scheme", split ? "always" : "first"}, {"split", split}};
  if (split) j["decoder"] = {{"type", "Metaspace"}, {"replacement", m}, {"prepend_scheme", "always"}, {"split", true}};
  fs::path file = fs::path(MOELAB_TOKENIZER_DIR) / name / "tokenizer.json";
  fs::create_directories(file.parent_path());
  moelab::write_file_atomic(file, j.dump());
  return file;
}

fs::path tokenizer_file(const std::string& name) {
  if (name == "gpt_neox") return fs::path(MOELAB_SOURCE_DIR) / "framework" / "model" / "tiny" / "tokenizer.json";
  if (name.rfind("llama2_", 0) == 0) return metaspace_variant(name);
  return fs::path(MOELAB_TOKENIZER_DIR) / name / "tokenizer.json";
}

class HfParity : public testing::TestWithParam<std::string> {};

TEST_P(HfParity, EveryCorpusTextEncodesAndDecodesLikeHf) {
  auto tokenizer = moelab::Tokenizer::from_file(tokenizer_file(GetParam()));
  std::istringstream lines(moelab::read_file(kFixtures / "expected" / (GetParam() + ".jsonl")));
  int checked = 0;
  for (std::string line; std::getline(lines, line); ++checked) {
    auto expected = nlohmann::json::parse(line);
    std::string text = expected["text"];
    std::vector<std::int64_t> ids = expected["ids"];
    EXPECT_EQ(tokenizer->encode(text), ids) << GetParam() << ": " << text;
    EXPECT_EQ(tokenizer->decode(ids), expected["decoded"].get<std::string>()) << GetParam() << ": " << text;
  }
  EXPECT_EQ(checked, 35);
}

INSTANTIATE_TEST_SUITE_P(Files, HfParity, testing::Values("gpt_neox", "qwen3", "llama3", "deepseek_v3", "llama2", "llama2_metaspace",
                                                                "llama2_metaspace_split"));

// tokenizer(text)["input_ids"] of transformers' PreTrainedTokenizerFast, from tests/fixtures/loglik/make_loglik_fixture.py.
class HfSpecialTokens : public testing::TestWithParam<std::string> {};

TEST_P(HfSpecialTokens, AddSpecialTokensAppliesThePostProcessorAsHfDoes) {
  auto fixture = nlohmann::json::parse(moelab::read_file(fs::path(MOELAB_SOURCE_DIR) / "tests" / "fixtures" / "loglik" / "expected.json"));
  auto tokenizer = moelab::Tokenizer::from_file(tokenizer_file(GetParam()));
  const auto& cases = fixture["tokenizers"][GetParam()]["add_special_tokens"];
  ASSERT_EQ(cases.size(), 4u);
  for (const auto& c : cases) {
    const std::string text = c["text"];
    EXPECT_EQ(tokenizer->encode(text, true), c["ids"].get<std::vector<std::int64_t>>()) << GetParam() << ": \"" << text << "\"";
  }
}

INSTANTIATE_TEST_SUITE_P(Files, HfSpecialTokens, testing::Values("gpt_neox", "llama3", "qwen3", "llama2"));

TEST(Tokenizer, AddSpecialTokensIsOffByDefaultAndSaysWhatItAdds) {
  auto llama2 = moelab::Tokenizer::from_file(tokenizer_file("llama2"));
  EXPECT_EQ(llama2->encode("Hello world"), std::vector<std::int64_t>({22557, 1526}));
  EXPECT_EQ(llama2->encode(""), std::vector<std::int64_t>());
  EXPECT_EQ(llama2->special_tokens_added(), "<s> (id 1) prepended");
  EXPECT_EQ(moelab::Tokenizer::from_file(tokenizer_file("llama3"))->special_tokens_added(), "nothing added");
}

// A template with a token on each side (as BERT-style files have), a two-token special and a pair
// template that a single text does not use; Sequence nests processors, Bert/RobertaProcessing wrap.
TEST(Tokenizer, TemplateProcessingPutsSpecialTokensAroundTheText) {
  moelab::test::TempDir dir;
  auto base = nlohmann::json::parse(moelab::read_file(tokenizer_file("gpt_neox")));
  auto with = [&](const nlohmann::json& post_processor) {
    nlohmann::json j = base;
    j["post_processor"] = post_processor;
    return moelab::Tokenizer::from_file(dir.write("tokenizer.json", j.dump()));
  };
  const nlohmann::json bos_eos = {
      {"type", "TemplateProcessing"},
      {"single", {{{"SpecialToken", {{"id", "<bos>"}, {"type_id", 0}}}}, {{"Sequence", {{"id", "A"}, {"type_id", 0}}}},
                  {{"SpecialToken", {{"id", "<eos>"}, {"type_id", 0}}}}}},
      {"pair", {{{"SpecialToken", {{"id", "<bos>"}, {"type_id", 0}}}}, {{"Sequence", {{"id", "A"}, {"type_id", 0}}}},
                {{"SpecialToken", {{"id", "<sep>"}, {"type_id", 1}}}}, {{"Sequence", {{"id", "B"}, {"type_id", 1}}}}}},
      {"special_tokens", {{"<bos>", {{"id", "<bos>"}, {"ids", {0}}, {"tokens", {"<|endoftext|>"}}}},
                          {"<eos>", {{"id", "<eos>"}, {"ids", {1, 2}}, {"tokens", {"<|padding|>", "x"}}}},
                          {"<sep>", {{"id", "<sep>"}, {"ids", {7}}, {"tokens", {"y"}}}}}}};
  auto tokenizer = with(bos_eos);
  std::vector<std::int64_t> plain = tokenizer->encode("Hello world");
  std::vector<std::int64_t> wrapped = {0};
  wrapped.insert(wrapped.end(), plain.begin(), plain.end());
  wrapped.insert(wrapped.end(), {1, 2});
  EXPECT_EQ(tokenizer->encode("Hello world", true), wrapped);
  EXPECT_EQ(tokenizer->encode("", true), std::vector<std::int64_t>({0, 1, 2}));
  EXPECT_EQ(tokenizer->special_tokens_added(), "<|endoftext|> (id 0) prepended and <|padding|> (id 1), x (id 2) appended");

  auto roberta = with({{"type", "Sequence"},
                       {"processors", {{{"type", "ByteLevel"}, {"trim_offsets", false}},
                                       {{"type", "RobertaProcessing"}, {"cls", {"<s>", 5}}, {"sep", {"</s>", 6}}}, bos_eos}}});
  std::vector<std::int64_t> nested = {0, 5};
  nested.insert(nested.end(), plain.begin(), plain.end());
  nested.insert(nested.end(), {6, 1, 2});
  EXPECT_EQ(roberta->encode("Hello world", true), nested);
  EXPECT_EQ(with({{"type", "BertProcessing"}, {"cls", {"[CLS]", 3}}, {"sep", {"[SEP]", 4}}})->encode("", true), std::vector<std::int64_t>({3, 4}));
}

TEST(Tokenizer, SpecialTokensCanBeSkippedWhenDecoding) {
  auto tokenizer = moelab::Tokenizer::from_file(tokenizer_file("gpt_neox"));
  auto ids = tokenizer->encode("hi<|endoftext|>there");
  EXPECT_EQ(std::count(ids.begin(), ids.end(), tokenizer->token_id("<|endoftext|>")), 1);
  EXPECT_EQ(tokenizer->decode(ids, true), "hithere");
  EXPECT_EQ(tokenizer->vocab_size(), 1000u);
}

TEST(Tokenizer, MalformedFilesNameTheComponent) {
  moelab::test::TempDir dir;
  auto base = nlohmann::json::parse(moelab::read_file(tokenizer_file("gpt_neox")));
  auto error_for = [&](const std::function<void(nlohmann::json&)>& edit) {
    nlohmann::json j = base;
    edit(j);
    fs::path file = dir.write("tokenizer.json", j.dump());
    return error_of([&] { moelab::Tokenizer::from_file(file); });
  };
  EXPECT_THAT(error_for([](auto& j) { j["model"]["type"] = "Unigram"; }), HasSubstr("model: type \"Unigram\" is not supported"));
  EXPECT_THAT(error_for([](auto& j) { j["normalizer"] = {{"type", "Replace"}, {"pattern", {{"Regex", " +"}}}, {"content", "_"}}; }),
              HasSubstr("normalizer.Replace: only String patterns are supported"));
  EXPECT_THAT(error_for([](auto& j) { j["decoder"] = {{"type", "CTC"}}; }), HasSubstr("decoder: type \"CTC\" is not supported"));
  EXPECT_THAT(error_for([](auto& j) { j["model"]["type"] = "WordPiece"; }), HasSubstr("model: WordPiece needs an unk_token"));
  EXPECT_THAT(error_for([](auto& j) { j["pre_tokenizer"] = {{"type", "Metaspace"}, {"prepend_scheme", "sometimes"}}; }),
              HasSubstr("pre_tokenizer.Metaspace: prepend_scheme \"sometimes\" is not one of always, first, never"));
  EXPECT_THAT(error_for([](auto& j) { j["pre_tokenizer"] = {{"type", "UnicodeScripts"}}; }),
              HasSubstr("pre_tokenizer: type \"UnicodeScripts\" is not supported"));
  EXPECT_THAT(error_for([](auto& j) { j["normalizer"] = {{"type", "NFKC"}}; }), HasSubstr("normalizer: type \"NFKC\" is not supported"));
  EXPECT_THAT(error_for([](auto& j) { j["model"]["merges"][0] = nlohmann::json::array({"zz", "qq"}); }),
              HasSubstr("model.merges: merge [\"zz\",\"qq\"] uses tokens missing from the vocab"));
  EXPECT_THAT(error_for([](auto& j) { j["added_tokens"][0]["lstrip"] = true; }), HasSubstr("sets lstrip, which is not supported"));
  EXPECT_THAT(error_for([](auto& j) {
                j["pre_tokenizer"] = {{"type", "Split"}, {"pattern", {{"Regex", "(unclosed"}}}, {"behavior", "Isolated"}, {"invert", false}};
              }),
              HasSubstr("does not compile"));
  EXPECT_THAT(error_for([](auto& j) { j["decoder"] = {{"type", "WordPiece"}}; }), HasSubstr("decoder: type \"WordPiece\""));
  EXPECT_THAT(error_for([](auto& j) { j["post_processor"] = {{"type", "Unknown"}}; }), HasSubstr("post_processor: type \"Unknown\" is not supported"));
  EXPECT_THAT(error_for([](auto& j) {
                j["post_processor"] = {{"type", "TemplateProcessing"}, {"single", {{{"SpecialToken", {{"id", "<s>"}}}}, {{"Sequence", {{"id", "A"}}}}}},
                                       {"special_tokens", nlohmann::json::object()}};
              }),
              HasSubstr("post_processor.TemplateProcessing.single: special token \"<s>\" is not in special_tokens"));
  EXPECT_THAT(error_for([](auto& j) {
                j["post_processor"] = {{"type", "TemplateProcessing"}, {"single", {{{"Sequence", {{"id", "B"}}}}}}};
              }),
              HasSubstr("a single text's template must hold sequence A once"));
  fs::path broken = dir.write("broken.json", "{\"model\": ");
  EXPECT_THAT(error_of([&] { moelab::Tokenizer::from_file(broken); }), AllOf(HasSubstr("broken.json"), HasSubstr("not valid JSON")));
}

// Wrong JSON types were raw nlohmann messages naming nothing; now the file and the key path.
TEST(Tokenizer, WrongTypesNameTheFileAndKeyPath) {
  moelab::test::TempDir dir;
  auto base = nlohmann::json::parse(moelab::read_file(tokenizer_file("gpt_neox")));
  fs::path file;
  auto error_for = [&](const std::function<void(nlohmann::json&)>& edit) {
    nlohmann::json j = base;
    edit(j);
    file = dir.write("tokenizer.json", j.dump());
    return error_of([&] { moelab::Tokenizer::from_file(file); });
  };
  auto expect = [&](const std::function<void(nlohmann::json&)>& edit, const std::string& message) {
    const std::string error = error_for(edit);
    EXPECT_THAT(error, HasSubstr(file.string() + ": " + message));
  };
  expect([](auto& j) { j["model"]["vocab"]["abc"] = "x"; }, "model.vocab[\"abc\"]: expected an integer, found string \"x\"");
  expect([](auto& j) { j["model"]["vocab"]["abc"] = 2.5; }, "model.vocab[\"abc\"]: expected an integer, found number 2.5");
  expect([](auto& j) { j["model"]["vocab"]["abc"] = -3; }, "model.vocab[\"abc\"]: negative token id -3");
  expect([](auto& j) { j["model"]["vocab"]["abc"] = 4000000000LL; }, "model.vocab[\"abc\"]: token id 4000000000 is beyond any vocabulary");
  expect([](auto& j) { j["model"]["merges"][3] = nlohmann::json::array({1, 2}); }, "model.merges[3][0]: expected a string, found number 1");
  expect([](auto& j) { j["model"]["byte_fallback"] = "yes"; }, "model.byte_fallback: expected true or false, found string \"yes\"");
  expect([](auto& j) { j["model"]["unk_token"] = 7; }, "model.unk_token: expected a string, found number 7");
  expect([](auto& j) { j["added_tokens"][0]["id"] = "zero"; }, "added_tokens[0].id: expected an integer, found string \"zero\"");
  expect([](auto& j) { j["added_tokens"][1]["content"] = 5; }, "added_tokens[1].content: expected a string, found number 5");
  expect([](auto& j) { j["added_tokens"] = {{"content", "x"}}; }, "added_tokens: expected a list, found object");
  expect([](auto& j) { j["added_tokens"][0].erase("id"); }, "added_tokens[0]: missing \"id\"");
  expect([](auto& j) { j["normalizer"] = {{"type", "Prepend"}, {"prepend", 1}}; }, "normalizer.prepend: expected a string, found number 1");
  expect([](auto& j) { j["normalizer"] = {{"type", "Sequence"}, {"normalizers", {{{"type", "Prepend"}}}}}; },
         "normalizer.normalizers[0]: missing \"prepend\"");
  expect([](auto& j) { j["pre_tokenizer"] = "ByteLevel"; }, "pre_tokenizer: expected an object, found string \"ByteLevel\"");
  expect([](auto& j) { j["pre_tokenizer"] = {{"type", "Split"}, {"behavior", "Isolated"}}; },
         "pre_tokenizer.Split: only Regex patterns are supported, found null");
  expect([](auto& j) { j["decoder"] = {{"type", "Strip"}, {"content", " "}, {"start", -1}}; }, "decoder.Strip: start -1 and stop 0 must not be negative");
  expect([](auto& j) { j["post_processor"] = {{"type", "BertProcessing"}, {"cls", {"[CLS]", -1}}, {"sep", {"[SEP]", 4}}}; },
         "post_processor.cls[1]: negative token id -1");
  expect([](auto& j) {
    j["post_processor"] = {{"type", "TemplateProcessing"}, {"single", {{{"SpecialToken", {{"id", "<s>"}}}}, {{"Sequence", {{"id", "A"}}}}}},
                           {"special_tokens", {{"<s>", {{"id", "<s>"}, {"ids", {"1"}}, {"tokens", {"<s>"}}}}}}};
  }, "post_processor.special_tokens[\"<s>\"].ids[0]: expected an integer, found string \"1\"");
  // WordPiece files go through the same reader.
  nlohmann::json wordpiece = {{"model", {{"type", "WordPiece"}, {"unk_token", "[UNK]"}, {"vocab", {{"[UNK]", 0}, {"a", "one"}}}}},
                              {"pre_tokenizer", {{"type", "BertPreTokenizer"}}}};
  file = dir.write("wordpiece.json", wordpiece.dump());
  EXPECT_THAT(error_of([&] { moelab::Tokenizer::from_file(file); }),
              HasSubstr(file.string() + ": model.vocab[\"a\"]: expected an integer, found string \"one\""));
}

// 100,000 nested brackets were a stack overflow; now an error naming the file, the line and the column.
TEST(Tokenizer, DeepNestingIsAnErrorNotACrash) {
  moelab::test::TempDir dir;
  fs::path file = dir.write("tokenizer.json", "{\"model\":\n" + std::string(100000, '[') + std::string(100000, ']') + "}");
  EXPECT_THAT(error_of([&] { moelab::Tokenizer::from_file(file); }),
              HasSubstr(file.string() + ": not valid JSON: nesting deeper than 512 levels at line 2, column 512"));
  // Brackets inside strings are text, not nesting.
  auto base = nlohmann::json::parse(moelab::read_file(tokenizer_file("gpt_neox")));
  base["added_tokens"].push_back({{"id", 1000}, {"content", std::string(600, '[')}, {"special", true}});
  file = dir.write("brackets.json", base.dump());
  EXPECT_EQ(moelab::Tokenizer::from_file(file)->token_id(std::string(600, '[')), 1000);
}

// The regex engine is told the text is valid UTF-8; a stray byte is an error, not undefined behaviour.
TEST(Tokenizer, TextThatIsNotUtf8IsRefused) {
  auto tokenizer = moelab::Tokenizer::from_file(tokenizer_file("gpt_neox"));
  EXPECT_THAT(error_of([&] { tokenizer->encode("ok \xff then"); }), HasSubstr("not valid UTF-8: byte 0xFF at offset 3"));
  EXPECT_THAT(error_of([&] { tokenizer->encode("cut \xe2\x82"); }), HasSubstr("byte 0xE2 at offset 4"));
  EXPECT_FALSE(tokenizer->encode("caf\xc3\xa9 \xe2\x82\xac").empty());
}

// largest_token_id covers the vocabulary, added tokens beyond it and the post_processor's specials; a
// WordPiece added token outside the vocabulary counts too (and decodes, as in HF).
TEST(Tokenizer, LargestTokenIdCoversAddedAndSpecialTokens) {
  moelab::test::TempDir dir;
  auto base = nlohmann::json::parse(moelab::read_file(tokenizer_file("gpt_neox")));
  EXPECT_EQ(moelab::largest_token_id(*moelab::Tokenizer::from_file(tokenizer_file("gpt_neox"))), 999);
  nlohmann::json j = base;
  j["post_processor"] = {{"type", "BertProcessing"}, {"cls", {"[CLS]", 1500}}, {"sep", {"[SEP]", 4}}};
  EXPECT_EQ(moelab::largest_token_id(*moelab::Tokenizer::from_file(dir.write("special.json", j.dump()))), 1500);
  j = base;
  j["added_tokens"].push_back({{"id", 1200}, {"content", "<extra>"}, {"special", true}});
  EXPECT_EQ(moelab::largest_token_id(*moelab::Tokenizer::from_file(dir.write("added.json", j.dump()))), 1200);
  nlohmann::json wordpiece = {{"model", {{"type", "WordPiece"}, {"unk_token", "[UNK]"}, {"vocab", {{"[UNK]", 0}, {"a", 1}}}}},
                              {"pre_tokenizer", {{"type", "BertPreTokenizer"}}},
                              {"added_tokens", {{{"id", 7}, {"content", "[MASK]"}, {"special", true}}}}};
  auto wp = moelab::Tokenizer::from_file(dir.write("wordpiece.json", wordpiece.dump()));
  EXPECT_EQ(moelab::largest_token_id(*wp), 7);
  EXPECT_EQ(wp->decode({1, 7}), "a [MASK]");
  moelab::ModelInfo model;
  model.vocab_size = 7;
  EXPECT_THAT(error_of([&] { moelab::check_tokenizer_fits_model(*wp, "wordpiece.json", model, "/models/m"); }),
              HasSubstr("wordpiece.json: token id 7 (\"[MASK]\") is outside the model's vocabulary: /models/m/config.json has vocab_size = 7"));
  model.vocab_size = 8;
  EXPECT_NO_THROW(moelab::check_tokenizer_fits_model(*wp, "wordpiece.json", model, "/models/m"));
}

}  // namespace

namespace {

TEST(Prompt, MultipleChoiceWithChatWrapper) {
  moelab::Example ex;
  ex.text = "Which gas do plants take in?";
  ex.choices = {"oxygen", "carbon dioxide"};
  ex.letters = {"A", "B"};
  moelab::PromptFormat format;
  EXPECT_EQ(moelab::format_prompt(ex, format), "Question: Which gas do plants take in?\nA. oxygen\nB. carbon dioxide\nAnswer:");
  format.chat_template = "<|system|>\n{system}\n<|user|>\n{prompt}\n<|assistant|>\n";
  format.system = "Answer with one letter.";
  EXPECT_EQ(moelab::format_prompt(ex, format),
            "<|system|>\nAnswer with one letter.\n<|user|>\nQuestion: Which gas do plants take in?\nA. oxygen\nB. carbon dioxide\nAnswer:\n<|assistant|>\n");
  format.question_template = "{{json}} {question} {answer}";
  EXPECT_THAT(error_of([&] { moelab::format_prompt(ex, format); }),
              AllOf(HasSubstr("question_template: unknown placeholder {answer}"), HasSubstr("known: {choices}, {question}")));
}

}  // namespace
