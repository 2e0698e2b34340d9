// The JSON reader for users' files: a depth limit instead of a stack overflow, syntax errors with line
// and column, strict types with the key path; and the readers that use it (routing results,
// generation_config.json), whose wrong types were raw nlohmann messages naming nothing.
#include "moelab/lib/generation_config.h"
#include "moelab/lib/json_read.h"
#include "moelab/lib/routing_results.h"
#include "test_run.h"

#include <gmock/gmock.h>

#include <limits>

namespace {

using moelab::JsonValue;
using moelab::test::error_of;
using testing::HasSubstr;

TEST(JsonRead, SyntaxErrorsNameLineAndColumnAndDepthIsLimited) {
  EXPECT_THAT(error_of([] { moelab::parse_json("{\"a\": 1,\n \"b\": }", "f.json"); }),
              HasSubstr("f.json: not valid JSON: parse error at line 2, column 7"));
  EXPECT_NO_THROW(moelab::parse_json(std::string(512, '[') + std::string(512, ']'), "f.json"));
  EXPECT_THAT(error_of([] { moelab::parse_json(std::string(513, '[') + std::string(513, ']'), "f.json"); }),
              HasSubstr("f.json: not valid JSON: nesting deeper than 512 levels at line 1, column 513"));
  EXPECT_NO_THROW(moelab::parse_json("[[[\"]]]]]]]]\\\"[[[[\"]]]", "f.json", 3)) << "brackets in strings are text";
  EXPECT_THAT(error_of([] { moelab::parse_json("[[[[]]]]", "data.jsonl:4", 3); }), HasSubstr("data.jsonl:4: not valid JSON: nesting deeper than 3"));
  EXPECT_THAT(error_of([] { moelab::parse_json("{\"x\": 1e400}", "f.json"); }), HasSubstr("f.json: not valid JSON: number overflow parsing '1e400'"));
}

TEST(JsonRead, TypedAccessNamesTheKeyPathAndIsStrict) {
  nlohmann::json j = nlohmann::json::parse(
      R"({"model": {"vocab": {"abc": "x", "a b": 3}, "n": 3.5, "big": 18446744073709551615, "neg": -1, "list": [1, "2"]}})");
  j["model"]["inf"] = std::numeric_limits<double>::infinity();  // JSON text cannot say it (below), a built value can
  const JsonValue root(j, "t.json");
  EXPECT_THAT(error_of([&] { root["model"]["vocab"].entry("abc").get<long long>(); }),
              HasSubstr("t.json: model.vocab[\"abc\"]: expected an integer, found string \"x\""));
  EXPECT_EQ(root["model"]["vocab"]["a b"].path(), "model.vocab[\"a b\"]");
  EXPECT_THAT(error_of([&] { root["model"]["n"].get<int>(); }), HasSubstr("t.json: model.n: expected an integer, found number 3.5"));
  EXPECT_DOUBLE_EQ(root["model"]["n"].get<double>(), 3.5);
  EXPECT_THAT(error_of([&] { root["model"]["big"].get<long long>(); }), HasSubstr("model.big: expected an integer in range"));
  EXPECT_THAT(error_of([&] { root["model"]["neg"].get<std::size_t>(); }), HasSubstr("model.neg: expected a non-negative integer"));
  EXPECT_THAT(error_of([&] { root["model"]["list"].get<std::vector<int>>(); }),
              HasSubstr("model.list[1]: expected an integer, found string \"2\""));
  EXPECT_THAT(error_of([&] { root["model"]["inf"].get<double>(); }), HasSubstr("model.inf: expected a finite number"));
  EXPECT_THAT(error_of([&] { root["model"]["missing"]; }), HasSubstr("t.json: model: missing \"missing\""));
  EXPECT_THAT(error_of([&] { root["model"]["list"][5]; }), HasSubstr("model.list: has 2 elements, index 5 is missing"));
  EXPECT_THAT(error_of([&] { root["model"]["n"]["x"]; }), HasSubstr("model.n: expected an object, found number 3.5"));
  EXPECT_EQ(root["model"].get_or("absent", 7), 7);
  EXPECT_TRUE(root.optional("absent").is_null());
  EXPECT_TRUE(root.optional("absent").elements().empty());
}

TEST(JsonRead, RoutingResultsWithWrongTypesNameTheEntryAndKey) {
  moelab::test::TempDir dir;
  auto error = [&](const std::string& text) {
    return error_of([&] { moelab::read_routing_results(dir.write("rr.json", text)); });
  };
  const std::string file = (dir.path() / "rr.json").string();
  EXPECT_THAT(error(R"({"q1": {"input_text": 5, "correct_answer": "A", "last_token_routing": {"layers": []}}})"),
              HasSubstr(file + " [\"q1\"]: input_text: expected a string, found number 5"));
  EXPECT_THAT(error(R"({"q1": {"input_text": "x", "correct_answer": "A", "last_token_routing": {"layers": [{"layer": 1, "routing_weights": {"expert_0": "high"}}]}}})"),
              HasSubstr(file + " [\"q1\"]: last_token_routing.layers[0].routing_weights[\"expert_0\"]: expected a finite number, found string \"high\""));
  EXPECT_THAT(error(R"({"q1": {"input_text": "x", "correct_answer": "A", "last_token_routing": {"layers": [{"layer": "1", "routing_weights": {}}]}}})"),
              HasSubstr(file + " [\"q1\"]: last_token_routing.layers[0].layer: expected an integer"));
  EXPECT_THAT(error(R"({"q1": {"input_text": "x", "correct_answer": "A", "last_token_routing": {"layers": [{"layer": 1, "routing_weights": {"expert_99999999999": 0.5}}]}}})"),
              HasSubstr("routing key \"expert_99999999999\" is not expert_<e>"));
  EXPECT_THAT(error(R"({"q1": {"input_text": "x", "correct_answer": "A", "choice_letters": "AB", "last_token_routing": {"layers": []}}})"),
              HasSubstr(file + " [\"q1\"]: choice_letters: expected a list, found string \"AB\""));
  EXPECT_THAT(error(R"({"q1": [1]})"), HasSubstr(file + " [\"q1\"]: expected an object, found array"));
  EXPECT_THAT(error("{\"q1\": " + std::string(1000, '[') + std::string(1000, ']') + "}"), HasSubstr(file + ": not valid JSON: nesting deeper"));
}

TEST(JsonRead, GenerationConfigIsCheckedAsItIsRead) {
  moelab::test::TempDir dir;
  dir.write("config.json", R"({"eos_token_id": 2})");
  dir.write("generation_config.json", R"({"max_new_tokens": "64"})");
  EXPECT_THAT(error_of([&] { moelab::generation_config(dir.path()); }),
              HasSubstr("generation_config.json: max_new_tokens: expected an integer, found string \"64\""));
  dir.write("generation_config.json", R"({"max_new_tokens": 0})");
  EXPECT_THAT(error_of([&] { moelab::generation_config(dir.path()); }),
              HasSubstr("generation_config.json: max_new_tokens: expected a positive number of tokens, found 0"));
  dir.write("generation_config.json", std::string(1000, '[') + std::string(1000, ']'));
  EXPECT_THAT(error_of([&] { moelab::stop_token_ids(dir.path()); }), HasSubstr("generation_config.json: not valid JSON: nesting deeper"));
  dir.write("generation_config.json", R"({"max_new_tokens": 32, "eos_token_id": [2, 3]})");
  EXPECT_EQ(moelab::generation_config(dir.path())["max_new_tokens"], 32);
  EXPECT_EQ(moelab::stop_token_ids(dir.path()), (std::vector<std::int64_t>{2, 3}));
}

}  // namespace
