// Dataset of JSON Lines records: multiple-choice items or plain text. Known forms are recognized per
// record (form = "auto"): ARC ({"question": {"stem", "choices"}} or Hugging Face's {"question",
// "choices": {"text", "label"}}), OpenBookQA ("question_stem"), SciQ ("correct_answer" and
// "distractor1-3", shuffled with the run seed), HellaSwag ({"ctx", "endings", "label"}; lm-eval's
// context and cleaning), Winogrande ({"sentence" with "_", "option1", "option2", "answer"}; lm-eval's
// partial scoring: per-option contexts, one continuation) and the RoMA seed form ({"question", "choices":
// ["A) ...", ...], "answer"}). Otherwise the *_field keys are dotted paths into each record; choices
// may be strings or {"text","label"} objects, and answers a letter, a 0-based index, or a numeric key
// "1".."N" (ARC's numeric items, shown as A..N as lm-eval does).
#include "moelab/moelab.h"

#include <fstream>
#include <random>

namespace {

using moelab::Example;
using nlohmann::json;

enum class Form { automatic, arc, openbookqa, sciq, hellaswag, winogrande, fields };

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
                   {"hellaswag", Form::hellaswag}, {"winogrande", Form::winogrande}, {"fields", Form::fields}},
                  "record form: auto-detect ARC/HF ARC/seed, OpenBookQA, SciQ, HellaSwag, Winogrande; or \"fields\" (the *_field paths only)")
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
      json record;
      try {
        record = json::parse(line);
      } catch (const json::parse_error& e) {
        throw std::runtime_error(fmt::format("{}: not valid JSON: {}", origin, e.what()));
      }
      examples_.push_back(to_example(normalized(record, origin), settings_, origin, examples_.size()));
      if (limit > 0 && static_cast<long long>(examples_.size()) >= limit) break;
    }
    if (examples_.empty()) throw std::runtime_error(fmt::format("{}: no records", path.string()));
  }

  std::size_t size() const override { return examples_.size(); }
  const Example& at(std::size_t index) const override { return examples_.at(index); }

 private:
  // Rewrites a record of a known form into the ARC form the field defaults read; others pass as they are.
  json normalized(const json& record, const std::string& origin) const {
    if (settings_.form == Form::fields || !record.is_object()) return record;
    auto has = [&](const char* key) { return record.contains(key); };
    auto may_be = [&](Form form) { return settings_.form == Form::automatic || settings_.form == form; };
    json arc = record;
    if (has("endings") && has("ctx") && may_be(Form::hellaswag)) return hellaswag(record);
    if (has("sentence") && has("option1") && has("option2") && may_be(Form::winogrande)) return winogrande(record, origin);
    if (has("question_stem") && may_be(Form::openbookqa)) {
      arc["question"] = {{"stem", record["question_stem"]}, {"choices", record.at("choices")}};
    } else if (has("correct_answer") && has("distractor1") && may_be(Form::sciq)) {
      std::vector<json> options = {record["correct_answer"]};
      for (const char* d : {"distractor1", "distractor2", "distractor3"})
        if (has(d)) options.push_back(record[d]);
      std::vector<std::size_t> order(options.size());
      for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
      std::mt19937_64 rng(shuffle_seed_ ^ std::hash<std::string>{}(record.value("id", record.value("question", origin))));
      std::shuffle(order.begin(), order.end(), rng);
      json choices = json::array();
      std::string gold;
      for (std::size_t i = 0; i < order.size(); ++i) {
        std::string letter(1, static_cast<char>('A' + i));
        choices.push_back({{"text", options[order[i]]}, {"label", letter}});
        if (order[i] == 0) gold = letter;
      }
      arc["question"] = {{"stem", record.at("question")}, {"choices", choices}};
      arc["answerKey"] = gold;
    } else if (has("question") && record["question"].is_string() && has("choices") && may_be(Form::arc)) {
      const json& c = record["choices"];
      json choices = json::array();
      if (c.is_object() && c.contains("text")) {  // Hugging Face ARC: parallel text and label lists
        for (std::size_t i = 0; i < c["text"].size(); ++i)
          choices.push_back({{"text", c["text"][i]}, {"label", c.contains("label") ? c["label"][i] : json(std::string(1, 'A' + i))}});
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
    }
    return arc;
  }

  // lm-eval's HellaSwag: context "<activity>: <ctx_a> <Ctx_b>", cleaned of WikiHow's [title]/[step]
  // markers; each ending is a continuation of it.
  static std::string hellaswag_clean(std::string text) {
    text.erase(0, text.find_first_not_of(" \t\n"));
    text.erase(text.find_last_not_of(" \t\n") + 1);
    for (std::size_t at; (at = text.find(" [title]")) != std::string::npos;) text.replace(at, 8, ". ");
    for (std::size_t open; (open = text.find('[')) != std::string::npos;) {
      std::size_t close = text.find(']', open);
      if (close == std::string::npos) break;
      text.erase(open, close - open + 1);
    }
    for (std::size_t at; (at = text.find("  ")) != std::string::npos;) text.replace(at, 2, " ");
    return text;
  }

  static json hellaswag(const json& record) {
    std::string ctx_b = record.value("ctx_b", "");
    if (!ctx_b.empty()) ctx_b[0] = static_cast<char>(std::toupper(static_cast<unsigned char>(ctx_b[0])));
    std::string ctx = record.contains("ctx_a") ? record["ctx_a"].get<std::string>() + " " + ctx_b : record["ctx"].get<std::string>();
    std::string query = hellaswag_clean(record.value("activity_label", "") + ": " + ctx);
    json choices = json::array();
    for (std::size_t i = 0; i < record["endings"].size(); ++i)
      choices.push_back({{"text", hellaswag_clean(record["endings"][i].get<std::string>())}, {"label", std::string(1, static_cast<char>('A' + i))}});
    json label = record.at("label");
    long long gold = label.is_string() ? std::stoll(label.get<std::string>()) : label.get<long long>();
    json arc = record;
    arc["question"] = {{"stem", query}, {"choices", choices}};
    arc["answerKey"] = std::string(1, static_cast<char>('A' + gold));
    arc["loglik_context"] = query;
    return arc;
  }

  // lm-eval's Winogrande (partial scoring): each option fills the blank in its own context, and the
  // rest of the sentence is the one continuation scored under every context.
  static json winogrande(const json& record, const std::string& origin) {
    std::string sentence = record["sentence"].get<std::string>();
    std::size_t blank = sentence.find('_');
    if (blank == std::string::npos) throw std::runtime_error(fmt::format("{}: winogrande sentence has no \"_\" blank", origin));
    std::string rest = sentence.substr(blank + 1);
    rest.erase(0, rest.find_first_not_of(' '));
    json arc = record;
    json options = {record["option1"], record["option2"]};
    arc["question"] = {{"stem", sentence}, {"choices", {{{"text", options[0]}, {"label", "A"}}, {{"text", options[1]}, {"label", "B"}}}}};
    std::string answer = record.at("answer").is_string() ? record["answer"].get<std::string>() : record["answer"].dump();
    if (answer != "1" && answer != "2") throw std::runtime_error(fmt::format("{}: winogrande answer must be \"1\" or \"2\", found {}", origin, answer));
    arc["answerKey"] = answer == "1" ? "A" : "B";
    arc["loglik_contexts"] = {sentence.substr(0, blank) + options[0].get<std::string>(), sentence.substr(0, blank) + options[1].get<std::string>()};
    arc["loglik_continuation"] = " " + rest;
    return arc;
  }

  static Example to_example(const json& record, const Settings& settings, const std::string& origin, std::size_t row) {
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
    if (choices->is_object() && choices->contains("text")) choices = &(*choices)["text"];  // {"text": [...], "label": [...]}
    if (!choices->is_array()) throw std::runtime_error(fmt::format("{}: choices must be an array", origin));
    for (std::size_t i = 0; i < choices->size(); ++i) {
      const json& c = (*choices)[i];
      if (c.is_string()) {
        ex.choices.push_back(c.get<std::string>());
        ex.letters.push_back(std::string(1, static_cast<char>('A' + i)));
      } else if (c.is_object() && c.contains("text")) {
        ex.choices.push_back(c["text"].get<std::string>());
        ex.letters.push_back(c.contains("label") ? c["label"].get<std::string>() : std::string(1, static_cast<char>('A' + i)));
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
