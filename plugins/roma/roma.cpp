// RoMA: task cross-entropy plus the routing-manifold term
//   L = L_task + lambda(t) * mean_i sum_{j in N(i)} W_ij ||r_i - r_j||^2,   lambda(t) = lambda * min(1, (t+1)/T_warm)
// r_i: sample i's routing at its last prompt token in the target layers, concatenated, computed LIVE
// (batch.routing), so the gradient reaches the routers. N(i): the k nearest successful samples (is_correct)
// by task-embedding cosine, i excluded; W_ij = exp(-(1 - cos_ij)^2 / (2 sigma^2)) normalized over N(i);
// r_j as recorded in the routing-results JSON (neighbours = "recorded"), or recomputed by the current
// model without gradient (neighbours = "live").
#include "moelab/moelab.h"
#include "moelab/routing_results.h"

#include <unordered_map>

namespace {

torch::Tensor topk_renorm(const torch::Tensor& probs, long long k) {
  auto [weights, ids] = probs.topk(k, -1);
  return torch::zeros_like(probs).scatter(-1, ids, weights / weights.sum(-1, true));
}

class Roma final : public moelab::Objective {
 public:
  Roma(const moelab::Config& config, moelab::RunContext& context)
      : context_(context),
        task_(context.make<moelab::Objective>(config.get_string("task"))),
        k_(config.get_int("k")),
        sigma_(config.get_real("sigma")),
        lambda_(config.get_real("lambda")),
        lambda_warmup_(config.get_int("lambda_warmup_steps")),
        representation_(config.get_string("representation")),
        live_neighbours_(config.get_string("neighbours") == "live") {
    std::filesystem::path path = context.run_path(config.get_path("routing_results"));
    std::vector<moelab::RoutingResult> results = moelab::read_routing_results(path);
    std::vector<std::string> texts;
    std::vector<int64_t> successful;
    for (std::size_t i = 0; i < results.size(); ++i) {
      texts.push_back(results[i].input_text);
      if (results[i].is_correct) successful.push_back(static_cast<int64_t>(i));
    }
    if (successful.size() < 2)
      throw std::runtime_error(fmt::format("roma: {} has {} correctly answered samples; the manifold term needs at least 2", path.string(),
                                           successful.size()));
    torch::Tensor e = context.make<moelab::Embedder>(config.get_string("embedder"))->embed(texts);
    moelab::NeighbourGraph graph = moelab::nearest_neighbours(e, successful, k_, sigma_);
    const long long k = graph.index.size(1);
    for (std::size_t i = 0; i < results.size(); ++i) {
      Neighbours n;
      n.weights = graph.weight[static_cast<long long>(i)];
      for (long long j = 0; j < k; ++j) n.keys.push_back(results[graph.index[static_cast<long long>(i)][j].item<int64_t>()].key);
      neighbours_[results[i].key] = std::move(n);
      recorded_routing_[results[i].key] = std::move(results[i].routing);
      prompts_[results[i].key] = results[i].input_text;
    }
    moelab::log::info("roma: {} samples, {} successful; k={} neighbours, sigma={}, lambda={} (warmup {} steps), r = {}, r_j {}",
                      results.size(), successful.size(), k, sigma_, lambda_, lambda_warmup_, representation_,
                      live_neighbours_ ? "live" : "recorded");
  }

  moelab::LossTerms compute(const moelab::ObjectiveBatch& batch) override {
    moelab::LossTerms task = task_->compute(batch);
    torch::Tensor r_i = live_routing(batch);  // [B, L*E]
    std::vector<torch::Tensor> per_sample;
    for (std::size_t b = 0; b < batch.sample_keys.size(); ++b) {
      const Neighbours& n = neighbour_entry(batch.sample_keys[b]);
      torch::Tensor r_j = (live_neighbours_ ? recomputed_for(n.keys, batch) : recorded_for(n.keys, batch))
                              .to(r_i.device(), r_i.scalar_type());  // [k, L*E]
      per_sample.push_back((n.weights.to(r_i.device(), r_i.scalar_type()) * (r_i[b].unsqueeze(0) - r_j).pow(2).sum(1)).sum());
    }
    torch::Tensor reg = torch::stack(per_sample).mean();
    double lambda_t = lambda_ * std::min(1.0, static_cast<double>(batch.step + 1) / static_cast<double>(std::max<long long>(lambda_warmup_, 1)));
    moelab::LossTerms out;
    out.total = task.total + lambda_t * reg;
    out.parts = task.parts;
    out.parts.emplace_back("reg", reg);
    out.parts.emplace_back("lambda", torch::tensor(lambda_t));
    return out;
  }

