// Multiple-choice evaluation of the base model and of finetuned routers in the same run. "letter":
// the answer is the letter whose token has the highest logit at the last prompt token (never decoded
// text). "loglik" (lm-eval style): each choice's text is scored as a continuation of the prompt (or of
// the form's own context: HellaSwag; Winogrande scores one continuation after per-choice contexts);
// acc takes the highest summed log-probability, acc_norm the highest per byte. Reports every accuracy,
// the paired difference with a bootstrap 95% interval and an exact McNemar p-value, and warns when
// accuracy is within chance or one letter takes over 70% of the answers.
#include "moelab/moelab.h"

namespace {

enum class Scoring { letter, loglik };
const std::vector<std::pair<std::string, Scoring>> kScorings = {{"letter", Scoring::letter}, {"loglik", Scoring::loglik}};

struct Settings {
  std::string dataset;
  std::filesystem::path routers;
  Scoring scoring;
  std::string loglik_template;
  std::size_t batch_size;
  long long bootstrap;
  moelab::PromptOptions prompt;
};

const moelab::Options<Settings>& options() {
  static const auto o =
      moelab::Options<Settings>("evaluate", moelab::Kind::stage, "0.1.0", "paired multiple-choice evaluation: base vs finetuned routers")
          .component("dataset", &Settings::dataset, moelab::Kind::dataset, "evaluation questions")
          .path("routers", &Settings::routers, "", "router checkpoint to compare with the base (\"@train/routers.safetensors\"); empty: base only")
          .choice("scoring", &Settings::scoring, Scoring::letter, kScorings,
                  "letter: answer-letter logits after the prompt; loglik: lm-eval per-choice log-likelihood (acc, acc_norm)")
          .string("loglik_template", &Settings::loglik_template, "Question: {question}\nAnswer:",
                  "context for loglik scoring ({question}; lm-eval's ARC form)")
          .integer("batch_size", &Settings::batch_size, 16, "questions (loglik: sequences) per forward").at_least(1)
          .integer("bootstrap", &Settings::bootstrap, 2000, "bootstrap resamples for the paired interval")
          .include(&Settings::prompt, moelab::prompt_options());
  return o;
}

struct Scores {
  std::vector<long long> predicted;
  std::vector<bool> correct;
  double accuracy = 0;
};

class Evaluate final : public moelab::Stage {
 public:
  Evaluate(const moelab::Config& config, moelab::RunContext& context)
      : config_(config), settings_(options().read(config)), context_(context), dataset_(context.make<moelab::Dataset>(settings_.dataset)) {}

  void run(const std::filesystem::path& out_dir, nlohmann::json& summary) override {
    moelab::Model& model = context_.model();
    std::vector<moelab::McItem> items;
    for (std::size_t i = 0; i < dataset_->size(); ++i)
      items.push_back(moelab::prepare_item(dataset_->at(i), context_.tokenizer(), settings_.prompt, settings_.prompt.max_len));
    if (items.empty()) throw std::runtime_error(fmt::format("[{}] the dataset has no questions", config_.id()));
    double chance = 0;
    for (const auto& item : items) chance += 1.0 / static_cast<double>(item.letters.size());
    chance /= static_cast<double>(items.size());

    nlohmann::json report = {{"questions", items.size()}, {"chance", chance}, {"scoring", moelab::choice_name(settings_.scoring, kScorings)},
                             {"warnings", nlohmann::json::array()}};
    std::map<std::string, Scores> base = score_all(model, items, "base");
    for (const auto& [metric, s] : base) report["base"][metric] = describe_scores(s, items, chance, "base " + metric, report["warnings"]);
    std::map<std::string, Scores> tuned;
    if (!settings_.routers.empty()) {
      std::filesystem::path file = context_.run_path(settings_.routers);
      moelab::RestoreModelOnExit restore(model, /*experts=*/false);
      auto moved = moelab::apply_router_checkpoint(file, model);
      tuned = score_all(model, items, "finetuned");
      for (const auto& [metric, s] : tuned) {
        report["finetuned"][metric] = describe_scores(s, items, chance, "finetuned " + metric, report["warnings"]);
        report["paired"][metric] = paired(base.at(metric), s);
      }
      for (const auto& [layer, change] : moved) report["router_change"][std::to_string(layer)] = change;
    }
    nlohmann::json per_item = nlohmann::json::array();
    for (std::size_t i = 0; i < items.size(); ++i) {
      nlohmann::json row = {{"id", items[i].key}, {"gold", items[i].letters[items[i].answer]}};
      for (const auto& [metric, s] : base) row["base"][metric] = items[i].letters[s.predicted[i]];
      for (const auto& [metric, s] : tuned) row["finetuned"][metric] = items[i].letters[s.predicted[i]];
      per_item.push_back(row);
    }
    moelab::write_file_atomic(out_dir / "predictions.json", per_item.dump(1) + "\n");
    moelab::write_file_atomic(out_dir / "report.md", human(report));
    summary = report;
    moelab::log::info("evaluate:\n{}", human(report));
  }

