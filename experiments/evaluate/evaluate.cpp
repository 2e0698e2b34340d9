// Multiple-choice evaluation of the base model and of finetuned routers in the same run. "letter":
// the answer is the letter whose token has the highest logit at the last prompt token (never decoded
// text). "loglik": lm-evaluation-harness's scoring (moelab/loglik.h) of each choice's request, from the
// dataset form's lm-eval task definition (record["lm_eval"]) or else loglik_template + " " + choice;
// acc takes the highest loglik, acc_norm the highest per character of the choice text; a context runs
// once for all its choices unless shared_prefix = false. "auto" (the default) scores each form as
// lm-eval does (HellaSwag, Winogrande, PIQA: loglik; ARC, OpenBookQA, SciQ, the seed form and plain
// fields: letter), and the chosen scoring is logged. Reports every
// accuracy, the paired difference with a bootstrap 95% interval and an exact McNemar p-value, and warns
// when accuracy is within chance or one letter takes over 70% of the answers; predictions.json holds
// each question's predictions and each choice's loglik and is_greedy (letter: of its letter token).
// results.json and samples_<task>_<date>.jsonl are lm-evaluation-harness's output files for the model as
// loaded (moelab/lib/lm_eval_results.h); with routers, finetuned/ holds the finetuned model's, one model
// per results file as lm-eval writes them. Letter scoring is reported as the task "<task>_letter".
#include "moelab/moelab.h"
#include "moelab/lib/distributed.h"
#include "moelab/lib/files.h"
#include "moelab/lib/finite.h"
#include "moelab/lib/lm_eval_results.h"
#include "moelab/lib/log.h"
#include "moelab/lib/loglik.h"
#include "moelab/lib/multiple_choice.h"
#include "moelab/lib/paired.h"
#include "moelab/lib/prompt.h"
#include "moelab/lib/python_str.h"
#include "moelab/lib/router_checkpoint.h"

#include <fmt/ranges.h>

#include <chrono>
#include <set>

namespace {

enum class Scoring { automatic, letter, loglik };
const std::vector<std::pair<std::string, Scoring>> kScorings = {
    {"auto", Scoring::automatic}, {"letter", Scoring::letter}, {"loglik", Scoring::loglik}};

struct Settings {
  std::string dataset;
  std::string task;
  std::filesystem::path routers;
  Scoring scoring;
  std::string loglik_template;
  bool add_bos_token;
  bool shared_prefix;
  std::size_t batch_size;
  long long bootstrap;
  moelab::PromptOptions prompt;
};

const moelab::Options<Settings>& options() {
  static const auto o =
      moelab::Options<Settings>("evaluate", moelab::Kind::stage, "0.3.0", "paired multiple-choice evaluation: base vs finetuned routers")
          .component("dataset", &Settings::dataset, moelab::Kind::dataset, "evaluation questions")
          .string("task", &Settings::task, "",
                  "lm-eval task name of the questions for results.json (arc_easy, arc_challenge, openbookqa, sciq, hellaswag, winogrande, "
                  "piqa); empty: the records' form, or for ARC records the dataset table's name (data.arc_challenge)")
          .path("routers", &Settings::routers, "", "router checkpoint to compare with the base (\"@train/routers.safetensors\"); empty: base only")
          .choice("scoring", &Settings::scoring, Scoring::automatic, kScorings,
                  "auto: lm-eval's scoring of the dataset form (loglik for HellaSwag, Winogrande, PIQA; letter otherwise); letter: "
                  "answer-letter logits after the prompt; loglik: lm-eval per-choice log-likelihood (acc, acc_norm)")
          .string("loglik_template", &Settings::loglik_template, "Question: {question}\nAnswer:",
                  "loglik context ({question}) for records without an lm-eval form (jsonl form = \"fields\")")
          .flag("add_bos_token", &Settings::add_bos_token, false,
                "loglik: encode with the tokenizer's special tokens (BOS), as lm-eval's add_bos_token")
          .flag("shared_prefix", &Settings::shared_prefix, true,
                "loglik: run a context once for all choices that share its ids (KV cache) and project only continuation positions to "
                "the vocabulary; false: one padded row per choice, as lm-eval")
          .integer("batch_size", &Settings::batch_size, 16, "questions (loglik: choice rows) per forward").at_least(1)
          .integer("bootstrap", &Settings::bootstrap, 2000, "bootstrap resamples for the paired interval")
          .include(&Settings::prompt, moelab::prompt_options());
  return o;
}

// A question's labels and gold answer, whichever scoring reads it.
struct Question {
  std::string key;
  std::vector<std::string> letters;
  long long answer = -1;
};

struct Scores {
  std::vector<long long> predicted;
  std::vector<bool> correct;
  double accuracy = 0;
};

// One model's scoring: predictions per metric and each question's per-choice results (letter: the
// log-probability of each choice's letter token after the prompt).
struct Scored {
  std::map<std::string, Scores> metrics;
  std::vector<std::vector<moelab::LoglikResult>> choices;
};

// The task results.json reports: lm-eval's definition when the questions are one of its tasks.
struct ResultsTask {
  std::string name;
  const moelab::lm_eval::TaskDefinition* lm_eval = nullptr;
  nlohmann::ordered_json config;
};

class Evaluate final : public moelab::Stage {
 public:
  Evaluate(const moelab::Config& config, moelab::RunContext& context)
      : config_(config), settings_(options().read(config)), context_(context), dataset_(context.make<moelab::Dataset>(settings_.dataset)) {}

