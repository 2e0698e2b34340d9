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
// each question's predictions and, for loglik, each choice's loglik and is_greedy.
#include "moelab/moelab.h"
#include "moelab/lib/files.h"
#include "moelab/lib/finite.h"
#include "moelab/lib/log.h"
#include "moelab/lib/loglik.h"
#include "moelab/lib/multiple_choice.h"
#include "moelab/lib/paired.h"
#include "moelab/lib/prompt.h"
#include "moelab/lib/router_checkpoint.h"

namespace {

enum class Scoring { automatic, letter, loglik };
const std::vector<std::pair<std::string, Scoring>> kScorings = {
    {"auto", Scoring::automatic}, {"letter", Scoring::letter}, {"loglik", Scoring::loglik}};

struct Settings {
  std::string dataset;
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

// One model's scoring: predictions per metric and, for loglik, each question's per-choice results.
struct Scored {
  std::map<std::string, Scores> metrics;
  std::vector<std::vector<moelab::LoglikResult>> choices;
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
    if (scoring_ == Scoring::letter)
      for (std::size_t i = 0; i < dataset_->size(); ++i)
        letter_items_.push_back(moelab::prepare_item(dataset_->at(i), context_.tokenizer(), settings_.prompt, settings_.prompt.max_len));
    double chance = 0;
    for (const auto& q : questions) chance += 1.0 / static_cast<double>(q.letters.size());
    chance /= static_cast<double>(questions.size());

    nlohmann::json report = {{"questions", questions.size()}, {"chance", chance}, {"scoring", moelab::choice_name(scoring_, kScorings)},
                             {"warnings", nlohmann::json::array()}};
    Scored base = score_all(model, questions, "base");
    for (const auto& [metric, s] : base.metrics) report["base"][metric] = describe_scores(s, questions, chance, "base " + metric, report["warnings"]);
    Scored tuned;
    if (!settings_.routers.empty()) {
      std::filesystem::path file = context_.run_path(settings_.routers);
      moelab::RestoreModelOnExit restore(model, /*experts=*/false);
      auto moved = moelab::apply_router_checkpoint(file, model);
      tuned = score_all(model, questions, "finetuned");
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
    moelab::write_file_atomic(out_dir / "predictions.json", per_item.dump(1) + "\n");
    moelab::write_file_atomic(out_dir / "report.md", human(report));
    summary = report;
    moelab::log::info("evaluate:\n{}", human(report));
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

  Scored score_all(moelab::Model& model, const std::vector<Question>& questions, const char* label) {
    Scored out;
    if (scoring_ == Scoring::letter) {
      out.metrics["letter"] = score_letters(model, questions);
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
    std::vector<moelab::LoglikResult> results = moelab::score_requests(model, requests, settings_.batch_size, settings_.prompt.max_len,
                                                                               settings_.shared_prefix);
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

  Scores score_letters(moelab::Model& model, const std::vector<Question>& questions) {
    torch::NoGradGuard no_grad;
    const std::vector<moelab::McItem>& items = letter_items_;
    std::vector<long long> predicted_all;
    const std::size_t batch_size = settings_.batch_size;
    for (std::size_t start = 0; start < items.size(); start += batch_size) {
      std::vector<const moelab::McItem*> rows;
      for (std::size_t i = start; i < std::min(items.size(), start + batch_size); ++i) rows.push_back(&items[i]);
      moelab::McBatch batch = moelab::make_batch(rows, std::max<long long>(model.info().pad_token_id, 0));
      torch::Tensor last = model.forward(batch.input_ids, batch.attention_mask, nullptr, /*last_only=*/true).select(1, 0);
      moelab::require_finite_forward(model, batch.attention_mask, last,
                                     fmt::format("[{}] questions {}-{} of {}", config_.id(), start + 1, start + rows.size(), items.size()));
      last = last.cpu();
      torch::Tensor options = last.gather(1, batch.letter_ids.clamp_min(0)).masked_fill(batch.letter_ids.lt(0), -INFINITY);
      torch::Tensor predicted = options.argmax(1);
      for (std::size_t r = 0; r < rows.size(); ++r) predicted_all.push_back(predicted[static_cast<long long>(r)].item<int64_t>());
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