 private:
  std::map<std::string, Scores> score_all(moelab::Model& model, const std::vector<moelab::McItem>& items, const char* label) {
    std::map<std::string, Scores> out;
    if (settings_.scoring == Scoring::letter) {
      out["letter"] = score_letters(model, items);
    } else {
      out = score_continuations(model, items);
    }
    for (const auto& [metric, s] : out)
      moelab::log::info("evaluate [{} {}]: accuracy {:.2f}% on {} questions", label, metric, 100 * s.accuracy, items.size());
    return out;
  }

  static Scores from_predictions(std::vector<long long> predicted, const std::vector<moelab::McItem>& items) {
    Scores s;
    long long right = 0;
    for (std::size_t i = 0; i < items.size(); ++i) {
      s.correct.push_back(predicted[i] == items[i].answer);
      right += predicted[i] == items[i].answer;
    }
    s.predicted = std::move(predicted);
    s.accuracy = static_cast<double>(right) / static_cast<double>(items.size());
    return s;
  }

  // lm-eval's loglikelihood scoring: context "Question: ...\nAnswer:" and continuation " <choice>".
  std::map<std::string, Scores> score_continuations(moelab::Model& model, const std::vector<moelab::McItem>& items) {
    torch::NoGradGuard no_grad;
    const moelab::Tokenizer& tokenizer = context_.tokenizer();
    moelab::PromptFormat format = settings_.prompt;
    format.question_template = settings_.loglik_template;
    struct Sequence {
      std::size_t item, choice;
      moelab::McItem tokens;  // prompt_ids = context + continuation
      std::size_t continuation;
    };
    std::vector<Sequence> sequences;
    for (std::size_t i = 0; i < items.size(); ++i) {
      const moelab::Example& ex = dataset_->at(i);
      // A form may bring lm-eval's own context (HellaSwag) or per-choice contexts with one continuation (Winogrande).
      const bool partial = ex.record.contains("loglik_contexts");
      std::vector<std::int64_t> context = tokenizer.encode(ex.record.contains("loglik_context") ? ex.record["loglik_context"].get<std::string>()
                                                                                                : moelab::format_prompt(ex, format));
      for (std::size_t c = 0; c < ex.choices.size(); ++c) {
        Sequence seq{i, c, {}, 0};
        if (partial) context = tokenizer.encode(ex.record["loglik_contexts"].at(c).get<std::string>());
        std::vector<std::int64_t> continuation =
            tokenizer.encode(partial ? ex.record["loglik_continuation"].get<std::string>() : " " + ex.choices[c]);
        seq.tokens.prompt_ids = context;
        seq.tokens.prompt_ids.insert(seq.tokens.prompt_ids.end(), continuation.begin(), continuation.end());
        seq.continuation = continuation.size();
        sequences.push_back(std::move(seq));
      }
    }
    std::vector<std::vector<double>> loglik(items.size()), per_byte(items.size());
    const std::size_t batch_size = settings_.batch_size;
    for (std::size_t start = 0; start < sequences.size(); start += batch_size) {
      std::vector<const moelab::McItem*> rows;
      for (std::size_t i = start; i < std::min(sequences.size(), start + batch_size); ++i) rows.push_back(&sequences[i].tokens);
      moelab::McBatch batch = moelab::make_batch(rows, std::max<long long>(model.info().pad_token_id, 0), moelab::Padding::right);
      torch::Tensor logp = model.forward(batch.input_ids, batch.attention_mask).log_softmax(-1).cpu();
      for (std::size_t r = 0; r < rows.size(); ++r) {
        const Sequence& seq = sequences[start + r];
        const auto length = static_cast<long long>(seq.tokens.prompt_ids.size()), n = static_cast<long long>(seq.continuation);
        torch::Tensor targets = batch.input_ids[static_cast<long long>(r)].narrow(0, length - n, n);
        double sum = logp[static_cast<long long>(r)].narrow(0, length - n - 1, n).gather(1, targets.unsqueeze(1)).sum().item<double>();
        loglik[seq.item].push_back(sum);
        const moelab::Example& ex = dataset_->at(seq.item);
        const std::size_t bytes = ex.record.contains("loglik_contexts") ? ex.record["loglik_continuation"].get<std::string>().size()
                                                                        : ex.choices[seq.choice].size() + 1;
        per_byte[seq.item].push_back(sum / static_cast<double>(bytes));
      }
    }
    auto argmax = [](const std::vector<std::vector<double>>& v) {
      std::vector<long long> out;
      for (const auto& row : v) out.push_back(std::max_element(row.begin(), row.end()) - row.begin());
      return out;
    };
    return {{"acc", from_predictions(argmax(loglik), items)}, {"acc_norm", from_predictions(argmax(per_byte), items)}};
  }