  void run(const std::filesystem::path& out_dir, nlohmann::json& summary) override {
    moelab::Model& model = context_.model();
    std::vector<Question> questions;
    for (std::size_t i = 0; i < dataset_->size(); ++i) questions.push_back(question(dataset_->at(i)));
    if (questions.empty()) throw std::runtime_error(fmt::format("[{}] the dataset has no questions", config_.id()));
    scoring_ = resolve_scoring();
    const ResultsTask task = resolve_task();
    if (scoring_ == Scoring::letter)
      for (std::size_t i = 0; i < dataset_->size(); ++i)
        letter_items_.push_back(moelab::prepare_item(dataset_->at(i), context_.tokenizer(), settings_.prompt, settings_.prompt.max_len));
    double chance = 0;
    for (const auto& q : questions) chance += 1.0 / static_cast<double>(q.letters.size());
    chance /= static_cast<double>(questions.size());

    nlohmann::json report = {{"questions", questions.size()}, {"chance", chance}, {"scoring", moelab::choice_name(scoring_, kScorings)},
                             {"warnings", nlohmann::json::array()}};
    auto started = std::chrono::system_clock::now();
    Scored base = score_all(model, questions, "base");
    report["lm_eval"] = {{"task", task.name}, {"base", write_lm_eval(out_dir, "", task, base, questions, started, "")}};
    for (const auto& [metric, s] : base.metrics) report["base"][metric] = describe_scores(s, questions, chance, "base " + metric, report["warnings"]);
    Scored tuned;
    if (!settings_.routers.empty()) {
      std::filesystem::path file = context_.run_path(settings_.routers);
      moelab::RestoreModelOnExit restore(model, /*experts=*/false);
      auto moved = moelab::apply_router_checkpoint(file, model);
      started = std::chrono::system_clock::now();
      tuned = score_all(model, questions, "finetuned");
      report["lm_eval"]["finetuned"] = write_lm_eval(out_dir, "finetuned", task, tuned, questions, started, file.string());
      for (const auto& [metric, s] : tuned.metrics) {
        report["finetuned"][metric] = describe_scores(s, questions, chance, "finetuned " + metric, report["warnings"]);
        report["paired"][metric] = paired(base.metrics.at(metric), s);
      }
      for (const auto& [layer, change] : moved) report["router_change"][std::to_string(layer)] = change;
    }
    nlohmann::json per_item = nlohmann::json::array();
    for (std::size_t i = 0; i < questions.size(); ++i) {
      nlohmann::json row = {{"id", questions[i].key}, {"gold", questions[i].letters[static_cast<std::size_t>(questions[i].answer)]}};
      row["base"] = prediction_row(base, questions[i], i);
      if (!settings_.routers.empty()) row["finetuned"] = prediction_row(tuned, questions[i], i);
      per_item.push_back(row);
    }
    if (moelab::distributed::is_main()) {  // torchrun: every rank holds the gathered results; rank 0 writes them
      moelab::write_file_atomic(out_dir / "predictions.json", per_item.dump(1) + "\n");
      moelab::write_file_atomic(out_dir / "report.md", human(report));
    }
    summary = report;
    moelab::log::result(fmt::format("[{}] evaluate:", config_.id()), human(report));
  }

