// Dataset of JSON Lines records: multiple-choice items or plain text. Known forms are recognized per
// record (form = "auto") and prepared as lm-evaluation-harness's task definitions prepare them: ARC
// ({"question": {"stem", "choices"}} or Hugging Face's {"question", "choices": {"text", "label"}}),
// OpenBookQA ("question_stem"), SciQ ("correct_answer" and "distractor1-3", shuffled with the run seed
// for letters), HellaSwag ({"activity_label", "ctx_a", "ctx_b", "endings", "label"}), Winogrande
// ({"sentence" with "_", "option1", "option2", "answer"}; partial scoring), PIQA ({"goal", "sol1", "sol2",
// "label"}) and the RoMA seed form ({"question", "choices": ["A) ...", ...], "answer"}). Each such record
// carries record["lm_eval"]: the task, its loglikelihood requests (context, continuation) per choice,
// its metrics, and the scorings it allows, default first (HellaSwag, Winogrande, PIQA: loglik only).
// Otherwise the *_field keys are dotted paths into each record; choices may be strings or
// {"text","label"} objects, and answers a letter, a 0-based index, or a numeric key "1".."N" (ARC's
// numeric items, shown as A..N as lm-eval does).
#include "moelab/moelab.h"
#include "moelab/lib/json_read.h"
#include "moelab/lib/python_str.h"
#include "moelab/lib/seeded.h"

#include <fstream>

namespace {

using moelab::Example;
using moelab::JsonValue;
using nlohmann::json;

enum class Form { automatic, arc, openbookqa, sciq, hellaswag, winogrande, piqa, fields };

struct Settings {
  std::filesystem::path path;
  Form form;
  std::string text_field, choices_field, answer_field, id_field;
  long long limit;
};

const moelab::Options<Settings>& options() {
  static const auto o =
      moelab::Options<Settings>("jsonl", moelab::Kind::dataset, "0.1.0", "JSON Lines records: multiple choice or plain text")
          .path("path", &Settings::path, moelab::required, "the .jsonl file")
          .choice("form", &Settings::form, Form::automatic,
                  {{"auto", Form::automatic}, {"arc", Form::arc}, {"openbookqa", Form::openbookqa}, {"sciq", Form::sciq},
                   {"hellaswag", Form::hellaswag}, {"winogrande", Form::winogrande}, {"piqa", Form::piqa},
                   {"fields", Form::fields}},
                  "record form: auto-detect ARC/HF ARC/seed, OpenBookQA, SciQ, HellaSwag, Winogrande, PIQA; or \"fields\" (the *_field paths only)")
          .string("text_field", &Settings::text_field, "question.stem", "dotted path of the question or text")
          .string("choices_field", &Settings::choices_field, "question.choices", "dotted path of the choices (absent: plain text)")
          .string("answer_field", &Settings::answer_field, "answerKey", "dotted path of the answer (letter, label or index)")
          .string("id_field", &Settings::id_field, "id", "dotted path of the record id (absent: the row number)")
          .integer("limit", &Settings::limit, 0, "read at most this many records (0: all)");
  return o;
}

const json* lookup(const json& record, const std::string& dotted) {
  const json* at = &record;
  std::size_t start = 0;
  while (true) {
    std::size_t dot = dotted.find('.', start);
    std::string part = dotted.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    if (!at->is_object() || !at->contains(part)) return nullptr;
    at = &(*at)[part];
    if (dot == std::string::npos) return at;
    start = dot + 1;
  }
}

class JsonlDataset final : public moelab::Dataset {
 public:
  JsonlDataset(const moelab::Config& config, moelab::RunContext& context)
      : settings_(options().read(config)), shuffle_seed_(context.seed_for(config.id() + ".sciq")) {
    const std::filesystem::path& path = settings_.path;
    std::ifstream in(path);
    if (!in) throw std::runtime_error(fmt::format("{} ({}): cannot open {}", config.id(), config.where("path"), path.string()));
    const long long limit = settings_.limit;
    std::string line;
    for (long long number = 1; std::getline(in, line); ++number) {
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      std::string origin = fmt::format("{}:{}", path.string(), number);
      const json record = moelab::parse_json(line, origin);
      const json prepared = normalized(JsonValue(record, origin));
      examples_.push_back(to_example(JsonValue(prepared, origin), settings_, examples_.size()));
      if (limit > 0 && static_cast<long long>(examples_.size()) >= limit) break;
    }
    if (examples_.empty()) throw std::runtime_error(fmt::format("{}: no records", path.string()));
  }

  std::size_t size() const override { return examples_.size(); }
  const Example& at(std::size_t index) const override { return examples_.at(index); }

