// Cross-layer co-activation: for MoE layers l < m, with A_l the tokens-by-experts indicator of the
// top-k choices, the conditional probability P(expert j at m | expert i at l) = (A_l^T A_m)_ij / n_i
// and the Pearson correlation of the indicator columns. Per layer pair it summarizes how predictable
// layer m's choice is from layer l's (mean over used experts i of max_j P(j | i)), the mean absolute
// correlation, and the lift of every expert pair over independence: observed (A_l^T A_m)_ij against
// expected n_i(l) n_j(m) / N, summed into KL(observed || independent) in bits. Conditional matrices
// and lifts of adjacent layers go to CSV.
#include "moelab/moelab.h"
#include "moelab/lib/files.h"
#include "moelab/lib/plot.h"

#include <cmath>
#include <limits>
#include <sstream>

namespace {

using torch::Tensor;

struct Settings {
  long long top_pairs;
  double min_expected;
};

const moelab::Options<Settings>& options() {
  static const auto o =
      moelab::Options<Settings>("coactivation", moelab::Kind::analyzer, "0.2.0",
                                "cross-layer expert co-activation: P(expert j at layer m | expert i at layer l), correlations, lift over independence")
          .integer("top_pairs", &Settings::top_pairs, 5, "expert pairs with the highest lift listed per layer pair").at_least(0)
          .real("min_expected", &Settings::min_expected, 5.0,
                "expert pairs expected to share fewer tokens than this under independence are left out of top_lift and max_lift (noise)")
          .at_least(0);
  return o;
}

// Written to result.json beside the numbers it defines.
constexpr const char* kExpected =
    "n_i(l) * n_j(m) / N: the tokens expected to choose expert i at MoE layer l and expert j at layer m if the two layers chose "
    "independently, n_i(l) being the tokens (of N) that choose i at l; this is N p_i p_j with p the per-layer selection rates "
    "(which sum to k). Exact for two different layers, whose top-k draws are separate; within one layer, top-k without "
    "replacement makes experts compete for k slots (uniform random k-subsets of E experts give observed/(N p_i p_j) = "
    "(k-1)E/(k(E-1)), not 1), so same-layer pairs get no lift here.";
constexpr const char* kLift = "observed / expected: 1 = independent, above 1 = chosen together more often than chance";

const double kNaN = std::numeric_limits<double>::quiet_NaN();

class Coactivation final : public moelab::Analyzer {
 public:
  Coactivation(const moelab::Config& config, moelab::RunContext&) : settings_(options().read(config)) {}