  torch::Tensor live_routing(const moelab::ObjectiveBatch& batch) const {
    std::vector<torch::Tensor> layers;
    for (const auto& logits : batch.routing) {
      torch::Tensor probs = logits.softmax(-1);
      layers.push_back(representation_ == "softmax" ? probs : topk_renorm(probs, batch.top_k));
    }
    return torch::cat(layers, 1);
  }

 private:
  struct Neighbours {
    std::vector<std::string> keys;
    torch::Tensor weights;
  };

  const Neighbours& neighbour_entry(const std::string& key) const {
    auto it = neighbours_.find(key);
    if (it == neighbours_.end())
      throw std::runtime_error("roma: sample '" + key + "' is not in the routing-results file; train on the same data the routing was collected on");
    return it->second;
  }

  // Recorded r_j rows [k, L*E], built once per sample (the file's routing as the representation wants it).
  torch::Tensor recorded_for(const std::vector<std::string>& keys, const moelab::ObjectiveBatch& batch) {
    std::vector<torch::Tensor> rows;
    const long long experts = batch.routing.at(0).size(1);
    for (const auto& key : keys) {
      auto cached = recorded_rows_.find(key);
      if (cached == recorded_rows_.end()) {
        const auto& layers = recorded_routing_.at(key);
        std::vector<torch::Tensor> parts;
        for (int layer : batch.routing_layers) {
          auto it = layers.find(layer);
          if (it == layers.end()) throw std::runtime_error(fmt::format("roma: sample '{}' has no recorded routing for layer {}", key, layer));
          std::vector<double> dense = it->second;
          dense.resize(static_cast<std::size_t>(experts), 0.0);
          torch::Tensor v = torch::tensor(dense, torch::kFloat64);
          parts.push_back(representation_ == "softmax" ? v : topk_renorm(v, batch.top_k));
        }
        cached = recorded_rows_.emplace(key, torch::cat(parts)).first;
      }
      rows.push_back(cached->second);
    }
    return torch::stack(rows);
  }

  // r_j by a no-grad forward of the current model over the neighbours' prompts.
  torch::Tensor recomputed_for(const std::vector<std::string>& keys, const moelab::ObjectiveBatch& batch) const {
    torch::NoGradGuard no_grad;
    moelab::Model& model = context_.model();
    std::vector<moelab::McItem> items(keys.size());
    std::vector<const moelab::McItem*> rows;
    for (std::size_t i = 0; i < keys.size(); ++i) {
      items[i].key = keys[i];
      items[i].prompt_ids = context_.tokenizer().encode(prompts_.at(keys[i]));
      rows.push_back(&items[i]);
    }
    moelab::McBatch mc = moelab::make_batch(rows, std::max<long long>(model.info().pad_token_id, 0));
    moelab::ObjectiveBatch neighbours = moelab::objective_batch(model, mc, batch.routing_layers, batch.step);
    neighbours.top_k = batch.top_k;
    return live_routing(neighbours);
  }

  moelab::RunContext& context_;
  std::shared_ptr<moelab::Objective> task_;
  long long k_;
  double sigma_, lambda_;
  long long lambda_warmup_;
  std::string representation_;
  bool live_neighbours_;
  std::unordered_map<std::string, Neighbours> neighbours_;
  std::unordered_map<std::string, std::string> prompts_;
  std::unordered_map<std::string, std::map<int, std::vector<double>>> recorded_routing_;
  std::unordered_map<std::string, torch::Tensor> recorded_rows_;
};

moelab::Descriptor describe() {
  return moelab::Descriptor("roma", moelab::Kind::objective, "0.1.0", "RoMA: task CE + live routing-manifold regularizer")
      .required("routing_results", moelab::KeyType::path, "routing-results JSON (\"@collect/routing_results.json\": a stage's output)")
      .component("task", moelab::Kind::objective, "", "the task loss (task_ce)")
      .component("embedder", moelab::Kind::embedder, "", "task-embedding model for the neighbours")
      .integer("k", 5, "neighbours per sample, among the successful samples")
      .real("sigma", 0.4, "kernel width of W_ij")
      .real("lambda", 0.8, "weight of the manifold term")
      .integer("lambda_warmup_steps", 2000, "lambda(t) = lambda * min(1, (t+1)/lambda_warmup_steps)")
      .choice("representation", "softmax", {"softmax", "topk_renorm"}, "r: full softmax, or top-k weights renormalized")
      .choice("neighbours", "recorded", {"recorded", "live"}, "r_j: as recorded in routing_results, or recomputed by the current model");
}

}  // namespace

MOELAB_PLUGIN(describe, Roma)
