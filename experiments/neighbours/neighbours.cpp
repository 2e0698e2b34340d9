// Task-neighbour graph of RoMA: for each sample i, its k nearest samples j != i by cosine similarity of
// task embeddings, weighted W_ij = exp(-(1 - cos_ij)^2 / (2 sigma^2)) normalized over the k neighbours.
// Writes neighbours.json: {"<id>": [{"id", "cos", "weight"}, ...]}.
#include "moelab/moelab.h"

namespace {

class NeighboursStage final : public moelab::Stage {
 public:
  NeighboursStage(const moelab::Config& config, moelab::RunContext& context)
      : dataset_(context.make<moelab::Dataset>(config.get_string("dataset"))),
        embedder_(context.make<moelab::Embedder>(config.get_string("embedder"))),
        k_(config.get_int("k")),
        sigma_(config.get_real("sigma")),
        context_(context) {
    if (k_ < 1) throw std::runtime_error(fmt::format("[{}] k must be at least 1 ({})", config.id(), config.where("k")));
    if (sigma_ <= 0) throw std::runtime_error(fmt::format("[{}] sigma must be positive ({})", config.id(), config.where("sigma")));
  }

  void run(const std::filesystem::path& out_dir, nlohmann::json& summary) override {
    const long long n = static_cast<long long>(dataset_->size());
    if (n < 2) throw std::runtime_error("neighbours: the dataset needs at least two samples");
    std::vector<std::string> texts;
    for (long long i = 0; i < n; ++i) texts.push_back(dataset_->at(i).text);
    moelab::NeighbourGraph g = moelab::nearest_neighbours(embedder_->embed(texts), {}, k_, sigma_);
    const long long k = g.index.size(1);

    nlohmann::json graph = nlohmann::json::object();
    moelab::Progress progress("neighbours", n, "samples");
    for (long long i = 0; i < n; ++i) {
      nlohmann::json row = nlohmann::json::array();
      for (long long j = 0; j < k; ++j)
        row.push_back({{"id", dataset_->at(g.index[i][j].item<int64_t>()).id},
                       {"cos", g.cosine[i][j].item<double>()},
                       {"weight", g.weight[i][j].item<double>()}});
      graph[dataset_->at(i).id] = row;
      progress.advance(1);
    }
    progress.finish();
    moelab::write_file_atomic(out_dir / "neighbours.json", graph.dump(1) + "\n");
    double mean_cos = g.cosine.mean().item<double>();
    summary = {{"samples", n}, {"k", k}, {"mean_neighbour_cos", mean_cos}};
    context_.record_metrics({{"stage", "neighbours"}, {"mean_neighbour_cos", mean_cos}});
    moelab::log::info("neighbours: {} samples, k={}, mean neighbour cosine {:.3f}", n, k, mean_cos);
  }

 private:
  std::shared_ptr<moelab::Dataset> dataset_;
  std::shared_ptr<moelab::Embedder> embedder_;
  long long k_;
  double sigma_;
  moelab::RunContext& context_;
};

moelab::Descriptor describe() {
  return moelab::Descriptor("neighbours", moelab::Kind::stage, "0.1.0", "RoMA task-neighbour graph with Gaussian kernel weights")
      .component("dataset", moelab::Kind::dataset, "", "the samples")
      .component("embedder", moelab::Kind::embedder, "", "the task-embedding model")
      .integer("k", 5, "neighbours per sample")
      .real("sigma", 0.4, "kernel width of W_ij = exp(-(1 - cos)^2 / (2 sigma^2))");
}

}  // namespace

MOELAB_PLUGIN(describe, NeighboursStage)
