// Expert usage and load balance per MoE layer: the share of top-k slots each expert receives, the
// coefficient of variation and max/mean of that share, and its entropy normalized by log(E).
#include "moelab/moelab.h"

#include <sstream>

namespace {

class ExpertUsage final : public moelab::Analyzer {
 public:
  ExpertUsage(const moelab::Config& config, moelab::RunContext&) : weighted_(config.get_bool("weighted")) {}

  nlohmann::json analyze(const moelab::RoutingRecords& records, const std::filesystem::path& out_dir) override {
    const auto& ids = records.topk_ids;
    TORCH_CHECK(ids.dim() == 3, "expert_usage: topk_ids must be [tokens, layers, k]");
    const long long layers = ids.size(1), experts = records.num_experts;
    torch::Tensor mass = weighted_ ? records.topk_weights.to(torch::kFloat64) : torch::ones(ids.sizes(), torch::kFloat64);
    // counts[l, e] = sum over tokens and slots of mass where the slot chose expert e.
    torch::Tensor counts = torch::zeros({layers, experts}, torch::kFloat64);
    counts.scatter_add_(1, ids.permute({1, 0, 2}).reshape({layers, -1}), mass.permute({1, 0, 2}).reshape({layers, -1}));
    torch::Tensor share = counts / counts.sum(1, true);
    torch::Tensor mean = share.mean(1);
    torch::Tensor cv = share.std(1, /*unbiased=*/false) / mean;
    torch::Tensor max_over_mean = std::get<0>(share.max(1)) / mean;
    torch::Tensor plogp = torch::where(share > 0, share * share.log(), torch::zeros_like(share));
    torch::Tensor entropy = -plogp.sum(1) / std::log(static_cast<double>(experts));

    nlohmann::json out = {{"layers", nlohmann::json::array()}};
    std::ostringstream csv;
    csv << "layer,expert,share\n";
    for (long long l = 0; l < layers; ++l) {
      out["layers"].push_back({{"layer", l},
                               {"cv", cv[l].item<double>()},
                               {"max_over_mean", max_over_mean[l].item<double>()},
                               {"normalized_entropy", entropy[l].item<double>()}});
      for (long long e = 0; e < experts; ++e) csv << l << ',' << e << ',' << share[l][e].item<double>() << '\n';
    }
    out["mean_cv"] = cv.mean().item<double>();
    out["mean_normalized_entropy"] = entropy.mean().item<double>();
    moelab::write_file_atomic(out_dir / "expert_usage.csv", csv.str());
    return out;
  }

 private:
  bool weighted_;
};

moelab::Descriptor describe() {
  return moelab::Descriptor("expert_usage", moelab::Kind::analyzer, "0.1.0",
                            "expert usage per layer with load balance (CV, max/mean, normalized entropy)")
      .flag("weighted", false, "count routing weights instead of selections");
}

}  // namespace

MOELAB_PLUGIN(describe, ExpertUsage)
