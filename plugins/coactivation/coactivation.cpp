// Cross-layer co-activation: for MoE layers l < m, with A_l the tokens-by-experts indicator of the
// top-k choices, the conditional probability P(expert j at m | expert i at l) = (A_l^T A_m)_ij / n_i
// and the Pearson correlation of the indicator columns. Per layer pair it summarizes how predictable
// layer m's choice is from layer l's (mean over used experts i of max_j P(j | i)) and the mean absolute
// correlation; conditional matrices of adjacent layers go to CSV.
#include "moelab/moelab.h"
#include "moelab/lib/files.h"
#include "moelab/lib/plot.h"

#include <sstream>

namespace {

class Coactivation final : public moelab::Analyzer {
 public:
  Coactivation(const moelab::Config&, moelab::RunContext&) {}

  nlohmann::json analyze(const moelab::RoutingRecords& records, const std::filesystem::path& out_dir) override {
    const auto& ids = records.topk_ids;
    TORCH_CHECK(ids.dim() == 3, "coactivation: topk_ids must be [tokens, layers, k]");
    const long long tokens = ids.size(0), layers = ids.size(1), experts = records.num_experts;
    if (tokens == 0) throw std::runtime_error("coactivation: no routing records");
    std::vector<torch::Tensor> active;  // per layer [N, E] 0/1
    for (long long l = 0; l < layers; ++l)
      active.push_back(torch::zeros({tokens, experts}, torch::kFloat64).scatter_(1, ids.select(1, l), 1.0));

    nlohmann::json pairs = nlohmann::json::array();
    torch::Tensor summary = torch::eye(layers, torch::kFloat64), first_conditional;
    std::ostringstream csv;
    csv << "layer_a,layer_b,mean_max_conditional,mean_abs_correlation\n";
    for (long long l = 0; l < layers; ++l)
      for (long long m = l + 1; m < layers; ++m) {
        torch::Tensor joint = active[l].t().matmul(active[m]);  // [E, E] tokens using i at l and j at m
        torch::Tensor used = active[l].sum(0);                   // [E]
        torch::Tensor conditional = joint / used.clamp_min(1).unsqueeze(1);
        torch::Tensor mask = used > 0;
        double predictability = std::get<0>(conditional.max(1)).masked_select(mask).mean().item<double>();
        torch::Tensor p_l = active[l].mean(0), p_m = active[m].mean(0);
        torch::Tensor cov = joint / static_cast<double>(tokens) - p_l.unsqueeze(1) * p_m.unsqueeze(0);
        torch::Tensor sd = (p_l * (1 - p_l)).sqrt().unsqueeze(1) * (p_m * (1 - p_m)).sqrt().unsqueeze(0);
        torch::Tensor correlation = torch::where(sd > 0, cov / sd.clamp_min(1e-300), torch::zeros_like(cov));
        double mean_abs = correlation.abs().masked_select(sd > 0).mean().item<double>();
        pairs.push_back({{"layer_a", l}, {"layer_b", m}, {"mean_max_conditional", predictability}, {"mean_abs_correlation", mean_abs}});
        csv << l << ',' << m << ',' << predictability << ',' << mean_abs << '\n';
        summary[l][m] = predictability;
        summary[m][l] = mean_abs;
        if (m == l + 1) write_matrix(out_dir / fmt::format("conditional_{}_{}.csv", l, m), conditional);
        if (m == l + 1 && !first_conditional.defined()) first_conditional = conditional;
      }
    moelab::write_file_atomic(out_dir / "coactivation_pairs.csv", csv.str());
    nlohmann::json figures = {moelab::plot_heatmap(
        out_dir, "pair_summary", summary, {"Cross-layer co-activation", "MoE layer index", "MoE layer index"},
        "Above the diagonal (row l < column m): mean over experts i of max_j P(expert j at m | expert i at l); below it: mean |correlation| "
        "of the expert indicators.")};
    if (first_conditional.defined())
      figures.push_back(moelab::plot_heatmap(out_dir, "conditional_first_pair", first_conditional,
                                             {"P(expert j at the next layer | expert i)", "expert j (next layer)", "expert i (first MoE layer)"},
                                             "Conditional co-activation between the first two MoE layers; each row sums to k."));
    double mean_predictability = 0;
    for (const auto& p : pairs) mean_predictability += p["mean_max_conditional"].get<double>();
    return {{"pairs", pairs}, {"tokens", tokens}, {"figures", figures},
            {"mean_max_conditional", pairs.empty() ? 0.0 : mean_predictability / static_cast<double>(pairs.size())}};
  }

 private:
  static void write_matrix(const std::filesystem::path& file, const torch::Tensor& m) {
    std::ostringstream out;
    for (long long i = 0; i < m.size(0); ++i)
      for (long long j = 0; j < m.size(1); ++j) out << m[i][j].item<double>() << (j + 1 < m.size(1) ? ',' : '\n');
    moelab::write_file_atomic(file, out.str());
  }
};

moelab::Descriptor describe() {
  return moelab::Descriptor("coactivation", moelab::Kind::analyzer, "0.1.0",
                            "cross-layer expert co-activation: P(expert j at layer m | expert i at layer l), correlations");
}

}  // namespace

MOELAB_PLUGIN(describe, Coactivation)
