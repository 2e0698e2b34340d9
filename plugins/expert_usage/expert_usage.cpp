// Expert usage and load balance per MoE layer: the share of top-k slots each expert receives, the
// coefficient of variation and max/mean of that share, and its entropy normalized by log(E); the same
// per text set when the records carry sets. Figure: the layer x expert usage heatmap.
#include "moelab/moelab.h"
#include "moelab/lib/files.h"
#include "moelab/lib/plot.h"

#include <sstream>

namespace {

using torch::Tensor;

struct Settings {
  bool weighted;
};

const moelab::Options<Settings>& options() {
  static const auto o =
      moelab::Options<Settings>("expert_usage", moelab::Kind::analyzer, "0.2.0",
                                "expert usage per layer and set with load balance (CV, max/mean, normalized entropy), usage heatmap")
          .flag("weighted", &Settings::weighted, false, "count routing weights instead of selections");
  return o;
}

struct Balance {
  Tensor share, cv, max_over_mean, entropy;  // [L, E], then [L] each
};

Balance balance(const Tensor& ids, const Tensor& mass, long long experts) {
  Balance b;
  b.share = moelab::usage_shares(ids, experts, mass);
  Tensor mean = b.share.mean(1);
  b.cv = b.share.std(1, /*unbiased=*/false) / mean;
  b.max_over_mean = std::get<0>(b.share.max(1)) / mean;
  Tensor plogp = torch::where(b.share > 0, b.share * b.share.clamp_min(1e-300).log(), torch::zeros_like(b.share));
  b.entropy = -plogp.sum(1) / std::log(static_cast<double>(experts));
  return b;
}

class ExpertUsage final : public moelab::Analyzer {
 public:
  ExpertUsage(const moelab::Config& config, moelab::RunContext&) : settings_(options().read(config)) {}

  nlohmann::json analyze(const moelab::RoutingRecords& records, const std::filesystem::path& out_dir) override {
    const auto& ids = records.topk_ids;
    TORCH_CHECK(ids.dim() == 3, "expert_usage: topk_ids must be [tokens, layers, k]");
    const long long layers = ids.size(1), experts = records.num_experts;
    Tensor mass = settings_.weighted ? records.topk_weights : Tensor();
    Balance all = balance(ids, mass, experts);

    nlohmann::json out = {{"layers", nlohmann::json::array()}};
    std::ostringstream csv;
    csv << "set,layer,expert,share\n";
    for (long long l = 0; l < layers; ++l) {
      out["layers"].push_back({{"layer", records.layer_label(l)},
                               {"cv", all.cv[l].item<double>()},
                               {"max_over_mean", all.max_over_mean[l].item<double>()},
                               {"normalized_entropy", all.entropy[l].item<double>()}});
      for (long long e = 0; e < experts; ++e) csv << "all," << records.layer_label(l) << ',' << e << ',' << all.share[l][e].item<double>() << '\n';
    }
    out["mean_cv"] = all.cv.mean().item<double>();
    out["mean_max_over_mean"] = all.max_over_mean.mean().item<double>();
    out["mean_normalized_entropy"] = all.entropy.mean().item<double>();
    out["figures"] = nlohmann::json::array();
    out["figures"].push_back(moelab::plot_heatmap(out_dir, "usage_heatmap", all.share, {"Expert usage (share of top-k slots)", "expert", "decoder layer", "", {}, records.layer_labels(all.share.size(0))},
                                                    "Share of each layer's top-k slots taken by each expert, over all sets; a balanced layer is one flat colour."));
    if (records.set_ids.defined() && records.set_names.size() > 1) {
      for (std::size_t s = 0; s < records.set_names.size(); ++s) {
        Tensor rows = records.rows_of_set(s);
        if (rows.numel() == 0) continue;
        Balance b = balance(ids.index_select(0, rows), mass.defined() ? mass.index_select(0, rows) : Tensor(), experts);
        out["by_set"][records.set_names[s]] = {{"tokens", rows.numel()}, {"mean_cv", b.cv.mean().item<double>()},
                                              {"mean_normalized_entropy", b.entropy.mean().item<double>()}};
        for (long long l = 0; l < layers; ++l)
          for (long long e = 0; e < experts; ++e)
            csv << records.set_names[s] << ',' << records.layer_label(l) << ',' << e << ',' << b.share[l][e].item<double>() << '\n';
      }
    }
    moelab::write_file_atomic(out_dir / "expert_usage.csv", csv.str());
    return out;
  }

 private:
  Settings settings_;
};

}  // namespace

MOELAB_PLUGIN(options, ExpertUsage)
