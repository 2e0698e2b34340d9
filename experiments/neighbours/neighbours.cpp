// Task-neighbour graph of RoMA: for each sample i, its k nearest samples j != i by cosine similarity of
// task embeddings, weighted W_ij = exp(-(1 - cos_ij)^2 / (2 sigma^2)) normalized over the k neighbours.
// Writes neighbours.json: {"<id>": [{"id", "cos", "weight"}, ...]}.
#include "moelab/moelab.h"
#include "moelab/lib/files.h"
#include "moelab/lib/log.h"
#include "moelab/lib/neighbours.h"

namespace {

struct Settings {
  std::string dataset, embedder;
  long long k;
  double sigma;
};

const moelab::Options<Settings>& options() {
  static const auto o =
      moelab::Options<Settings>("neighbours", moelab::Kind::stage, "0.1.0", "RoMA task-neighbour graph with Gaussian kernel weights")
          .component("dataset", &Settings::dataset, moelab::Kind::dataset, "the samples")
          .component("embedder", &Settings::embedder, moelab::Kind::embedder, "the task-embedding model")
          .integer("k", &Settings::k, 5, "neighbours per sample").at_least(1)
          .real("sigma", &Settings::sigma, 0.4, "kernel width of W_ij = exp(-(1 - cos)^2 / (2 sigma^2))").positive();
  return o;
}

class NeighboursStage final : public moelab::Stage {
 public:
  NeighboursStage(const moelab::Config& config, moelab::RunContext& context)
      : settings_(options().read(config)),
        dataset_(context.make<moelab::Dataset>(settings_.dataset)),
        embedder_(context.make<moelab::Embedder>(settings_.embedder)),
        context_(context) {
    if (const long long others = static_cast<long long>(dataset_->size()) - 1; others >= 1 && settings_.k > others)
      moelab::log::warn("[{}] k = {} ({}): a sample has only {} other samples to be neighbours, so k = {} is used", config.id(), settings_.k,
                        config.where("k"), others, others);
  }

  void run(const std::filesystem::path& out_dir, nlohmann::json& summary) override {
    const long long n = static_cast<long long>(dataset_->size());
    if (n < 2) throw std::runtime_error("neighbours: the dataset needs at least two samples");
    std::vector<std::string> texts;
    for (long long i = 0; i < n; ++i) texts.push_back(dataset_->at(i).text);
    moelab::NeighbourGraph g = moelab::nearest_neighbours(embedder_->embed(texts), {}, settings_.k, settings_.sigma);
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
  Settings settings_;
  std::shared_ptr<moelab::Dataset> dataset_;
  std::shared_ptr<moelab::Embedder> embedder_;
  moelab::RunContext& context_;
};

}  // namespace

MOELAB_PLUGIN(options, NeighboursStage)