 private:
  static Question question(const moelab::Example& ex) {
    if (ex.letters.empty()) throw std::runtime_error(fmt::format("{}: item '{}' has no answer choices", ex.origin, ex.id));
    if (ex.answer < 0 || ex.answer >= static_cast<long long>(ex.letters.size()))
      throw std::runtime_error(fmt::format("{}: item '{}' has no gold answer among its {} choices", ex.origin, ex.id, ex.letters.size()));
    return {ex.id, ex.letters, ex.answer};
  }

  // The form's lm-eval task ("fields" without one) and the scorings it allows, default first.
  static std::pair<std::string, std::vector<std::string>> form_of(const moelab::Example& ex) {
    if (!ex.record.is_object() || !ex.record.contains("lm_eval")) return {"fields", {"letter", "loglik"}};
    const auto& lm_eval = ex.record["lm_eval"];
    return {lm_eval.at("task").get<std::string>(), lm_eval.at("scorings").get<std::vector<std::string>>()};
  }

  // `scoring` as set, or each form's default; a scoring a form does not allow is an error naming the key.
  Scoring resolve_scoring() const {
    std::map<std::string, std::string> defaults;  // default scoring -> a task that has it
    for (std::size_t i = 0; i < dataset_->size(); ++i) {
      const moelab::Example& ex = dataset_->at(i);
      const auto [task, allowed] = form_of(ex);
      defaults.emplace(allowed.front(), task);
      const std::string& wanted = moelab::choice_name(settings_.scoring, kScorings);
      if (settings_.scoring != Scoring::automatic && std::find(allowed.begin(), allowed.end(), wanted) == allowed.end())
        throw std::runtime_error(fmt::format("[{}] scoring = \"{}\" ({}): {} is a {} record, which lm-eval scores by {} only; set scoring = \"{}\" "
                                             "or \"auto\"",
                                             config_.id(), wanted, config_.where("scoring"), ex.origin, task, allowed.front(), allowed.front()));
    }
    Scoring chosen = settings_.scoring;
    std::string why = fmt::format("set at {}", config_.where("scoring"));
    if (chosen == Scoring::automatic) {
      if (defaults.size() > 1)
        throw std::runtime_error(fmt::format("[{}] scoring = \"auto\": dataset '{}' mixes forms scored by letter ({}) and by loglik ({}); set scoring",
                                             config_.id(), settings_.dataset, defaults.at("letter"), defaults.at("loglik")));
      chosen = defaults.begin()->first == "letter" ? Scoring::letter : Scoring::loglik;
      why = fmt::format("the {} form's lm-eval default", defaults.begin()->second);
    }
    if (chosen == Scoring::letter && settings_.add_bos_token)
      throw std::runtime_error(fmt::format("[{}] add_bos_token ({}) applies to loglik scoring only; this evaluation scores by letter ({})",
                                           config_.id(), config_.where("add_bos_token"), why));
    moelab::log::info("evaluate [{}]: scoring {} ({})", config_.id(), moelab::choice_name(chosen, kScorings), why);
    return chosen;
  }