 private:
  // Rewrites a record of a known form into the ARC form the field defaults read, with its lm-eval
  // requests in record["lm_eval"]; others pass as they are. Errors name the line and the key.
  json normalized(const JsonValue& r) const {
    const json& record = r.json();
    if (settings_.form == Form::fields || !record.is_object()) return record;
    auto has = [&](const char* key) { return record.contains(key); };
    auto may_be = [&](Form form) { return settings_.form == Form::automatic || settings_.form == form; };
    if (has("endings") && has("ctx_a") && may_be(Form::hellaswag)) return hellaswag(r);
    if (has("sentence") && has("option1") && has("option2") && may_be(Form::winogrande)) return winogrande(r);
    if (has("goal") && has("sol1") && has("sol2") && may_be(Form::piqa)) return piqa(r);
    json arc = record;
    if (has("question_stem") && may_be(Form::openbookqa)) {
      arc["question"] = {{"stem", record["question_stem"]}, {"choices", r["choices"].json()}};
      if (has("answerKey") && record["answerKey"].is_string()) arc["answerKey"] = std::string(moelab::py::lstrip(record["answerKey"].get<std::string>()));
      arc["lm_eval"] = shared_context("openbookqa", r["question_stem"].get<std::string>(), r["choices"], kLetterOrLoglik);
    } else if (has("correct_answer") && has("distractor1") && may_be(Form::sciq)) {
      std::vector<json> options = {record["correct_answer"]};
      for (const char* d : {"distractor1", "distractor2", "distractor3"})
        if (has(d)) options.push_back(record[d]);
      std::vector<std::size_t> order(options.size());
      for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
      const std::string question = r["question"].get<std::string>();
      const std::string key = !has("id") ? question : record["id"].is_string() ? record["id"].get<std::string>() : record["id"].dump();
      moelab::SeededRng rng(shuffle_seed_ ^ moelab::stable_hash(key));
      rng.shuffle(order);
      json choices = json::array();
      std::string gold;
      for (std::size_t i = 0; i < order.size(); ++i) {
        std::string letter(1, static_cast<char>('A' + i));
        choices.push_back({{"text", options[order[i]]}, {"label", letter}});
        if (order[i] == 0) gold = letter;
      }
      arc["question"] = {{"stem", question}, {"choices", choices}};
      arc["answerKey"] = gold;
      const std::string support(moelab::py::lstrip(r.get_or<std::string>("support", "")));
      arc["lm_eval"] = shared_context("sciq", support + "\nQuestion: " + question + "\nAnswer:", JsonValue(choices, r.origin(), "choices"),
                                      kLetterOrLoglik);
    } else if (has("question") && record["question"].is_object() && record["question"].contains("stem") && may_be(Form::arc)) {
      const JsonValue question = r["question"];
      const json no_choices = json::array();
      arc["lm_eval"] = shared_context("arc", "Question: " + question["stem"].get<std::string>() + "\nAnswer:",
                                      question.has("choices") ? question["choices"] : JsonValue(no_choices, r.origin()), kLetterOrLoglik);
    } else if (has("question") && record["question"].is_string() && has("choices") && may_be(Form::arc)) {
      const json& c = record["choices"];
      json choices = json::array();
      if (c.is_object() && c.contains("text")) {  // Hugging Face ARC: parallel text and label lists
        const std::vector<JsonValue> texts = r["choices"]["text"].expect_list().elements();
        const bool labelled = c.contains("label");
        if (labelled && (!c["label"].is_array() || c["label"].size() != texts.size()))
          throw r["choices"]["label"].error(fmt::format("expected a list of {} labels, one per choices.text, found {}", texts.size(),
                                                        JsonValue::describe(c["label"])));
        for (std::size_t i = 0; i < texts.size(); ++i)
          choices.push_back({{"text", texts[i].json()}, {"label", labelled ? c["label"][i] : json(std::string(1, 'A' + i))}});
      } else if (c.is_array()) {  // the seed form: "A) text"
        for (std::size_t i = 0; i < c.size(); ++i) {
          std::string text = c[i].is_string() ? c[i].get<std::string>() : c[i].dump();
          std::string letter(1, static_cast<char>('A' + i));
          if (text.size() >= 3 && text.compare(0, 1, letter) == 0 && (text[1] == ')' || text[1] == '.') && text[2] == ' ') text = text.substr(3);
          choices.push_back({{"text", text}, {"label", letter}});
        }
      }
      arc["question"] = {{"stem", record["question"]}, {"choices", choices}};
      if (!has("answerKey") && has("answer")) {
        json answer = record["answer"];
        if (answer.is_string() && answer.get<std::string>().size() > 1) answer = answer.get<std::string>().substr(0, 1);  // "B) ..." -> "B"
        arc["answerKey"] = answer;
      }
      arc["lm_eval"] = shared_context("arc", "Question: " + record["question"].get<std::string>() + "\nAnswer:",
                                      JsonValue(choices, r.origin(), "choices"), kLetterOrLoglik);
    }
    return arc;
  }

