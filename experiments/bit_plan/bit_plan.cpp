// The bit plan: which format each quantizable expert matrix gets. By rule: rank the matrices (or whole
// layers) by alpha and give low_format to the `ratio` share with the highest alpha, high_format to the
// rest. Or a hand-written plan file: {"default": "<format>", "formats": {"<name>": "<format>"}}.
#include "moelab/moelab.h"
#include "moelab/lib/files.h"
#include "moelab/lib/log.h"
#include "moelab/lib/quant.h"

#include <algorithm>
#include <cmath>

namespace {


enum class Granularity { matrix, layer };
const std::vector<std::pair<std::string, Granularity>> kGranularities = {{"matrix", Granularity::matrix}, {"layer", Granularity::layer}};

struct Settings {
  std::filesystem::path alpha, plan_file;
  moelab::QuantFormat low_format, high_format;
  double ratio;
  Granularity granularity;
  long long group_size;
};

const moelab::Options<Settings>& options() {
  static const auto o =
      moelab::Options<Settings>("bit_plan", moelab::Kind::stage, "0.1.0", "per-matrix quantization formats from alpha (or a hand-written plan)")
          .path("alpha", &Settings::alpha, "@alpha/alpha.json", "the alpha stage's output")
          .path("plan_file", &Settings::plan_file, "", "a hand-written plan {\"default\", \"formats\": {name: format}} instead of the rule")
          .choice("low_format", &Settings::low_format, moelab::QuantFormat::mxfp4, moelab::quant_format_names(), "format of the highest-alpha share")
          .choice("high_format", &Settings::high_format, moelab::QuantFormat::mxfp8, moelab::quant_format_names(), "format of the rest")
          .real("ratio", &Settings::ratio, 0.3, "share of matrices (or layers) that get low_format (the public script's mxfp4_ratio)").within(0, 1)
          .choice("granularity", &Settings::granularity, Granularity::matrix, kGranularities, "rank single matrices, or whole layers by mean alpha")
          .integer("group_size", &Settings::group_size, 128, "INT group size, for the reported bits per weight").at_least(1);
  return o;
}

double bits_per_weight(const std::string& format, long long group_size) {
  switch (moelab::quant_format(format)) {
    case moelab::QuantFormat::int3: return 3 + 24.0 / group_size;  // fp16 scale + 8-bit zero per group
    case moelab::QuantFormat::int4: return 4 + 24.0 / group_size;
    case moelab::QuantFormat::mxfp4: return 4 + 8.0 / 32;
    case moelab::QuantFormat::mxfp8: return 8 + 8.0 / 32;
  }
  return 0;
}

class BitPlan final : public moelab::Stage {
 public:
  BitPlan(const moelab::Config& config, moelab::RunContext& context) : settings_(options().read(config)), context_(context) {}

  void run(const std::filesystem::path& out_dir, nlohmann::json& summary) override {
    moelab::Model& model = context_.model();
    std::vector<std::string> names;  // every expert matrix of the model
    for (int layer : model.info().moe_layers) {
      moelab::ExpertWeights ex = model.expert_weights(layer);
      for (long long e = 0; e < model.info().num_experts; ++e)
        for (const auto& p : ex.names) names.push_back(fmt::format("{}{}.{}.weight", ex.prefix, e, p));
    }
    nlohmann::json formats = nlohmann::json::object(), rule;
    if (!settings_.plan_file.empty()) {
      formats = hand_written(context_.run_path(settings_.plan_file), names);
      rule = {{"plan_file", context_.run_path(settings_.plan_file).string()}};
    } else {
      std::string estimator;
      formats = by_alpha(names, estimator);
      rule = {{"rule", "highest alpha -> low_format"}, {"alpha_method", estimator}, {"ratio", settings_.ratio},
              {"low_format", moelab::quant_format_name(settings_.low_format)}, {"high_format", moelab::quant_format_name(settings_.high_format)},
              {"granularity", moelab::choice_name(settings_.granularity, kGranularities)}};
    }
    std::map<std::string, long long> counts;
    double bits = 0;
    for (const auto& [name, format] : formats.items()) {
      ++counts[format.get<std::string>()];
      bits += bits_per_weight(format.get<std::string>(), settings_.group_size);
    }
    nlohmann::json plan = {{"formats", formats}, {"rule", rule}, {"counts", counts}, {"mean_bits_per_weight", bits / static_cast<double>(formats.size())}};
    moelab::write_file_atomic(out_dir / "plan.json", plan.dump(1) + "\n");
    summary = {{"counts", counts}, {"mean_bits_per_weight", plan["mean_bits_per_weight"]}, {"rule", rule}, {"plan", (out_dir / "plan.json").string()}};
    moelab::log::info("bit_plan: {} matrices: {}; {:.3f} bits per weight on average", formats.size(), nlohmann::json(counts).dump(),
                      plan["mean_bits_per_weight"].get<double>());
  }