  nlohmann::json analyze(const moelab::RoutingRecords& records, const std::filesystem::path& out_dir) override {
    const auto& ids = records.topk_ids;
    TORCH_CHECK(ids.dim() == 3, "coactivation: topk_ids must be [tokens, layers, k]");
    const long long tokens = ids.size(0), layers = ids.size(1), experts = records.num_experts;
    if (tokens == 0) throw std::runtime_error("coactivation: no routing records");
    std::vector<Tensor> active;  // per layer [N, E] 0/1
    for (long long l = 0; l < layers; ++l)
      active.push_back(torch::zeros({tokens, experts}, torch::kFloat64).scatter_(1, ids.select(1, l), 1.0));

    nlohmann::json pairs = nlohmann::json::array();
    Tensor predictability_matrix = torch::full({layers, layers}, kNaN, torch::kFloat64);
    Tensor correlation_matrix = predictability_matrix.clone(), information_matrix = predictability_matrix.clone();
    Tensor first_conditional, first_lift;
    std::ostringstream csv;
    csv << "layer_a,layer_b,mean_max_conditional,mean_abs_correlation,lift_information_bits,max_lift\n";
    for (long long l = 0; l < layers; ++l)
      for (long long m = l + 1; m < layers; ++m) {
        Tensor joint = active[l].t().matmul(active[m]);  // [E, E] tokens using i at l and j at m
        Tensor used = active[l].sum(0), used_m = active[m].sum(0);  // [E] n_i(l), n_j(m)
        Tensor conditional = joint / used.clamp_min(1).unsqueeze(1);
        double predictability = std::get<0>(conditional.max(1)).masked_select(used > 0).mean().item<double>();
        Tensor p_l = used / static_cast<double>(tokens), p_m = used_m / static_cast<double>(tokens);
        Tensor cov = joint / static_cast<double>(tokens) - p_l.unsqueeze(1) * p_m.unsqueeze(0);
        Tensor sd = (p_l * (1 - p_l)).sqrt().unsqueeze(1) * (p_m * (1 - p_m)).sqrt().unsqueeze(0);
        Tensor correlation = torch::where(sd > 0, cov / sd.clamp_min(1e-300), torch::zeros_like(cov));
        double mean_abs = correlation.abs().masked_select(sd > 0).mean().item<double>();

        Tensor expected = used.unsqueeze(1) * used_m.unsqueeze(0) / static_cast<double>(tokens);
        Tensor lift = torch::where(expected > 0, joint / expected.clamp_min(1e-300), torch::full_like(joint, kNaN));
        // KL of the observed (slot at l, slot at m) pairs from the independent ones: sum over pairs of
        // observed share * log2 lift (the mutual information of the two layers' choices when k = 1).
        Tensor seen = joint > 0;
        double information = (joint.masked_select(seen) / joint.sum() * lift.masked_select(seen).log2()).sum().item<double>();
        nlohmann::json top = top_lift(joint, expected, lift);
        nlohmann::json max_lift = top.empty() ? nlohmann::json(nullptr) : top[0]["lift"];

        const long long a = records.layer_label(l), b = records.layer_label(m);
        pairs.push_back({{"layer_a", a}, {"layer_b", b}, {"mean_max_conditional", predictability}, {"mean_abs_correlation", mean_abs},
                         {"lift_information_bits", information}, {"max_lift", max_lift}, {"top_lift", top}});
        csv << a << ',' << b << ',' << predictability << ',' << mean_abs << ',' << information << ','
            << (max_lift.is_null() ? std::string() : fmt::format("{}", max_lift.get<double>())) << '\n';
        predictability_matrix[l][m] = predictability;
        correlation_matrix[l][m] = correlation_matrix[m][l] = mean_abs;
        information_matrix[l][m] = information_matrix[m][l] = information;
        if (m == l + 1) {
          write_matrix(out_dir / fmt::format("conditional_{}_{}.csv", a, b), conditional);
          write_lift(out_dir / fmt::format("lift_{}_{}.csv", a, b), joint, expected, lift);
          if (!first_conditional.defined()) {
            first_conditional = conditional;
            first_lift = lift;
          }
        }
      }
    moelab::write_file_atomic(out_dir / "coactivation_pairs.csv", csv.str());

    nlohmann::json figures = nlohmann::json::array();
    if (layers >= 2) {
      const std::string layer_axis = "decoder layer (MoE layers only)";
      const std::vector<std::string> ticks = records.layer_labels(layers);
      figures.push_back(moelab::plot_heatmaps(
          out_dir, "pair_summary", "Cross-layer co-activation, per pair of MoE layers",
          {{predictability_matrix, {"Predictability of layer m from layer l", "later decoder layer m", "earlier decoder layer l",
                                    "mean over i of max_j P(j at m | i at l)", ticks, ticks}},
           {correlation_matrix, {"Indicator correlation", layer_axis, layer_axis, "mean |Pearson correlation| of the expert indicators", ticks, ticks}},
           {information_matrix, {"Dependence beyond chance", layer_axis, layer_axis, "KL(observed || independent co-activation), bits", ticks, ticks}}},
          "Three quantities per pair of MoE layers l < m, each with its own colour scale; grey cells have no value. Left: mean over the "
          "experts i used at layer l of max_j P(expert j at m | expert i at l), drawn at x = m, y = l (row 0 at the bottom), so only "
          "the triangle below the diagonal has values. Middle: mean |Pearson correlation| between the two layers' expert indicator "
          "columns (symmetric). Right: KL divergence in bits of the observed expert-pair co-activation counts from those expected if "
          "the layers chose independently (n_i n_j / N): the sum of observed share x log2 lift, 0 when independent (symmetric)."));
    }
    if (first_conditional.defined()) {
      figures.push_back(moelab::plot_heatmap(out_dir, "conditional_first_pair", first_conditional,
                                             {"P(expert j at the next layer | expert i)", "expert j (second MoE layer)", "expert i (first MoE layer)",
                                              "P(j at the second MoE layer | i at the first)"},
                                             "Conditional co-activation between the first two MoE layers, expert i at y = i (row 0 at the "
                                             "bottom); the row of every used expert sums to k."));
      figures.push_back(moelab::plot_heatmap(out_dir, "lift_first_pair", first_lift,
                                             {"Lift over independence", "expert j (second MoE layer)", "expert i (first MoE layer)",
                                              "observed / expected co-activation (1 = independent)"},
                                             "Tokens that chose expert i at the first MoE layer and expert j at the second, divided by the "
                                             "count expected if the layers chose independently (n_i n_j / N); expert i at y = i (row 0 at "
                                             "the bottom), grey where an expert was never chosen."));
    }
    double mean_predictability = 0, mean_information = 0;
    for (const auto& p : pairs) {
      mean_predictability += p["mean_max_conditional"].get<double>();
      mean_information += p["lift_information_bits"].get<double>();
    }
    const double count = static_cast<double>(pairs.size());
    return {{"pairs", pairs}, {"tokens", tokens}, {"figures", figures}, {"expected", kExpected}, {"lift", kLift},
            {"mean_max_conditional", pairs.empty() ? 0.0 : mean_predictability / count},
            {"mean_lift_information_bits", pairs.empty() ? 0.0 : mean_information / count}};
  }