  // Scorings a form allows, its default first.
  static inline const json kLetterOrLoglik = json::array({"letter", "loglik"}), kLoglikOnly = json::array({"loglik"});

  // lm-eval's multiple-choice requests with one context: each choice's text after target_delimiter " ".
  static json shared_context(const std::string& task, const std::string& context, const JsonValue& choices, const json& scorings) {
    json requests = json::array();
    const JsonValue texts = choices.json().is_object() && choices.json().contains("text") ? choices["text"] : choices;
    for (const JsonValue& c : texts.expect_list().elements()) {
      const json& text = c.json().is_object() ? c["text"].json() : c.json();
      requests.push_back({{"context", context}, {"continuation", " " + (text.is_string() ? text.get<std::string>() : text.dump())}});
    }
    return {{"task", task}, {"requests", requests}, {"metrics", json::array({"acc", "acc_norm"})}, {"scorings", scorings}};
  }

  // lm-eval's HellaSwag preprocess: strip, " [title]" -> ". ", drop [...] (regex \[.*?\], which stops at a
  // line break), then one str.replace pass of "  " -> " ".
  static std::string hellaswag_preprocess(std::string_view raw) {
    const std::string titled = moelab::py::replace(moelab::py::strip(raw), " [title]", ". ");
    std::string unbracketed;
    for (std::size_t i = 0; i < titled.size(); ++i) {
      if (titled[i] == '[') {
        std::size_t close = titled.find_first_of("]\n", i + 1);
        if (close != std::string::npos && titled[close] == ']') {
          i = close;
          continue;
        }
      }
      unbracketed.push_back(titled[i]);
    }
    return moelab::py::replace(unbracketed, "  ", " ");
  }

  // lm-eval's HellaSwag: query "<activity_label>: <ctx_a> <ctx_b.capitalize()>", preprocessed, as the
  // context of every preprocessed ending.
  static json hellaswag(const JsonValue& r) {
    const json& record = r.json();
    auto text = [&](const char* key) {
      if (!record.contains(key) || !record[key].is_string())
        throw std::runtime_error(fmt::format("{}: hellaswag record needs the string \"{}\"", r.origin(), key));
      return record[key].get<std::string>();
    };
    const std::string ctx = text("ctx_a") + " " + moelab::py::capitalize(text("ctx_b"));
    const std::string query = hellaswag_preprocess(text("activity_label") + ": " + ctx);
    const std::vector<std::string> endings = r["endings"].get<std::vector<std::string>>();
    json choices = json::array();
    for (std::size_t i = 0; i < endings.size(); ++i)
      choices.push_back({{"text", hellaswag_preprocess(endings[i])}, {"label", std::string(1, static_cast<char>('A' + i))}});
    const json& label = r["label"].json();
    long long gold = -1;
    try {
      gold = label.is_string() ? std::stoll(label.get<std::string>()) : label.is_number_integer() ? label.get<long long>() : -1;
    } catch (const std::exception&) {
    }
    if (gold < 0 || gold >= static_cast<long long>(endings.size()))
      throw std::runtime_error(fmt::format("{}: hellaswag label must be the index of one of the {} endings, found {}", r.origin(), endings.size(), label.dump()));
    json arc = record;
    arc["question"] = {{"stem", query}, {"choices", choices}};
    arc["answerKey"] = std::string(1, static_cast<char>('A' + gold));
    arc["lm_eval"] = shared_context("hellaswag", query, JsonValue(choices, r.origin(), "endings"), kLoglikOnly);
    return arc;
  }

  // lm-eval's Winogrande (partial scoring): each option fills the blank in its own context, and the
  // rest of the sentence after "_", stripped, is the one continuation scored after every context; acc only.
  static json winogrande(const JsonValue& r) {
    const json& record = r.json();
    const std::string sentence = r["sentence"].get<std::string>();
    const std::size_t blank = sentence.find('_');
    if (blank == std::string::npos) throw std::runtime_error(fmt::format("{}: winogrande sentence has no \"_\" blank", r.origin()));
    const std::string continuation = " " + std::string(moelab::py::strip(std::string_view(sentence).substr(blank + 1)));
    json arc = record;
    const std::vector<std::string> options = {r["option1"].get<std::string>(), r["option2"].get<std::string>()};
    arc["question"] = {{"stem", sentence}, {"choices", {{{"text", options[0]}, {"label", "A"}}, {{"text", options[1]}, {"label", "B"}}}}};
    const json& answer_json = r["answer"].json();
    std::string answer = answer_json.is_string() ? answer_json.get<std::string>() : answer_json.dump();
    if (answer != "1" && answer != "2") throw std::runtime_error(fmt::format("{}: winogrande answer must be \"1\" or \"2\", found {}", r.origin(), answer));
    arc["answerKey"] = answer == "1" ? "A" : "B";
    json requests = json::array();
    for (const std::string& option : options) requests.push_back({{"context", sentence.substr(0, blank) + option}, {"continuation", continuation}});
    arc["lm_eval"] = {{"task", "winogrande"}, {"requests", requests}, {"metrics", json::array({"acc"})}, {"scorings", kLoglikOnly}};
    return arc;
  }