 private:
  // Also sets `estimator` to the alpha stage's method (hill or ks) as its rows record it.
  nlohmann::json by_alpha(const std::vector<std::string>& names, std::string& estimator) const {
    std::filesystem::path file = context_.run_path(settings_.alpha);
    nlohmann::json rows = moelab::read_json(file);
    if (!rows.is_array()) throw std::runtime_error(fmt::format("{}: expected the alpha stage's array of matrices", file.string()));
    std::map<std::string, double> alpha;
    std::map<std::string, int> layer_of;
    for (const auto& r : rows)
      if (r["expert"].get<long long>() >= 0) {
        alpha[r["name"].get<std::string>()] = r["alpha"].get<double>();
        layer_of[r["name"].get<std::string>()] = r["layer"].get<int>();
        estimator = r.value("method", "unrecorded");
      }
    for (const auto& n : names)
      if (!alpha.count(n)) throw std::runtime_error(fmt::format("{}: no alpha for {} (was it computed for another model?)", file.string(), n));
    // Units ranked by alpha: single matrices, or whole layers by their mean alpha.
    std::map<std::string, std::vector<std::string>> units;
    if (settings_.granularity == Granularity::layer) {
      for (const auto& n : names) units["layer " + std::to_string(layer_of[n])].push_back(n);
    } else {
      for (const auto& n : names) units[n] = {n};
    }
    std::vector<std::pair<double, std::string>> ranked;
    for (const auto& [unit, members] : units) {
      double sum = 0;
      for (const auto& m : members) sum += alpha[m];
      ranked.emplace_back(sum / static_cast<double>(members.size()), unit);
    }
    std::sort(ranked.rbegin(), ranked.rend());
    const auto low = static_cast<std::size_t>(std::llround(settings_.ratio * static_cast<double>(ranked.size())));
    nlohmann::json formats = nlohmann::json::object();
    for (std::size_t i = 0; i < ranked.size(); ++i)
      for (const auto& m : units[ranked[i].second]) formats[m] = moelab::quant_format_name(i < low ? settings_.low_format : settings_.high_format);
    return formats;
  }

  nlohmann::json hand_written(const std::filesystem::path& file, const std::vector<std::string>& names) const {
    const nlohmann::json j = moelab::read_json(file);
    if (!j.is_object()) throw std::runtime_error(fmt::format("{}: expected {{\"default\": format, \"formats\": {{name: format}}}}", file.string()));
    const nlohmann::json given = j.value("formats", nlohmann::json::object());
    std::set<std::string> known(names.begin(), names.end());
    for (const auto& [name, format] : given.items()) {
      if (!known.count(name)) throw std::runtime_error(fmt::format("{}: \"{}\" is not an expert matrix of this model (e.g. {})", file.string(), name, names.front()));
      try {
        moelab::quant_format(format.get<std::string>());
      } catch (const std::exception& e) {
        throw std::runtime_error(fmt::format("{}: \"{}\": {}", file.string(), name, e.what()));
      }
    }
    nlohmann::json formats = nlohmann::json::object();
    for (const auto& n : names) {
      if (given.contains(n)) formats[n] = given[n];
      else if (j.contains("default")) formats[n] = moelab::quant_format_name(moelab::quant_format(j["default"].get<std::string>()));
      else throw std::runtime_error(fmt::format("{}: no format for {} and no \"default\"", file.string(), n));
    }
    return formats;
  }

  Settings settings_;
  moelab::RunContext& context_;
};

}  // namespace

MOELAB_PLUGIN(options, BitPlan)
