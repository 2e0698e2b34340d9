// The comparison a quantization-recovery run exists for: every task's score on the full-precision,
// quantized and recovered (finetuned routers) models, and the recovery as a share of the loss,
// (recovered - quantized) / (full - quantized). Reads the summaries of evaluate and perplexity stages
// of this run: `full` lists the stages run before quantization, `quantized` the same tasks after it,
// each with routers = the recovered routers.
#include "moelab/moelab.h"
#include "moelab/lib/files.h"
#include "moelab/lib/log.h"

#include <cmath>

namespace {

struct Settings {
  std::vector<std::string> full, quantized;  // stage ids, task by task
};

const moelab::Options<Settings>& options() {
  static const auto o =
      moelab::Options<Settings>("quant_report", moelab::Kind::stage, "0.1.0", "full vs quantized vs recovered table with the recovered share")
          .components("full", &Settings::full, moelab::Kind::stage, "evaluate/perplexity stages run on the full-precision model")
          .components("quantized", &Settings::quantized, moelab::Kind::stage,
                      "the same tasks on the quantized model, each with routers = the recovered routers");
  return o;
}

struct Score {
  std::string task, metric;
  double full = NAN, quantized = NAN, recovered = NAN;
  bool lower_is_better = false;
};

class QuantReport final : public moelab::Stage {
 public:
  QuantReport(const moelab::Config& config, moelab::RunContext& context)
      : config_(config), settings_(options().read(config)), context_(context) {
    if (settings_.full.size() != settings_.quantized.size())
      throw std::runtime_error(fmt::format("[{}] full ({}) and quantized ({}) must list the same tasks in the same order", config.id(),
                                           config.where("full"), config.where("quantized")));
  }

  void run(const std::filesystem::path& out_dir, nlohmann::json& summary) override {
    std::vector<Score> scores;
    const auto& full = settings_.full;
    const auto& quantized = settings_.quantized;
    for (std::size_t i = 0; i < full.size(); ++i) {
      nlohmann::json f = stage_summary(full[i]), q = stage_summary(quantized[i]);
      if (!q.contains("finetuned"))
        throw std::runtime_error(fmt::format("[{}] stage [{}] has no recovered result (it scored the quantized model only): set its "
                                             "routers to the recovered routers (\"@recover/routers.safetensors\")", config_.id(), quantized[i]));
      if (f["base"].contains("perplexity")) {
        scores.push_back({full[i], "perplexity", f["base"]["perplexity"].get<double>(), q["base"]["perplexity"].get<double>(),
                          q["finetuned"]["perplexity"].get<double>(), true});
        continue;
      }
      for (const auto& [metric, value] : f["base"].items())
        scores.push_back({full[i], metric, value["accuracy"].get<double>(), q["base"][metric]["accuracy"].get<double>(),
                          q["finetuned"][metric]["accuracy"].get<double>(), false});
    }
    nlohmann::json rows = nlohmann::json::array();
    // The stages' own summaries say "base" and "finetuned" (routers); here they are the quantized model
    // (original routers) and the recovered one (quantized experts, finetuned routers).
    std::string table = "| task | metric | full precision | quantized | recovered | recovery of the loss |\n| --- | --- | --- | --- | --- | --- |\n";
    for (const auto& s : scores) {
      const double loss = s.full - s.quantized, regained = s.recovered - s.quantized;
      const bool meaningful = std::abs(loss) > 1e-9 && (s.lower_is_better ? loss < 0 : loss > 0);
      nlohmann::json row = {{"task", s.task}, {"metric", s.metric}, {"full", s.full}, {"quantized", s.quantized}, {"recovered", s.recovered}};
      row["recovery"] = meaningful ? nlohmann::json(regained / loss) : nlohmann::json(nullptr);
      rows.push_back(row);
      auto shown = [&](double v) { return s.lower_is_better ? fmt::format("{:.3f}", v) : fmt::format("{:.2f}%", 100 * v); };
      table += fmt::format("| {} | {} | {} | {} | {} | {} |\n", s.task, s.metric, shown(s.full), shown(s.quantized), shown(s.recovered),
                           meaningful ? fmt::format("{:.0f}%", 100 * regained / loss) : "n/a (quantization lost nothing)");
    }
    table += "\nquantized: the quantized experts with the original routers; recovered: the quantized experts with the finetuned "
             "routers; recovery of the loss: (recovered - quantized) / (full precision - quantized).\n";
    moelab::write_file_atomic(out_dir / "report.md", table);
    moelab::write_file_atomic(out_dir / "report.json", rows.dump(2) + "\n");
    summary = {{"rows", rows}};
    moelab::log::result("quantization recovery (full precision, quantized, recovered = quantized with finetuned routers):", table);
  }

 private:
  nlohmann::json stage_summary(const std::string& id) const {
    std::filesystem::path file = context_.run_dir() / id / "summary.json";
    if (!std::filesystem::exists(file))
      throw std::runtime_error(fmt::format("[{}] no summary of stage [{}] in this run ({}): list it in `stages` before [{}]", config_.id(), id,
                                           file.string(), config_.id()));
    return moelab::read_json(file);
  }

  moelab::Config config_;  // for id() and where() in messages
  Settings settings_;
  moelab::RunContext& context_;
};

}  // namespace

MOELAB_PLUGIN(options, QuantReport)