  // The task results.json names: `task` when set (an lm-eval name whose form the records have), else the
  // records' form (ARC: the dataset table's name when it is arc_easy or arc_challenge), else the dataset
  // table's name. Letter scoring is not lm-eval's scoring of these tasks: its results are "<task>_letter".
  ResultsTask resolve_task() const {
    std::set<std::string> forms;
    for (std::size_t i = 0; i < dataset_->size(); ++i) forms.insert(form_of(dataset_->at(i)).first);
    const std::string table = settings_.dataset.substr(settings_.dataset.rfind('.') + 1);
    ResultsTask task;
    if (!settings_.task.empty()) {
      task.lm_eval = moelab::lm_eval::find_task(settings_.task);
      std::vector<std::string> names;
      for (const auto& t : moelab::lm_eval::tasks()) names.push_back(t.name);
      if (!task.lm_eval)
        throw std::runtime_error(fmt::format("[{}] task = \"{}\" ({}): not an lm-eval task moelab's dataset forms implement; expected one of {}",
                                             config_.id(), settings_.task, config_.where("task"), fmt::join(names, ", ")));
      for (std::size_t i = 0; i < dataset_->size(); ++i) {
        const std::string form = form_of(dataset_->at(i)).first;
        if (form != task.lm_eval->form)
          throw std::runtime_error(fmt::format("[{}] task = \"{}\" ({}): {} holds a record of the {} form; lm-eval's {} reads the {} form "
                                               "(export it with scripts/hf_to_moelab_jsonl.py), or leave task empty",
                                               config_.id(), settings_.task, config_.where("task"), dataset_->at(i).origin, form, settings_.task,
                                               task.lm_eval->form));
      }
    } else if (forms.size() == 1 && *forms.begin() == "arc") {
      task.lm_eval = moelab::lm_eval::find_task(table);
      if (task.lm_eval && task.lm_eval->form != "arc") task.lm_eval = nullptr;
    } else if (forms.size() == 1) {
      task.lm_eval = moelab::lm_eval::find_task(*forms.begin());
    }
    task.name = task.lm_eval ? task.lm_eval->name : table;
    if (!task.lm_eval)
      moelab::log::info("evaluate [{}]: results.json names the task \"{}\" (the dataset table); set task = \"arc_challenge\" (or another lm-eval "
                        "task name) when the records are that task", config_.id(), task.name);
    moelab::lm_eval::TaskDefinition definition;
    if (task.lm_eval) {
      definition = *task.lm_eval;
    } else {
      definition.name = task.name;
      definition.dataset_path = dataset_file(dataset_->at(0));
      definition.doc_to_text = settings_.loglik_template;
      for (const auto& t : moelab::lm_eval::tasks())
        if (forms.size() == 1 && t.form == *forms.begin()) definition.doc_to_text = t.doc_to_text;
      definition.doc_to_target = "answer";
      definition.doc_to_choice = "choices";
    }
    if (scoring_ == Scoring::letter) {
      task.name += "_letter";
      definition.name = task.name;
      definition.doc_to_text = settings_.prompt.question_template;  // moelab's template: {choices} is one choice_template line per choice
      definition.doc_to_choice = "letters";
      definition.decontamination_query = nullptr;
    }
    nlohmann::json source = {{"stage", config_.id()},
                             {"dataset", settings_.dataset},
                             {"file", dataset_file(dataset_->at(0))},
                             {"scoring", moelab::choice_name(scoring_, kScorings)}};
    if (scoring_ == Scoring::letter) source["choice_template"] = settings_.prompt.choice_template;
    if (scoring_ == Scoring::letter && !settings_.prompt.chat_template.empty()) source["chat_template"] = settings_.prompt.chat_template;
    task.config = moelab::lm_eval::task_config(definition, {{"moelab", source}});
    return task;
  }

  static std::string dataset_file(const moelab::Example& ex) { return ex.origin.substr(0, ex.origin.rfind(':')); }

  // The (context, continuation) requests of question i as lm-eval logs them: the loglik requests, or the
  // prompt and each letter token's text.
  std::vector<std::pair<std::string, std::string>> arguments_of(std::size_t i) const {
    std::vector<std::pair<std::string, std::string>> out;
    if (scoring_ == Scoring::letter) {
      const moelab::McItem& item = letter_items_[i];
      for (std::int64_t id : item.letter_ids) out.emplace_back(item.prompt, context_.tokenizer().decode({id}));
      return out;
    }
    for (const auto& r : requests_of(dataset_->at(i))) out.emplace_back(r.at("context").get<std::string>(), r.at("continuation").get<std::string>());
    return out;
  }

