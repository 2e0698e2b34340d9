// Multiple-choice evaluation of the base model and of finetuned routers in the same run: the answer
// is the letter whose token has the highest logit at the last prompt token (never decoded text).
// Reports both accuracies, the paired difference with a bootstrap 95% interval and an exact McNemar
// p-value, and warns when accuracy is within chance or one letter takes over 70% of the answers.
#include "moelab/moelab.h"

#include <cmath>
#include <random>

namespace {

struct Scores {
  std::vector<long long> predicted;
  std::vector<bool> correct;
  double accuracy = 0;
};

// Two-sided exact McNemar test on the discordant pairs (b, c).
double mcnemar_exact(long long b, long long c) {
  long long n = b + c;
  if (n == 0) return 1.0;
  double tail = 0;
  for (long long i = 0; i <= std::min(b, c); ++i) tail += std::exp(std::lgamma(n + 1.0) - std::lgamma(i + 1.0) - std::lgamma(n - i + 1.0) - n * std::log(2.0));
  return std::min(1.0, 2 * tail);
}

class Evaluate final : public moelab::Stage {
 public:
  Evaluate(const moelab::Config& config, moelab::RunContext& context)
      : config_(config), context_(context), dataset_(context.make<moelab::Dataset>(config.get_string("dataset"))) {}

  void run(const std::filesystem::path& out_dir, nlohmann::json& summary) override {
    moelab::Model& model = context_.model();
    std::vector<moelab::McItem> items;
    for (std::size_t i = 0; i < dataset_->size(); ++i)
      items.push_back(moelab::prepare_item(dataset_->at(i), context_.tokenizer(), moelab::prompt_format(config_), config_.get_int("max_len")));
    double chance = 0;
    for (const auto& item : items) chance += 1.0 / static_cast<double>(item.letters.size());
    chance /= static_cast<double>(items.size());

    nlohmann::json report = {{"questions", items.size()}, {"chance", chance}, {"warnings", nlohmann::json::array()}};
    Scores base = score(model, items, "base");
    report["base"] = describe_scores(base, items, chance, "base", report["warnings"]);
    Scores tuned;
    std::string routers = config_.get_string("routers");
    if (!routers.empty()) {
      std::filesystem::path file = context_.run_path(routers);
      std::map<int, torch::Tensor> saved;
      for (int l : model.info().moe_layers) saved[l] = model.router_weight(l).detach().clone();
      auto moved = moelab::apply_router_checkpoint(file, model);
      tuned = score(model, items, "finetuned");
      {
        torch::NoGradGuard no_grad;
        for (auto& [l, w] : saved) model.router_weight(l).copy_(w);
      }
      report["finetuned"] = describe_scores(tuned, items, chance, "finetuned", report["warnings"]);
      report["router_change"] = moved;
      report["paired"] = paired(base, tuned);
    }
    nlohmann::json per_item = nlohmann::json::array();
    for (std::size_t i = 0; i < items.size(); ++i) {
      nlohmann::json row = {{"id", items[i].key}, {"gold", items[i].letters[items[i].answer]}, {"base", items[i].letters[base.predicted[i]]}};
      if (!tuned.predicted.empty()) row["finetuned"] = items[i].letters[tuned.predicted[i]];
      per_item.push_back(row);
    }
    moelab::write_file_atomic(out_dir / "predictions.json", per_item.dump(1) + "\n");
    moelab::write_file_atomic(out_dir / "report.md", human(report));
    summary = report;
    moelab::log::info("evaluate:\n{}", human(report));
  }

