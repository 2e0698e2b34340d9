// Router-expert alignment: for each expert e of each MoE layer, the angle between its router row w_e
// and the span of the top `rank` right singular vectors of its input projections [W_gate; W_up] (the
// input directions the expert responds to most). A router row inside that span scores 0 degrees; a
// random direction in hidden space scores about arccos(sqrt(rank / hidden)), reported as the baseline.
// Figure: layer x expert heatmap of the angles.
#include "moelab/moelab.h"
#include "moelab/lib/files.h"
#include "moelab/lib/plot.h"

#include <cmath>
#include <sstream>

namespace {

using torch::Tensor;

struct Settings {
  long long rank;
};

const moelab::Options<Settings>& options() {
  static const auto o =
      moelab::Options<Settings>("router_alignment", moelab::Kind::analyzer, "0.1.0",
                                "angle between each expert's router row and the top singular directions of its input projections")
          .integer("rank", &Settings::rank, 8, "singular directions of the expert's input projections spanning the compared subspace").at_least(1);
  return o;
}

class RouterAlignment final : public moelab::Analyzer {
 public:
  RouterAlignment(const moelab::Config& config, moelab::RunContext&) : settings_(options().read(config)) {}

  nlohmann::json analyze(const moelab::RoutingRecords& records, const std::filesystem::path& out_dir) override {
    if (records.experts.empty() || records.experts.size() != records.routers.size())
      throw std::runtime_error("router_alignment: the records carry no expert and router weights");
    const long long layers = static_cast<long long>(records.routers.size());
    const long long experts = records.routers[0].size(0), hidden = records.routers[0].size(1);
    const long long rank = std::min(settings_.rank, hidden);
    Tensor angles = torch::zeros({layers, experts}, torch::kFloat64);
    for (long long l = 0; l < layers; ++l) {
      torch::NoGradGuard no_grad;
      Tensor router = records.routers[l].to(torch::kCPU, torch::kFloat64);
      const auto& ex = records.experts[l];
      for (long long e = 0; e < experts; ++e) {
        Tensor inputs = torch::cat({ex.gate[e], ex.up[e]}, 0).to(torch::kCPU, torch::kFloat64);  // [2I, H]
        Tensor v = std::get<2>(torch::linalg_svd(inputs, /*full_matrices=*/false)).narrow(0, 0, std::min<int64_t>(rank, inputs.size(0)));
        Tensor w = router[e];
        double cosine = (v.matmul(w).norm() / w.norm().clamp_min(1e-300)).clamp(0.0, 1.0).item<double>();
        angles[l][e] = std::acos(cosine) * 180.0 / M_PI;
      }
    }
    const double baseline = std::acos(std::sqrt(static_cast<double>(rank) / static_cast<double>(hidden))) * 180.0 / M_PI;
    nlohmann::json out = {{"rank", rank}, {"random_baseline_deg", baseline}, {"layers", nlohmann::json::array()}};
    std::ostringstream csv;
    csv << "layer,expert,angle_deg\n";
    for (long long l = 0; l < layers; ++l) {
      out["layers"].push_back({{"layer", records.layer_label(l)}, {"mean_angle_deg", angles[l].mean().item<double>()},
                               {"min_angle_deg", angles[l].min().item<double>()}});
      for (long long e = 0; e < experts; ++e) csv << records.layer_label(l) << ',' << e << ',' << angles[l][e].item<double>() << '\n';
    }
    out["mean_angle_deg"] = angles.mean().item<double>();
    moelab::write_file_atomic(out_dir / "router_alignment.csv", csv.str());
    out["figures"] = {moelab::plot_heatmap(
        out_dir, "alignment_heatmap", angles, {"Router row vs expert input subspace (degrees)", "expert", "decoder layer", "", {}, records.layer_labels(layers)},
        fmt::format("Angle between each expert's router row and the top-{} right singular directions of its gate and up projections; "
                    "a random direction scores about {:.1f} degrees.", rank, baseline))};
    return out;
  }

 private:
  Settings settings_;
};

}  // namespace

MOELAB_PLUGIN(options, RouterAlignment)