 private:
  // The expert pairs with the highest lift among those expected to share at least min_expected tokens.
  nlohmann::json top_lift(const Tensor& joint, const Tensor& expected, const Tensor& lift) const {
    nlohmann::json out = nlohmann::json::array();
    Tensor eligible = (expected >= settings_.min_expected) & (expected > 0);
    Tensor ranked = torch::where(eligible, lift, torch::full_like(lift, -1.0)).reshape(-1);
    const long long n = std::min<long long>(settings_.top_pairs, eligible.sum().item<int64_t>());
    if (n == 0) return out;
    Tensor order = std::get<1>(ranked.topk(n));
    const long long experts = joint.size(1);
    for (long long r = 0; r < n; ++r) {
      const long long flat = order[r].item<int64_t>(), i = flat / experts, j = flat % experts;
      out.push_back({{"expert_a", i}, {"expert_b", j}, {"observed", joint[i][j].item<double>()}, {"expected", expected[i][j].item<double>()},
                     {"lift", lift[i][j].item<double>()}});
    }
    return out;
  }

  static void write_matrix(const std::filesystem::path& file, const Tensor& m) {
    std::ostringstream out;
    for (long long i = 0; i < m.size(0); ++i)
      for (long long j = 0; j < m.size(1); ++j) out << m[i][j].item<double>() << (j + 1 < m.size(1) ? ',' : '\n');
    moelab::write_file_atomic(file, out.str());
  }

  // One row per expert pair: expert_a (layer l), expert_b (layer m), observed and expected tokens, lift
  // (empty where an expert was never chosen).
  static void write_lift(const std::filesystem::path& file, const Tensor& joint, const Tensor& expected, const Tensor& lift) {
    auto counts = joint.accessor<double, 2>(), baseline = expected.accessor<double, 2>(), ratio = lift.accessor<double, 2>();
    std::ostringstream out;
    out << "expert_a,expert_b,observed,expected,lift\n";
    for (long long i = 0; i < joint.size(0); ++i)
      for (long long j = 0; j < joint.size(1); ++j)
        out << i << ',' << j << ',' << counts[i][j] << ',' << baseline[i][j] << ','
            << (std::isnan(ratio[i][j]) ? std::string() : fmt::format("{}", ratio[i][j])) << '\n';
    moelab::write_file_atomic(file, out.str());
  }

  Settings settings_;
};

}  // namespace

MOELAB_PLUGIN(options, Coactivation)
