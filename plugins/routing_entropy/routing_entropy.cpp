// Per-token routing confidence per MoE layer: the entropy of the full router softmax, normalized by
// log(E) (1: uniform, 0: one expert), and the top-1 margin p(1) - p(2). Reads the records' per-token
// entropy and margin, or computes them from full probabilities. Per layer: mean, quantiles and the
// share of near-uniform tokens; per set when the records carry sets. Figure: means per layer.
#include "moelab/moelab.h"
#include "moelab/lib/files.h"
#include "moelab/lib/plot.h"

#include <sstream>

namespace {

using torch::Tensor;

struct Settings {
  double near_uniform;
};

const moelab::Options<Settings>& options() {
  static const auto o =
      moelab::Options<Settings>("routing_entropy", moelab::Kind::analyzer, "0.1.0", "per-token routing entropy and top-1 margin per layer and set")
          .real("near_uniform", &Settings::near_uniform, 0.95, "normalized entropy at or above which a token counts as near-uniformly routed");
  return o;
}

class RoutingEntropy final : public moelab::Analyzer {
 public:
  RoutingEntropy(const moelab::Config& config, moelab::RunContext&) : settings_(options().read(config)) {}

  nlohmann::json analyze(const moelab::RoutingRecords& records, const std::filesystem::path& out_dir) override {
    Tensor entropy = records.entropy, margin = records.margin;
    if (records.probs.defined()) {
      Tensor p = records.probs.to(torch::kFloat64);
      entropy = -(p * p.clamp_min(1e-300).log()).sum(-1);
      Tensor top2 = std::get<0>(p.topk(2, -1));
      margin = top2.select(-1, 0) - top2.select(-1, 1);
    }
    if (!entropy.defined() || !margin.defined())
      throw std::runtime_error("routing_entropy: the records carry neither per-token entropy nor full router probabilities");
    const double log_e = std::log(static_cast<double>(records.num_experts));
    Tensor normalized = entropy.to(torch::kFloat64) / log_e;  // [N, L]
    margin = margin.to(torch::kFloat64);
    const long long layers = normalized.size(1);
    Tensor q = torch::tensor({0.1, 0.5, 0.9}, torch::kFloat64);
    nlohmann::json out = {{"layers", nlohmann::json::array()}};
    std::ostringstream csv;
    csv << "layer,mean_normalized_entropy,mean_margin,entropy_p10,entropy_p50,entropy_p90,near_uniform_share\n";
    for (long long l = 0; l < layers; ++l) {
      Tensor h = normalized.select(1, l), m = margin.select(1, l);
      Tensor quantiles = torch::quantile(h, q);
      double near = (h >= settings_.near_uniform).to(torch::kFloat64).mean().item<double>();
      out["layers"].push_back({{"layer", records.layer_label(l)}, {"mean_normalized_entropy", h.mean().item<double>()},
                               {"mean_margin", m.mean().item<double>()}, {"entropy_p10", quantiles[0].item<double>()},
                               {"entropy_p50", quantiles[1].item<double>()}, {"entropy_p90", quantiles[2].item<double>()},
                               {"near_uniform_share", near}});
      csv << records.layer_label(l) << ',' << h.mean().item<double>() << ',' << m.mean().item<double>() << ',' << quantiles[0].item<double>()
          << ',' << quantiles[1].item<double>() << ',' << quantiles[2].item<double>() << ',' << near << '\n';
    }
    out["mean_normalized_entropy"] = normalized.mean().item<double>();
    out["mean_margin"] = margin.mean().item<double>();
    std::vector<std::pair<std::string, Tensor>> series = {{"normalized entropy (all)", normalized.mean(0)}, {"top-1 margin (all)", margin.mean(0)}};
    if (records.set_ids.defined() && records.set_names.size() > 1)
      for (std::size_t s = 0; s < records.set_names.size(); ++s) {
        Tensor rows = records.rows_of_set(s);
        if (rows.numel() == 0) continue;
        Tensor h = normalized.index_select(0, rows).mean(0);
        out["by_set"][records.set_names[s]] = {{"mean_normalized_entropy", h.mean().item<double>()},
                                              {"mean_margin", margin.index_select(0, rows).mean().item<double>()}};
        series.emplace_back("entropy (" + records.set_names[s] + ")", h);
      }
    moelab::write_file_atomic(out_dir / "routing_entropy.csv", csv.str());
    out["figures"] = {moelab::plot_lines(out_dir, "entropy_by_layer", series, {"Routing entropy and top-1 margin", "decoder layer", "value", "", records.layer_labels(records.topk_ids.size(1))},
                                         "Mean per-token router entropy (normalized by log E; 1 is uniform) and top-1 margin per layer, overall and per set.")};
    return out;
  }

 private:
  Settings settings_;
};

}  // namespace

MOELAB_PLUGIN(options, RoutingEntropy)
