// RoMA: task cross-entropy plus the routing-manifold term
//   L = L_task + lambda(t) * mean_i sum_{j in N(i)} W_ij ||r_i - r_j||^2,   lambda(t) = lambda * min(1, (t+1)/T_warm)
// r_i: sample i's routing at its last prompt token in the target layers, concatenated, computed LIVE
// (batch.routing), so the gradient reaches the routers. N(i): the k nearest successful samples (is_correct)
// by task-embedding cosine, i excluded; W_ij = exp(-(1 - cos_ij)^2 / (2 sigma^2)) normalized over N(i);
// r_j as recorded in the routing-results JSON (neighbours = "recorded"), or recomputed by the current
// model without gradient (neighbours = "live").
#include "moelab/moelab.h"

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
    nlohmann::json results = nlohmann::json::parse(moelab::read_file(path));
    std::vector<std::string> keys, texts;
    for (const auto& [key, entry] : results.items()) {
      keys.push_back(key);
      texts.push_back(entry.at("input_text").get<std::string>());
    }
    std::vector<int64_t> successful;
    for (std::size_t i = 0; i < keys.size(); ++i)
      if (results[keys[i]].value("is_correct", false)) successful.push_back(static_cast<long long>(i));
    if (successful.size() < 2)
      throw std::runtime_error(fmt::format("roma: {} has {} correctly answered samples; the manifold term needs at least 2", path.string(),
                                           successful.size()));
    torch::Tensor e = context.make<moelab::Embedder>(config.get_string("embedder"))->embed(texts);
    moelab::NeighbourGraph graph = moelab::nearest_neighbours(e, successful, k_, sigma_);
    const long long k = graph.index.size(1);
    for (std::size_t i = 0; i < keys.size(); ++i) {
      Neighbours n;
      n.weights = graph.weight[static_cast<long long>(i)];
      for (long long j = 0; j < k; ++j) n.keys.push_back(keys[graph.index[static_cast<long long>(i)][j].item<int64_t>()]);
      neighbours_[keys[i]] = std::move(n);
    }
    for (const auto& key : keys) {
      recorded_routing_[key] = recorded(results[key], key, path.string());
      prompts_[key] = results[key]["input_text"].get<std::string>();
    }
    moelab::log::info("roma: {} samples, {} successful; k={} neighbours, sigma={}, lambda={} (warmup {} steps), r = {}, r_j {}",
                      keys.size(), successful.size(), k, sigma_, lambda_, lambda_warmup_, representation_,
                      live_neighbours_ ? "live" : "recorded");
  }

  moelab::LossTerms compute(const moelab::ObjectiveBatch& batch) override {
    moelab::LossTerms task = task_->compute(batch);
    torch::Tensor r_i = live_routing(batch);  // [B, L*E]
    std::vector<torch::Tensor> per_sample;
    for (std::size_t b = 0; b < batch.sample_keys.size(); ++b) {
      const Neighbours& n = neighbour_entry(batch.sample_keys[b]);
      torch::Tensor r_j = (live_neighbours_ ? recomputed_for(n.keys, batch) : torch::stack(recorded_for(n.keys, batch)))
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

  // Recorded routing of an entry: {layer: dense [E] weights}.
  std::map<int, std::vector<double>> recorded(const nlohmann::json& entry, const std::string& key, const std::string& file) const {
    std::map<int, std::vector<double>> out;
    for (const auto& layer : entry.at("last_token_routing").at("layers")) {
      std::vector<double> dense;
      for (const auto& [name, w] : layer.at("routing_weights").items()) {
        if (name.rfind("expert_", 0) != 0) throw std::runtime_error(fmt::format("{} [\"{}\"]: routing key \"{}\" is not expert_<e>", file, key, name));
        std::size_t e = std::stoul(name.substr(7));
        if (dense.size() <= e) dense.resize(e + 1, 0.0);
        dense[e] = w.get<double>();
      }
      out[layer.at("layer").get<int>()] = dense;
    }
    return out;
  }

  std::vector<torch::Tensor> recorded_for(const std::vector<std::string>& keys, const moelab::ObjectiveBatch& batch) const {
    std::vector<torch::Tensor> rows;
    const long long experts = batch.routing.at(0).size(1);
    for (const auto& key : keys) {
      const auto& layers = recorded_routing_.at(key);
      std::vector<torch::Tensor> parts;
      for (int layer : batch.routing_layers) {
        auto it = layers.find(layer);
        if (it == layers.end()) throw std::runtime_error(fmt::format("roma: sample '{}' has no recorded routing for layer {}", key, layer));
        torch::Tensor v = torch::zeros({experts}, torch::kFloat64);
        for (std::size_t e = 0; e < it->second.size() && static_cast<long long>(e) < experts; ++e) v[static_cast<long long>(e)] = it->second[e];
        parts.push_back(representation_ == "softmax" ? v : topk_renorm(v, batch.top_k));
      }
      rows.push_back(torch::cat(parts));
    }
    return rows;
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