  // results.json and samples_<task>_<date>.jsonl in out_dir/<folder> for one model (routers: its router
  // checkpoint, empty for the model as loaded); returns the files' paths in the stage folder.
  nlohmann::json write_lm_eval(const std::filesystem::path& out_dir, const std::string& folder, const ResultsTask& task, const Scored& scored,
                               const std::vector<Question>& questions, std::chrono::system_clock::time_point started, const std::string& routers) const {
    moelab::lm_eval::TaskResult result;
    result.name = task.name;
    result.config = task.config;
    result.version = task.lm_eval ? task.lm_eval->version : 1.0;
    const std::map<std::string, std::string> lm_eval_metric = {{"acc", "acc"}, {"acc_norm", "acc_norm"}, {"letter", "acc"}};
    result.config["metric_list"] = nlohmann::ordered_json::array();
    for (const auto& [metric, s] : scored.metrics) {
      result.metrics.push_back(lm_eval_metric.at(metric));
      result.config["metric_list"].push_back({{"metric", result.metrics.back()}, {"aggregation", "mean"}, {"higher_is_better", true}});
    }
    for (std::size_t i = 0; i < questions.size(); ++i) {
      moelab::lm_eval::Sample sample;
      sample.doc = dataset_->at(i).record;  // as the dataset prepared it, without its lm-eval requests (they are the arguments)
      if (sample.doc.is_object()) sample.doc.erase("lm_eval");
      sample.arguments = arguments_of(i);
      sample.resps = scored.choices.at(i);
      const std::size_t gold = static_cast<std::size_t>(questions[i].answer);
      sample.target = gold;
      if (task.lm_eval && task.lm_eval->target_is_continuation && scoring_ == Scoring::loglik)
        sample.target = std::string(moelab::py::lstrip(sample.arguments.at(gold).second));
      for (const auto& [metric, s] : scored.metrics) sample.metrics[lm_eval_metric.at(metric)] = s.correct[i] ? 1.0 : 0.0;
      result.samples.push_back(std::move(sample));
    }
    moelab::Model& model = context_.model();
    moelab::lm_eval::RunInfo run;
    const std::string pretrained = context_.model_folder().string();
    const std::string dtype = model.dtype() == torch::kBFloat16 ? "bfloat16"
                              : model.dtype() == torch::kFloat32 ? "float32"
                              : model.dtype() == torch::kFloat64 ? "float64"
                                                                  : c10::toString(model.dtype());
    run.model_args = fmt::format("pretrained={},dtype={}", pretrained, dtype);
    run.model_name = pretrained;
    if (!routers.empty()) {
      run.model_args += ",routers=" + routers;
      run.model_name = routers;  // as lm-eval names a model by its peft= adapter over pretrained=
    }
    long long parameters = 0;
    for (const auto& [name, weight] : model.named_weights()) parameters += weight.numel();
    run.config_extra = {{"batch_size", settings_.batch_size},
                        {"batch_sizes", nlohmann::json::array()},
                        {"device", model.device().str()},
                        {"use_cache", nullptr},
                        {"limit", nullptr},
                        {"bootstrap_iters", settings_.bootstrap},
                        {"gen_kwargs", nullptr},
                        {"random_seed", context_.seed()},
                        {"numpy_seed", nullptr},
                        {"torch_seed", nullptr},
                        {"fewshot_seed", nullptr},
                        {"model_dtype", dtype},
                        {"model_num_parameters", parameters},
                        {"add_bos_token", settings_.add_bos_token}};
    run.max_length = static_cast<long long>(settings_.prompt.max_len);
    run.git_hash = git_commit();
    run.start = started;
    run.end = std::chrono::system_clock::now();
    const std::string date = moelab::lm_eval::date_id(run.end);
    const std::string samples = fmt::format("samples_{}_{}.jsonl", task.name, date);
    const std::filesystem::path dir = out_dir / folder;
    if (moelab::distributed::is_main()) {
      std::filesystem::create_directories(dir);
      moelab::write_file_atomic(dir / "results.json", moelab::lm_eval::results_file({result}, run).dump(2) + "\n");
      moelab::write_file_atomic(dir / samples, moelab::lm_eval::samples_file(result));
      // lm-eval's own name for the results file, which its tools look for (results_<date>.json, the samples' date).
      std::filesystem::create_symlink("results.json", dir / ("results_" + date + ".json"));
    }
    return {{"results", (std::filesystem::path(folder) / "results.json").string()}, {"samples", (std::filesystem::path(folder) / samples).string()}};
  }

  // The moelab commit the run records (summary.json's versions.git_commit), or null when unknown.
  nlohmann::json git_commit() const {
    const std::filesystem::path file = context_.run_dir() / "summary.json";
    if (!std::filesystem::exists(file)) return nullptr;
    const nlohmann::json summary = nlohmann::json::parse(moelab::read_file(file), nullptr, /*allow_exceptions=*/false);
    const nlohmann::json* commit = summary.is_object() && summary.contains("versions") && summary["versions"].is_object() &&
                                           summary["versions"].contains("git_commit")
                                       ? &summary["versions"]["git_commit"]
                                       : nullptr;
    if (!commit || !commit->is_string() || commit->get<std::string>() == "unknown") return nullptr;
    return *commit;
  }

  Scored score_all(moelab::Model& model, const std::vector<Question>& questions, const char* label) {
    Scored out;
    if (scoring_ == Scoring::letter) {
      out.metrics["letter"] = score_letters(model, questions, out.choices);
    } else {
      out = score_continuations(model, questions);
    }
    for (const auto& [metric, s] : out.metrics)
      moelab::log::info("evaluate [{} {}]: accuracy {:.2f}% on {} questions", label, metric, 100 * s.accuracy, questions.size());
    return out;
  }