  // lm-eval's PIQA: "Question: <goal>\nAnswer:" with the two solutions as choices.
  static json piqa(const JsonValue& r) {
    const json& record = r.json();
    json arc = record;
    json choices = {{{"text", r["sol1"].get<std::string>()}, {"label", "A"}}, {{"text", r["sol2"].get<std::string>()}, {"label", "B"}}};
    const json label = record.contains("label") ? record["label"] : json();
    if (!label.is_number_integer() || (label.get<long long>() != 0 && label.get<long long>() != 1))
      throw std::runtime_error(fmt::format("{}: piqa label must be 0 or 1, found {}", r.origin(), label.dump()));
    const std::string goal = r["goal"].get<std::string>();
    arc["question"] = {{"stem", goal}, {"choices", choices}};
    arc["answerKey"] = label.get<long long>() == 0 ? "A" : "B";
    arc["lm_eval"] = shared_context("piqa", "Question: " + goal + "\nAnswer:", JsonValue(choices, r.origin(), "choices"), kLoglikOnly);
    return arc;
  }

  static Example to_example(const JsonValue& r, const Settings& settings, std::size_t row) {
    const json& record = r.json();
    const std::string& origin = r.origin();
    Example ex;
    ex.origin = origin;
    ex.record = record;
    const json* text = lookup(record, settings.text_field);
    if (!text || !text->is_string())
      throw std::runtime_error(fmt::format("{}: field '{}' (text_field) missing or not a string", origin, settings.text_field));
    ex.text = text->get<std::string>();
    const json* id = lookup(record, settings.id_field);
    ex.id = !id ? std::to_string(row) : id->is_string() ? id->get<std::string>() : id->dump();
    const json* choices = lookup(record, settings.choices_field);
    if (!choices) return ex;
    std::string choices_path = settings.choices_field;
    if (choices->is_object() && choices->contains("text")) {  // {"text": [...], "label": [...]}
      choices = &(*choices)["text"];
      choices_path += ".text";
    }
    if (!choices->is_array()) throw std::runtime_error(fmt::format("{}: choices must be an array", origin));
    const JsonValue listed(*choices, origin, choices_path);
    for (std::size_t i = 0; i < choices->size(); ++i) {
      const json& c = (*choices)[i];
      if (c.is_string()) {
        ex.choices.push_back(c.get<std::string>());
        ex.letters.push_back(std::string(1, static_cast<char>('A' + i)));
      } else if (c.is_object() && c.contains("text")) {
        ex.choices.push_back(listed[i]["text"].get<std::string>());
        ex.letters.push_back(c.contains("label") ? listed[i]["label"].get<std::string>() : std::string(1, static_cast<char>('A' + i)));
      } else {
        throw std::runtime_error(fmt::format("{}: choice {} is neither a string nor {{\"text\", \"label\"}}", origin, i));
      }
    }
    ex.answer = answer_index(lookup(record, settings.answer_field), ex, origin);
    // Numeric labels ("1".."4") are shown as letters, as lm-eval does for ARC.
    for (std::size_t i = 0; i < ex.letters.size(); ++i)
      if (ex.letters[i] == std::to_string(i + 1)) ex.letters[i] = std::string(1, static_cast<char>('A' + i));
    return ex;
  }

  static long long answer_index(const json* answer, const Example& ex, const std::string& origin) {
    if (!answer) return -1;
    if (answer->is_number_integer()) {
      long long i = answer->get<long long>();
      if (i < 0 || i >= static_cast<long long>(ex.choices.size()))
        throw std::runtime_error(fmt::format("{}: answer index {} outside the {} choices", origin, i, ex.choices.size()));
      return i;
    }
    if (!answer->is_string()) throw std::runtime_error(fmt::format("{}: answer must be a string or an index", origin));
    std::string key = answer->get<std::string>();
    for (std::size_t i = 0; i < ex.letters.size(); ++i)
      if (ex.letters[i] == key) return static_cast<long long>(i);
    throw std::runtime_error(fmt::format("{}: answer \"{}\" is not one of the choice labels", origin, key));
  }

  Settings settings_;
  std::uint64_t shuffle_seed_;
  std::vector<Example> examples_;
};

}  // namespace

MOELAB_PLUGIN(options, JsonlDataset)