 private:
  Scores score(moelab::Model& model, const std::vector<moelab::McItem>& items, const char* label) {
    torch::NoGradGuard no_grad;
    Scores s;
    const std::size_t batch_size = config_.get_int("batch_size");
    long long right = 0;
    for (std::size_t start = 0; start < items.size(); start += batch_size) {
      std::vector<const moelab::McItem*> rows;
      for (std::size_t i = start; i < std::min(items.size(), start + batch_size); ++i) rows.push_back(&items[i]);
      moelab::McBatch batch = moelab::make_batch(rows, std::max<long long>(model.info().pad_token_id, 0));
      torch::Tensor logits = model.forward(batch.input_ids, batch.attention_mask);
      torch::Tensor last = moelab::at_positions(logits, moelab::last_positions(batch.attention_mask)).cpu();
      torch::Tensor options = last.gather(1, batch.letter_ids.clamp_min(0)).masked_fill(batch.letter_ids.lt(0), -INFINITY);
      torch::Tensor predicted = options.argmax(1);
      for (std::size_t r = 0; r < rows.size(); ++r) {
        long long p = predicted[static_cast<long long>(r)].item<int64_t>();
        s.predicted.push_back(p);
        s.correct.push_back(p == rows[r]->answer);
        right += p == rows[r]->answer;
      }
    }
    s.accuracy = static_cast<double>(right) / static_cast<double>(items.size());
    moelab::log::info("evaluate [{}]: accuracy {:.2f}% on {} questions", label, 100 * s.accuracy, items.size());
    return s;
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
    const std::size_t n = base.correct.size();
    long long b = 0, c = 0;
    for (std::size_t i = 0; i < n; ++i) {
      b += base.correct[i] && !tuned.correct[i];
      c += !base.correct[i] && tuned.correct[i];
    }
    std::mt19937_64 rng(context_.seed_for(config_.id() + ".bootstrap"));
    std::uniform_int_distribution<std::size_t> pick(0, n - 1);
    std::vector<double> diffs;
    for (long long r = 0; r < config_.get_int("bootstrap"); ++r) {
      double d = 0;
      for (std::size_t i = 0; i < n; ++i) {
        std::size_t k = pick(rng);
        d += static_cast<double>(tuned.correct[k]) - static_cast<double>(base.correct[k]);
      }
      diffs.push_back(d / static_cast<double>(n));
    }
    std::sort(diffs.begin(), diffs.end());
    auto quantile = [&](double q) { return diffs.empty() ? 0.0 : diffs[static_cast<std::size_t>(q * (diffs.size() - 1))]; };
    return {{"difference", tuned.accuracy - base.accuracy}, {"bootstrap_95", {quantile(0.025), quantile(0.975)}},
            {"base_only_correct", b}, {"finetuned_only_correct", c}, {"mcnemar_p", mcnemar_exact(b, c)}};
  }

  static std::string human(const nlohmann::json& r) {
    std::string out = fmt::format("| model | accuracy |\n| --- | --- |\n| base | {:.2f}% |\n", 100 * r["base"]["accuracy"].get<double>());
    if (r.contains("finetuned")) {
      const auto& p = r["paired"];
      out += fmt::format("| finetuned routers | {:.2f}% |\n\npaired difference {:+.2f} points, bootstrap 95% [{:+.2f}, {:+.2f}], "
                         "McNemar exact p = {:.3g} ({} base-only vs {} finetuned-only correct)\n",
                         100 * r["finetuned"]["accuracy"].get<double>(), 100 * p["difference"].get<double>(),
                         100 * p["bootstrap_95"][0].get<double>(), 100 * p["bootstrap_95"][1].get<double>(), p["mcnemar_p"].get<double>(),
                         p["base_only_correct"].get<long long>(), p["finetuned_only_correct"].get<long long>());
    }
    out += fmt::format("\nchance: {:.2f}% over {} questions\n", 100 * r["chance"].get<double>(), r["questions"].get<long long>());
    for (const auto& w : r["warnings"]) out += "\nWARNING: " + w.get<std::string>() + "\n";
    return out;
  }

  moelab::Config config_;
  moelab::RunContext& context_;
  std::shared_ptr<moelab::Dataset> dataset_;
};

moelab::Descriptor describe() {
  moelab::Descriptor d("evaluate", moelab::Kind::stage, "0.1.0", "paired multiple-choice evaluation: base vs finetuned routers");
  d.component("dataset", moelab::Kind::dataset, "", "evaluation questions")
      .path("routers", "", "router checkpoint to compare with the base (\"@train/routers.safetensors\"); empty: base only")
      .integer("batch_size", 16, "questions per forward")
      .integer("bootstrap", 2000, "bootstrap resamples for the paired interval");
  return moelab::add_prompt_keys(d);
}

}  // namespace

MOELAB_PLUGIN(describe, Evaluate)
