// Router-weight geometry across MoE layers, from the gate matrices W_l [E, hidden]: cosine similarity
// of matched rows (expert e at l vs expert e at m), linear CKA of the gate matrices with the hidden
// dimensions as samples and the experts as features (so expert numbering does not matter), singular-value
// spectra with effective rank (exp of the entropy of the normalized spectrum), and the principal angles
// between the layers' router row spaces (arccos of the singular values of Q_l^T Q_m).
#include "moelab/moelab.h"
#include "moelab/lib/files.h"
#include "moelab/lib/plot.h"

#include <cmath>
#include <sstream>

namespace {

using torch::Tensor;

struct Settings {
  long long subspace_rank;
};

const moelab::Options<Settings>& options() {
  static const auto o =
      moelab::Options<Settings>("router_geometry", moelab::Kind::analyzer, "0.1.0",
                                "router-weight similarity (row cosine, CKA), spectra, effective rank, principal angles")
          .integer("subspace_rank", &Settings::subspace_rank, 0, "rows of the router row space compared by principal angles (0: all)");
  return o;
}

// Linear CKA (Kornblith et al. 2019) of two representations of the same samples, the rows of a [n, p] and
// b [n, q]: ||A^T B||_F^2 / (||A^T A||_F ||B^T B||_F), A and B centered over the samples.
double linear_cka(Tensor a, Tensor b) {
  a = a - a.mean(0, true);
  b = b - b.mean(0, true);
  double cross = a.t().matmul(b).pow(2).sum().item<double>();
  double self_a = a.t().matmul(a).pow(2).sum().item<double>(), self_b = b.t().matmul(b).pow(2).sum().item<double>();
  return cross / std::sqrt(self_a * self_b);
}

class RouterGeometry final : public moelab::Analyzer {
 public:
  RouterGeometry(const moelab::Config& config, moelab::RunContext&) : settings_(options().read(config)) {}

  nlohmann::json analyze(const moelab::RoutingRecords& records, const std::filesystem::path& out_dir) override {
    const auto& routers = records.routers;
    if (routers.size() < 1) throw std::runtime_error("router_geometry: the records carry no router weights");
    std::vector<Tensor> w, basis;
    nlohmann::json layers = nlohmann::json::array();
    std::ostringstream spectra;
    spectra << "layer,index,singular_value\n";
    for (std::size_t l = 0; l < routers.size(); ++l) {
      w.push_back(routers[l].detach().to(torch::kCPU, torch::kFloat64));
      auto [u, s, v] = torch::linalg_svd(w.back(), /*full_matrices=*/false);
      Tensor p = s / s.sum();
      double effective_rank = std::exp(-(p * p.clamp_min(1e-300).log()).sum().item<double>());
      const long long r = std::min<long long>(settings_.subspace_rank > 0 ? settings_.subspace_rank : s.size(0), s.size(0));
      basis.push_back(v.narrow(0, 0, r).t());  // [hidden, r] orthonormal basis of the top row space
      layers.push_back({{"layer", records.layer_label(static_cast<long long>(l))}, {"effective_rank", effective_rank}, {"top_singular_value", s[0].item<double>()}});
      for (long long i = 0; i < s.size(0); ++i) spectra << records.layer_label(static_cast<long long>(l)) << ',' << i << ',' << s[i].item<double>() << '\n';
    }
    nlohmann::json pairs = nlohmann::json::array();
    const auto count = static_cast<long long>(w.size());
    Tensor cosine_matrix = torch::eye(count, torch::kFloat64), cka_matrix = torch::eye(count, torch::kFloat64);
    std::vector<std::pair<std::string, Tensor>> spectra_series;
    for (long long l = 0; l < count; ++l) {
      Tensor s = torch::linalg_svdvals(w[l]);
      spectra_series.emplace_back(fmt::format("layer {}", records.layer_label(l)), s / s[0]);
    }
    std::ostringstream csv;
    csv << "layer_a,layer_b,mean_row_cosine,cka,mean_principal_angle_deg,max_principal_angle_deg\n";
    for (std::size_t l = 0; l < w.size(); ++l)
      for (std::size_t m = l + 1; m < w.size(); ++m) {
        double cosine = torch::cosine_similarity(w[l], w[m], 1).mean().item<double>();
        // Samples: the hidden dimensions d, each represented by column d of W (what it adds to every
        // expert's logit); invariant to any reordering or rotation of the experts and to scale.
        double cka = linear_cka(w[l].t(), w[m].t());
        Tensor sv = torch::linalg_svdvals(basis[l].t().matmul(basis[m])).clamp(-1.0, 1.0);
        Tensor angles = sv.acos() * (180.0 / M_PI);
        double mean_angle = angles.mean().item<double>(), max_angle = angles.max().item<double>();
        cosine_matrix[l][m] = cosine_matrix[m][l] = cosine;
        cka_matrix[l][m] = cka_matrix[m][l] = cka;
        const long long a = records.layer_label(static_cast<long long>(l)), b = records.layer_label(static_cast<long long>(m));
        pairs.push_back({{"layer_a", a}, {"layer_b", b}, {"mean_row_cosine", cosine}, {"cka", cka},
                         {"mean_principal_angle_deg", mean_angle}, {"max_principal_angle_deg", max_angle}});
        csv << a << ',' << b << ',' << cosine << ',' << cka << ',' << mean_angle << ',' << max_angle << '\n';
      }
    moelab::write_file_atomic(out_dir / "router_spectra.csv", spectra.str());
    moelab::write_file_atomic(out_dir / "router_similarity.csv", csv.str());
    const std::string layer_axis = "decoder layer (MoE layers only)";
    const std::vector<std::string> ticks = records.layer_labels(count);
    nlohmann::json figures = {
        moelab::plot_heatmap(out_dir, "row_cosine", cosine_matrix,
                             {"Router similarity: mean cosine of matched rows", layer_axis, layer_axis, "mean over e of cos(W_l[e], W_m[e])",
                              ticks, ticks},
                             "Mean cosine similarity between expert e's router row at MoE layer l and at MoE layer m (symmetric; layers "
                             "labelled by their decoder layer index, as in the JSON and the logs)."),
        moelab::plot_heatmap(out_dir, "cka", cka_matrix,
                             {"Router similarity: linear CKA over hidden dimensions", layer_axis, layer_axis, "linear CKA of W_l^T and W_m^T",
                              ticks, ticks},
                             "Linear CKA between two MoE layers' gate matrices W [experts, hidden], computed on W^T: the samples are the "
                             "hidden dimensions (the residual-stream coordinates both layers read) and the features are each layer's "
                             "experts, centered over the hidden dimensions. It does not depend on how the experts are numbered (any "
                             "rotation of the experts, and scale, leave it unchanged); 1 = the two routers' logit maps agree up to such "
                             "a transform. Symmetric; layers labelled by their decoder layer index."),
        moelab::plot_lines(out_dir, "spectra", spectra_series, {"Router singular-value spectra", "index", "singular value / largest"},
                           "Singular values of each layer's gate matrix, normalized by the largest; a fast decay means a low-rank router.", true)};
    return {{"layers", layers}, {"pairs", pairs}, {"figures", figures}};
  }

 private:
  Settings settings_;
};

}  // namespace

MOELAB_PLUGIN(options, RouterGeometry)