  static nlohmann::json prediction_row(const Scored& scored, const Question& q, std::size_t i) {
    nlohmann::json row;
    for (const auto& [metric, s] : scored.metrics) row[metric] = q.letters[static_cast<std::size_t>(s.predicted[i])];
    if (!scored.choices.empty()) {
      row["loglik"] = nlohmann::json::array();
      row["is_greedy"] = nlohmann::json::array();
      for (const auto& result : scored.choices[i]) {
        row["loglik"].push_back(result.loglik);
        row["is_greedy"].push_back(result.is_greedy);
      }
    }
    return row;
  }

  static Scores from_predictions(std::vector<long long> predicted, const std::vector<Question>& questions) {
    Scores s;
    long long right = 0;
    for (std::size_t i = 0; i < questions.size(); ++i) {
      s.correct.push_back(predicted[i] == questions[i].answer);
      right += predicted[i] == questions[i].answer;
    }
    s.predicted = std::move(predicted);
    s.accuracy = static_cast<double>(right) / static_cast<double>(questions.size());
    return s;
  }

  // lm-eval's loglikelihood requests of question i, one per choice: the form's own (record["lm_eval"]),
  // else loglik_template's context and " " + the choice.
  nlohmann::json requests_of(const moelab::Example& ex) const {
    if (ex.record.is_object() && ex.record.contains("lm_eval")) {
      if (config_.where("loglik_template") != "default")
        throw std::runtime_error(fmt::format("[{}] loglik_template ({}): {} is a {} record, scored with lm-eval's own context; remove the key",
                                             config_.id(), config_.where("loglik_template"), ex.origin, ex.record["lm_eval"]["task"].get<std::string>()));
      return ex.record["lm_eval"]["requests"];
    }
    moelab::PromptFormat format = settings_.prompt;
    format.question_template = settings_.loglik_template;
    const std::string context = moelab::format_prompt(ex, format);
    nlohmann::json requests = nlohmann::json::array();
    for (const auto& choice : ex.choices) requests.push_back({{"context", context}, {"continuation", " " + choice}});
    return requests;
  }

  Scored score_continuations(moelab::Model& model, const std::vector<Question>& questions) {
    const moelab::Tokenizer& tokenizer = context_.tokenizer();
    std::vector<moelab::LoglikRequest> requests;
    std::vector<std::size_t> first(questions.size() + 1, 0);  // question i's requests: [first[i], first[i + 1])
    bool acc_norm = true;
    for (std::size_t i = 0; i < questions.size(); ++i) {
      const moelab::Example& ex = dataset_->at(i);
      const nlohmann::json texts = requests_of(ex);
      if (texts.size() != ex.choices.size())
        throw std::runtime_error(fmt::format("{}: {} loglik requests for {} choices", ex.origin, texts.size(), ex.choices.size()));
      for (const auto& r : texts)
        requests.push_back(moelab::encode_pair(tokenizer, r.at("context").get<std::string>(), r.at("continuation").get<std::string>(),
                                               settings_.add_bos_token));
      first[i + 1] = requests.size();
      if (ex.record.is_object() && ex.record.contains("lm_eval")) {
        const auto metrics = ex.record["lm_eval"]["metrics"].get<std::vector<std::string>>();
        acc_norm = acc_norm && std::find(metrics.begin(), metrics.end(), "acc_norm") != metrics.end();
      }
    }
    // torchrun: this rank scores the requests of its contiguous share of the questions; all are gathered in order.
    const auto [q0, q1] = moelab::distributed::shard_range(questions.size());
    const std::vector<moelab::LoglikRequest> mine(requests.begin() + static_cast<std::ptrdiff_t>(first[q0]),
                                                  requests.begin() + static_cast<std::ptrdiff_t>(first[q1]));
    nlohmann::json scored = nlohmann::json::array();
    for (const auto& r : moelab::score_requests(model, mine, settings_.batch_size, settings_.prompt.max_len, settings_.shared_prefix))
      scored.push_back({r.loglik, r.is_greedy});
    std::vector<moelab::LoglikResult> results;
    for (const auto& r : moelab::distributed::gather_list(scored, fmt::format("[{}] gathering the log-likelihoods", config_.id())))
      results.push_back({r[0].is_number() ? r[0].get<double>() : std::nan(""), r[1].get<bool>()});  // JSON writes NaN as null
    require_finite_logliks(model, requests, results, first);
    Scored out;
    std::vector<long long> acc, norm;
    for (std::size_t i = 0; i < questions.size(); ++i) {
      out.choices.emplace_back(results.begin() + static_cast<std::ptrdiff_t>(first[i]), results.begin() + static_cast<std::ptrdiff_t>(first[i + 1]));
      std::vector<double> logliks;
      for (const auto& r : out.choices.back()) logliks.push_back(r.loglik);
      acc.push_back(static_cast<long long>(moelab::acc_prediction(logliks)));
      if (acc_norm) norm.push_back(static_cast<long long>(moelab::acc_norm_prediction(logliks, dataset_->at(i).choices)));
    }
    out.metrics["acc"] = from_predictions(std::move(acc), questions);
    if (acc_norm) out.metrics["acc_norm"] = from_predictions(std::move(norm), questions);
    return out;
  }