  Scores score_letters(moelab::Model& model, const std::vector<moelab::McItem>& items) {
    torch::NoGradGuard no_grad;
    std::vector<long long> predicted_all;
    const std::size_t batch_size = settings_.batch_size;
    for (std::size_t start = 0; start < items.size(); start += batch_size) {
      std::vector<const moelab::McItem*> rows;
      for (std::size_t i = start; i < std::min(items.size(), start + batch_size); ++i) rows.push_back(&items[i]);
      moelab::McBatch batch = moelab::make_batch(rows, std::max<long long>(model.info().pad_token_id, 0));
      torch::Tensor last = model.forward(batch.input_ids, batch.attention_mask, nullptr, /*last_only=*/true).select(1, 0).cpu();
      torch::Tensor options = last.gather(1, batch.letter_ids.clamp_min(0)).masked_fill(batch.letter_ids.lt(0), -INFINITY);
      torch::Tensor predicted = options.argmax(1);
      for (std::size_t r = 0; r < rows.size(); ++r) predicted_all.push_back(predicted[static_cast<long long>(r)].item<int64_t>());
    }
    return from_predictions(std::move(predicted_all), items);
  }

  nlohmann::json describe_scores(const Scores& s, const std::vector<moelab::McItem>& items, double chance, const std::string& label,
                                 nlohmann::json& warnings) const {
    std::map<std::string, long long> letters;
    for (std::size_t i = 0; i < items.size(); ++i) ++letters[items[i].letters[s.predicted[i]]];
    long long top = 0;
    std::string top_letter;
    for (const auto& [letter, n] : letters)
      if (n > top) top = n, top_letter = letter;
    double top_share = static_cast<double>(top) / static_cast<double>(items.size());
    double margin = 2 * std::sqrt(chance * (1 - chance) / static_cast<double>(items.size()));
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
};

}  // namespace

MOELAB_PLUGIN(options, Evaluate)
