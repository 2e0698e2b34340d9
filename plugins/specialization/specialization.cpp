// Expert specialization by text set: per MoE layer, the KL divergence KL(u_s || u) of each set's
// expert usage u_s (share of top-k slots) from the overall usage u, and each set's top experts with
// their lift u_s(e) / u(e). Figure: KL per set and layer.
#include "moelab/moelab.h"
#include "moelab/lib/files.h"
#include "moelab/lib/plot.h"

#include <sstream>

namespace {

using torch::Tensor;

struct Settings {
  long long top_experts;
};

const moelab::Options<Settings>& options() {
  static const auto o =
      moelab::Options<Settings>("specialization", moelab::Kind::analyzer, "0.1.0", "expert specialization by text set: KL from overall usage, top experts")
          .integer("top_experts", &Settings::top_experts, 3, "experts listed per set and layer, by lift over the overall usage");
  return o;
}

class Specialization final : public moelab::Analyzer {
 public:
  Specialization(const moelab::Config& config, moelab::RunContext&) : settings_(options().read(config)) {}

  nlohmann::json analyze(const moelab::RoutingRecords& records, const std::filesystem::path& out_dir) override {
    if (!records.set_ids.defined() || records.set_names.size() < 2)
      throw std::runtime_error("specialization: needs records of at least two text sets");
    const long long layers = records.topk_ids.size(1);
    Tensor overall = moelab::usage_shares(records.topk_ids, records.num_experts);
    nlohmann::json out = {{"sets", nlohmann::json::object()}};
    std::vector<std::pair<std::string, Tensor>> series;
    std::vector<std::pair<std::string, std::vector<double>>> bars(1, {"mean KL over layers", {}});
    std::vector<std::string> names;
    std::ostringstream csv;
    csv << "set,layer,kl\n";
    double total = 0;
    for (std::size_t s = 0; s < records.set_names.size(); ++s) {
      Tensor rows = records.rows_of_set(s);
      if (rows.numel() == 0) continue;
      Tensor u = moelab::usage_shares(records.topk_ids.index_select(0, rows), records.num_experts);
      Tensor terms = torch::where(u > 0, u * (u.clamp_min(1e-300) / overall.clamp_min(1e-300)).log(), torch::zeros_like(u));
      Tensor kl = terms.sum(1);  // [L]
      nlohmann::json per_layer = nlohmann::json::array();
      for (long long l = 0; l < layers; ++l) {
        auto [values, experts] = (u[l] / overall[l].clamp_min(1e-300)).topk(std::min<long long>(settings_.top_experts, records.num_experts));
        nlohmann::json top = nlohmann::json::array();
        for (long long i = 0; i < experts.numel(); ++i)
          top.push_back({{"expert", experts[i].item<int64_t>()}, {"share", u[l][experts[i]].item<double>()}, {"lift", values[i].item<double>()}});
        per_layer.push_back({{"layer", records.layer_label(l)}, {"kl", kl[l].item<double>()}, {"top_experts", top}});
        csv << records.set_names[s] << ',' << records.layer_label(l) << ',' << kl[l].item<double>() << '\n';
      }
      out["sets"][records.set_names[s]] = {{"tokens", rows.numel()}, {"mean_kl", kl.mean().item<double>()}, {"layers", per_layer}};
      total += kl.mean().item<double>();
      names.push_back(records.set_names[s]);
      bars[0].second.push_back(kl.mean().item<double>());
      series.emplace_back(records.set_names[s], kl);
    }
    out["mean_kl"] = total / static_cast<double>(names.size());
    moelab::write_file_atomic(out_dir / "specialization.csv", csv.str());
    out["figures"] = {
        moelab::plot_bars(out_dir, "kl_by_set", names, bars, {"Specialization: KL(set usage || overall usage)", "text set", "KL (nats)"},
                          "How far each text set's expert usage is from the overall usage, averaged over layers; 0 means the set routes like everything else."),
        moelab::plot_lines(out_dir, "kl_by_layer", series, {"Specialization per layer", "decoder layer", "KL (nats)", "", records.layer_labels(records.topk_ids.size(1))},
                           "KL divergence of each set's expert usage from the overall usage, per layer.")};
    return out;
  }

 private:
  Settings settings_;
};

}  // namespace

MOELAB_PLUGIN(options, Specialization)
