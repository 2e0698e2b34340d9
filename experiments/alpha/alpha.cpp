// Heavy-tailed self-regularization metrics of the expert weights (and, optionally, attention): for
// each matrix the power-law exponent alpha of its eigenvalue tail (moelab/spectral.h; the Hill estimator
// by default, as the public pipeline; KS-chosen maximum likelihood as an option), written to alpha.csv /
// alpha.json with a per-layer summary and a figure. A bit plan ranks matrices by it.
#include "moelab/moelab.h"
#include "moelab/lib/files.h"
#include "moelab/lib/log.h"
#include "moelab/lib/plot.h"
#include "moelab/lib/spectral.h"

#include <regex>
#include <sstream>

namespace {

struct Settings {
  std::string method;  // moelab::fit_power_laws takes it by name
  bool include_attention;
};

const moelab::Options<Settings>& options() {
  static const auto o =
      moelab::Options<Settings>("alpha", moelab::Kind::stage, "0.1.0", "power-law alpha of every expert matrix's eigenvalue tail (WeightWatcher)")
          .choice("method", &Settings::method, "hill", {"hill", "ks"},
                  "hill: the public script's estimator, 1 + k / sum ln(lambda_i / lambda_(n-k)) over the k = max(10, n/10) largest "
                  "eigenvalues; ks: maximum likelihood with xmin by the Kolmogorov-Smirnov distance (WeightWatcher)")
          .flag("include_attention", &Settings::include_attention, false, "also fit the attention projections (reported, never quantized)");
  return o;
}

class Alpha final : public moelab::Stage {
 public:
  Alpha(const moelab::Config& config, moelab::RunContext& context) : settings_(options().read(config)), context_(context) {}

  void run(const std::filesystem::path& out_dir, nlohmann::json& summary) override {
    moelab::Model& model = context_.model();
    const std::string& method = settings_.method;
    nlohmann::json rows = nlohmann::json::array();
    std::ostringstream csv;
    csv << "layer,module,expert,name,alpha,xmin,ks,tail\n";
    auto add = [&](int layer, const std::string& module, long long expert, const std::string& name, const moelab::PowerLawFit& fit) {
      rows.push_back({{"layer", layer}, {"module", module}, {"expert", expert}, {"name", name}, {"alpha", fit.alpha},
                      {"xmin", fit.xmin}, {"ks", fit.ks}, {"tail", fit.tail}, {"method", method}});
      csv << layer << ',' << module << ',' << expert << ',' << name << ',' << fit.alpha << ',' << fit.xmin << ',' << fit.ks << ',' << fit.tail << '\n';
    };
    const auto& layers = model.info().moe_layers;
    std::vector<std::pair<std::string, torch::Tensor>> series = {{"gate", torch::zeros({(long long)layers.size()})},
                                                                 {"up", torch::zeros({(long long)layers.size()})},
                                                                 {"down", torch::zeros({(long long)layers.size()})}};
    moelab::Progress progress("alpha", static_cast<long long>(layers.size()), "matrices");
    for (std::size_t li = 0; li < layers.size(); ++li) {
      moelab::ExpertWeights ex = model.expert_weights(layers[li]);
      const torch::Tensor* stacks[3] = {&ex.gate, &ex.up, &ex.down};
      for (int p = 0; p < 3; ++p) {
        std::vector<moelab::PowerLawFit> fits = moelab::fit_power_laws(moelab::spectral_density(*stacks[p]), method);  // one per expert
        double sum = 0;
        for (std::size_t e = 0; e < fits.size(); ++e) {
          add(layers[li], ex.names[p], static_cast<long long>(e), fmt::format("{}{}.{}.weight", ex.prefix, e, ex.names[p]), fits[e]);
          sum += fits[e].alpha;
        }
        series[p].second[static_cast<long long>(li)] = sum / static_cast<double>(fits.size());
      }
      progress.advance(3 * model.info().num_experts);
    }
    if (settings_.include_attention) {
      std::regex attention("^model\\.layers\\.(\\d+)\\.self_attn\\.(\\w+)\\.weight$");
      for (auto& [name, w] : model.named_weights()) {
        std::smatch m;
        if (w.dim() == 2 && std::regex_match(name, m, attention))
          add(std::stoi(m[1]), m[2], -1, name, moelab::fit_power_law(moelab::spectral_density(w), method));
      }
    }
    progress.finish();
    moelab::write_file_atomic(out_dir / "alpha.csv", csv.str());
    moelab::write_file_atomic(out_dir / "alpha.json", rows.dump(1) + "\n");
    nlohmann::json per_layer = nlohmann::json::array();
    for (std::size_t li = 0; li < layers.size(); ++li)
      per_layer.push_back({{"layer", layers[li]}, {"gate", series[0].second[li].item<double>()}, {"up", series[1].second[li].item<double>()},
                           {"down", series[2].second[li].item<double>()}});
    auto figure = moelab::plot_lines(out_dir, "alpha_by_layer", series, {"Mean alpha of the expert matrices", "MoE layer index", "alpha"},
                                     "Mean power-law exponent alpha of each layer's expert projections; larger alpha: lighter tail, less trained.");
    double mean = 0;
    for (const auto& r : rows) mean += r["alpha"].get<double>();
    summary = {{"method", method}, {"matrices", rows.size()}, {"mean_alpha", mean / static_cast<double>(rows.size())}, {"layers", per_layer},
               {"alpha_json", (out_dir / "alpha.json").string()}, {"figures", {figure}}};
    moelab::log::info("alpha: {} matrices, mean alpha {:.3f} ({})", rows.size(), summary["mean_alpha"].get<double>(), method);
  }

 private:
  Settings settings_;
  moelab::RunContext& context_;
};

}  // namespace

MOELAB_PLUGIN(options, Alpha)