  // A NaN log-likelihood would silently lose every comparison: refuse it, naming the MoE layer where the
  // NaN/Inf starts (the request's forward again, alone: only on this failure).
  void require_finite_logliks(moelab::Model& model, const std::vector<moelab::LoglikRequest>& requests,
                              const std::vector<moelab::LoglikResult>& results, const std::vector<std::size_t>& first) const {
    for (std::size_t q = 0; q + 1 < first.size(); ++q)
      for (std::size_t r = first[q]; r < first[q + 1]; ++r) {
        if (std::isfinite(results[r].loglik)) continue;
        const std::string where =
            fmt::format("[{}] question {} ({}), choice {}: log-likelihood {}", config_.id(), q + 1, dataset_->at(q).origin, r - first[q] + 1,
                        results[r].loglik);
        std::vector<std::int64_t> ids = requests[r].context;
        ids.insert(ids.end(), requests[r].continuation.begin(), requests[r].continuation.end() - 1);
        if (ids.size() > settings_.prompt.max_len) ids.erase(ids.begin(), ids.end() - static_cast<std::ptrdiff_t>(settings_.prompt.max_len));
        torch::NoGradGuard no_grad;
        torch::Tensor input = torch::tensor(ids, torch::kInt64).unsqueeze(0).to(model.device());
        moelab::require_finite_forward(model, {}, model.forward(input, torch::ones_like(input)), where);
        throw std::runtime_error(fmt::format("{}, although the forward of this request alone is finite", where));
      }
  }

  // Predictions from the letter tokens' logits; `choices` gets each letter's log-probability after the
  // prompt and whether it is the vocabulary's argmax there (lm-eval's loglik of the letter continuation).
  Scores score_letters(moelab::Model& model, const std::vector<Question>& questions, std::vector<std::vector<moelab::LoglikResult>>& choices) {
    torch::NoGradGuard no_grad;
    const std::vector<moelab::McItem>& items = letter_items_;
    nlohmann::json mine = nlohmann::json::array();  // per question: [prediction, [[loglik, is_greedy] per letter]]
    const std::size_t batch_size = settings_.batch_size;
    // torchrun: this rank runs its contiguous share of the batches (the same batches as one process).
    const auto [b0, b1] = moelab::distributed::shard_range((items.size() + batch_size - 1) / batch_size);
    for (std::size_t start = b0 * batch_size; start < std::min(items.size(), b1 * batch_size); start += batch_size) {
      std::vector<const moelab::McItem*> rows;
      for (std::size_t i = start; i < std::min(items.size(), start + batch_size); ++i) rows.push_back(&items[i]);
      moelab::McBatch batch = moelab::make_batch(rows, std::max<long long>(model.info().pad_token_id, 0));
      torch::Tensor last = model.forward(batch.input_ids, batch.attention_mask, nullptr, /*last_only=*/true).select(1, 0);
      moelab::require_finite_forward(model, batch.attention_mask, last,
                                     fmt::format("[{}] questions {}-{} of {}", config_.id(), start + 1, start + rows.size(), items.size()));
      last = last.cpu();
      torch::Tensor options = last.gather(1, batch.letter_ids.clamp_min(0)).masked_fill(batch.letter_ids.lt(0), -INFINITY);
      torch::Tensor predicted = options.argmax(1);
      torch::Tensor logprobs = last.to(torch::kFloat64).log_softmax(1).gather(1, batch.letter_ids.clamp_min(0));
      torch::Tensor greedy = batch.letter_ids.eq(last.argmax(1, /*keepdim=*/true));
      for (std::size_t r = 0; r < rows.size(); ++r) {
        nlohmann::json letters = nlohmann::json::array();
        for (std::size_t c = 0; c < rows[r]->letter_ids.size(); ++c) {
          const auto rc = static_cast<long long>(c);
          letters.push_back({logprobs[static_cast<long long>(r)][rc].item<double>(), greedy[static_cast<long long>(r)][rc].item<bool>()});
        }
        mine.push_back({predicted[static_cast<long long>(r)].item<int64_t>(), letters});
      }
    }
    std::vector<long long> predicted_all;
    for (const auto& q : moelab::distributed::gather_list(mine, fmt::format("[{}] gathering the predictions", config_.id()))) {
      predicted_all.push_back(q[0].get<long long>());
      choices.emplace_back();
      for (const auto& c : q[1]) choices.back().push_back({c[0].is_number() ? c[0].get<double>() : std::nan(""), c[1].get<bool>()});
    }
    return from_predictions(std::move(predicted_all), questions);
  }

  nlohmann::json describe_scores(const Scores& s, const std::vector<Question>& questions, double chance, const std::string& label,
                                 nlohmann::json& warnings) const {
    std::map<std::string, long long> letters;
    for (std::size_t i = 0; i < questions.size(); ++i) ++letters[questions[i].letters[static_cast<std::size_t>(s.predicted[i])]];
    long long top = 0;
    std::string top_letter;
    for (const auto& [letter, n] : letters)
      if (n > top) top = n, top_letter = letter;
    double top_share = static_cast<double>(top) / static_cast<double>(questions.size());
    double margin = 2 * std::sqrt(chance * (1 - chance) / static_cast<double>(questions.size()));
    if (std::abs(s.accuracy - chance) <= margin) {
      std::string w = fmt::format("{} accuracy {:.1f}% is within chance ({:.1f}% +- {:.1f}%): the model is not answering these questions",
                                  label, 100 * s.accuracy, 100 * chance, 100 * margin);
      moelab::log::warn("!!! {}", w);
      warnings.push_back(w);
    }
    if (top_share > 0.7) {
      std::string w = fmt::format("{}: {:.0f}% of predictions are \"{}\"; check the prompt and the answer extraction", label, 100 * top_share, top_letter);
      moelab::log::warn("!!! {}", w);
      warnings.push_back(w);
    }
    return {{"accuracy", s.accuracy}, {"predicted_letters", letters}, {"most_common_letter_share", top_share}};
  }

  nlohmann::json paired(const Scores& base, const Scores& tuned) {
    std::vector<double> a(base.correct.begin(), base.correct.end()), b(tuned.correct.begin(), tuned.correct.end());
    return moelab::paired_comparison(a, b, context_.seed_for(config_.id() + ".bootstrap"), static_cast<int>(settings_.bootstrap));
  }

  static std::string human(const nlohmann::json& r) {
    bool tuned = r.contains("finetuned");
    std::string out = tuned ? "| metric | base | finetuned routers | difference (bootstrap 95%) | McNemar p |\n| --- | --- | --- | --- | --- |\n"
                            : "| metric | base |\n| --- | --- |\n";
    for (const auto& [metric, b] : r["base"].items()) {
      out += fmt::format("| {} | {:.2f}% |", metric, 100 * b["accuracy"].get<double>());
      if (tuned) {
        const auto& p = r["paired"][metric];
        out += fmt::format(" {:.2f}% | {:+.2f} [{:+.2f}, {:+.2f}] | {:.3g} ({} base-only vs {} finetuned-only correct) |",
                           100 * r["finetuned"][metric]["accuracy"].get<double>(), 100 * p["difference"].get<double>(),
                           100 * p["bootstrap_95"][0].get<double>(), 100 * p["bootstrap_95"][1].get<double>(), p["mcnemar_p"].get<double>(),
                           p["a_only"].get<long long>(), p["b_only"].get<long long>());
      }
      out += "\n";
    }
    out += fmt::format("\nchance: {:.2f}% over {} questions\n", 100 * r["chance"].get<double>(), r["questions"].get<long long>());
    for (const auto& w : r["warnings"]) out += "\nWARNING: " + w.get<std::string>() + "\n";
    return out;
  }

  moelab::Config config_;  // for id() in messages and seeds
  Settings settings_;
  moelab::RunContext& context_;
  std::shared_ptr<moelab::Dataset> dataset_;
  Scoring scoring_ = Scoring::letter;  // resolved from `scoring` and the dataset's forms
  std::vector<moelab::McItem> letter_items_;  // prompts and letter tokens, for letter scoring
};

}  // namespace

MOELAB_PLUGIN(options, Evaluate)
