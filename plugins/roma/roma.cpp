// RoMA: task cross-entropy plus the routing-manifold term
//   L = L_task + lambda(t) * mean_i sum_{j in N(i)} W_ij ||r_i - r_j||^2,   lambda(t) = lambda * min(1, (t+1)/T_warm)
// r_i: sample i's routing at its last prompt token in the trained layers, concatenated, computed LIVE
// from the batch's router logits, so the gradient reaches the routers. N(i): the k nearest successful
// samples (is_correct) by task-embedding cosine, i excluded; W_ij = exp(-(1 - cos_ij)^2 / (2 sigma^2))
// normalized over N(i); r_j as recorded in the routing-results JSON (neighbours = "recorded"), or
// recomputed by the current model without gradient (neighbours = "live").
#include "moelab/moelab.h"
#include "moelab/lib/log.h"
#include "moelab/lib/multiple_choice.h"
#include "moelab/lib/neighbours.h"
#include "moelab/lib/routing_results.h"
#include "moelab/lib/schedule.h"

#include <unordered_map>

namespace {

enum class Representation { softmax, topk_renorm };
enum class NeighbourRouting { recorded, live };

struct Settings {
  std::filesystem::path routing_results;
  std::string task, embedder;
  long long k = 0;
  double sigma = 0, lambda = 0;
  long long lambda_warmup_steps = 0;
  Representation representation = Representation::softmax;
  NeighbourRouting neighbours = NeighbourRouting::recorded;
};

const moelab::Options<Settings>& options() {
  static const auto o =
      moelab::Options<Settings>("roma", moelab::Kind::objective, "0.2.0", "RoMA: task CE + live routing-manifold regularizer")
          .path("routing_results", &Settings::routing_results, moelab::required,
                "routing-results JSON (\"@collect/routing_results.json\": a stage's output)")
          .component("task", &Settings::task, moelab::Kind::objective, "the task loss (task_ce)")
          .component("embedder", &Settings::embedder, moelab::Kind::embedder, "task-embedding model for the neighbours")
          .integer("k", &Settings::k, 5, "neighbours per sample, among the successful samples").at_least(1)
          .real("sigma", &Settings::sigma, 0.4, "kernel width of W_ij").positive()
          .real("lambda", &Settings::lambda, 0.8, "weight of the manifold term").at_least(0)
          .integer("lambda_warmup_steps", &Settings::lambda_warmup_steps, 2000, "lambda(t) = lambda * min(1, (t+1)/lambda_warmup_steps)")
          .at_least(0)
          .choice("representation", &Settings::representation, Representation::softmax,
                  {{"softmax", Representation::softmax}, {"topk_renorm", Representation::topk_renorm}},
                  "r: full softmax, or top-k weights renormalized")
          .choice("neighbours", &Settings::neighbours, NeighbourRouting::recorded,
                  {{"recorded", NeighbourRouting::recorded}, {"live", NeighbourRouting::live}},
                  "r_j: as recorded in routing_results, or recomputed by the current model");
  return o;
}

// Its own reads: the rows' sample keys and the live router logits (the task loss adds its own needs).
constexpr moelab::ObjectiveNeeds kNeeds = moelab::need::choices | moelab::need::router_logits;

torch::Tensor topk_renorm(const torch::Tensor& probs, long long k) {
  auto [weights, ids] = probs.topk(k, -1);
  return torch::zeros_like(probs).scatter(-1, ids, weights / weights.sum(-1, true));
}

class Roma final : public moelab::Objective {
 public:
  Roma(const moelab::Config& config, moelab::RunContext& context)
      : Objective(kNeeds), settings_(options().read(config)), context_(context), task_(use(context, settings_.task)),
        lambda_schedule_(settings_.lambda, settings_.lambda_warmup_steps) {
    std::filesystem::path path = context.run_path(settings_.routing_results);
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
    torch::Tensor e = context.make<moelab::Embedder>(settings_.embedder)->embed(texts);
    moelab::NeighbourGraph graph = moelab::nearest_neighbours(e, successful, settings_.k, settings_.sigma);
    const long long k = graph.index.size(1);
    if (k < settings_.k)
      moelab::log::warn("[{}] k = {} ({}): only {} correctly answered samples can be neighbours (one fewer for each of them), so k = {} is used",
                        config.id(), settings_.k, config.where("k"), successful.size(), k);
    for (std::size_t i = 0; i < results.size(); ++i) {
      Neighbours n;
      n.weights = graph.weight[static_cast<long long>(i)];
      for (long long j = 0; j < k; ++j) n.keys.push_back(results[graph.index[static_cast<long long>(i)][j].item<int64_t>()].key);
      neighbours_[results[i].key] = std::move(n);
      recorded_routing_[results[i].key] = std::move(results[i].routing);
      prompts_[results[i].key] = results[i].input_text;
    }
    moelab::log::info("roma: {} samples, {} successful; k={} neighbours, sigma={}, lambda={} (warmup {} steps), r = {}, r_j {}",
                      results.size(), successful.size(), k, settings_.sigma, settings_.lambda, settings_.lambda_warmup_steps,
                      settings_.representation == Representation::softmax ? "softmax" : "topk_renorm",
                      settings_.neighbours == NeighbourRouting::live ? "live" : "recorded");
  }

  moelab::LossTerms compute(const moelab::ObjectiveBatch& batch) override {
    moelab::LossTerms task = task_->compute(batch);
    torch::Tensor r_i = live_routing(batch);  // [B, L*E]
    std::vector<torch::Tensor> per_sample;
    for (std::size_t b = 0; b < batch.sample_keys.size(); ++b) {
      const Neighbours& n = neighbour_entry(batch.sample_keys[b]);
      torch::Tensor r_j = (settings_.neighbours == NeighbourRouting::live ? recomputed_for(n.keys, batch) : recorded_for(n.keys, batch))
                              .to(r_i.device(), r_i.scalar_type());  // [k, L*E]
      per_sample.push_back((n.weights.to(r_i.device(), r_i.scalar_type()) * (r_i[b].unsqueeze(0) - r_j).pow(2).sum(1)).sum());
    }
    torch::Tensor reg = torch::stack(per_sample).mean();
    const double lambda_t = lambda_schedule_.at(batch.step);
    moelab::LossTerms out;
    out.total = task.total + lambda_t * reg;
    out.parts = task.parts;
    out.parts.emplace_back("reg", reg);
    out.parts.emplace_back("lambda", torch::tensor(lambda_t));
    return out;
  }

 private:
  struct Neighbours {
    std::vector<std::string> keys;
    torch::Tensor weights;
  };

  // r: each row's routing at its last prompt token in the trained layers, concatenated: [B, L*E].
  torch::Tensor live_routing(const moelab::ObjectiveBatch& batch) const {
    const torch::Tensor last = moelab::last_positions(batch.attention_mask);
    std::vector<torch::Tensor> layers;
    for (int layer : batch.trained_layers) {
      torch::Tensor logits = moelab::at_positions(router_logits(batch, layer).view({batch.attention_mask.size(0), batch.attention_mask.size(1), -1}), last);
      torch::Tensor probs = logits.softmax(-1);
      layers.push_back(settings_.representation == Representation::softmax ? probs : topk_renorm(probs, batch.top_k));
    }
    return torch::cat(layers, 1);
  }

  static const torch::Tensor& router_logits(const moelab::ObjectiveBatch& batch, int layer) {
    for (const auto& trace : batch.routers)
      if (trace.layer == layer) return trace.logits;
    throw std::runtime_error(fmt::format("roma: the batch has no router logits of layer {}", layer));
  }

  const Neighbours& neighbour_entry(const std::string& key) const {
    auto it = neighbours_.find(key);
    if (it == neighbours_.end())
      throw std::runtime_error("roma: sample '" + key + "' is not in the routing-results file; train on the same data the routing was collected on");
    return it->second;
  }

  // Recorded r_j rows [k, L*E], built once per sample (the file's routing as the representation wants it).
  torch::Tensor recorded_for(const std::vector<std::string>& keys, const moelab::ObjectiveBatch& batch) {
    std::vector<torch::Tensor> rows;
    const long long experts = batch.routers.at(0).logits.size(1);
    for (const auto& key : keys) {
      auto cached = recorded_rows_.find(key);
      if (cached == recorded_rows_.end()) {
        const auto& layers = recorded_routing_.at(key);
        std::vector<torch::Tensor> parts;
        for (int layer : batch.trained_layers) {
          auto it = layers.find(layer);
          if (it == layers.end()) throw std::runtime_error(fmt::format("roma: sample '{}' has no recorded routing for layer {}", key, layer));
          std::vector<double> dense = it->second;
          dense.resize(static_cast<std::size_t>(experts), 0.0);
          torch::Tensor v = torch::tensor(dense, torch::kFloat64);
          parts.push_back(settings_.representation == Representation::softmax ? v : topk_renorm(v, batch.top_k));
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
    moelab::ObjectiveBatch neighbours = moelab::objective_batch(model, mc, moelab::need::router_logits);
    neighbours.trained_layers = batch.trained_layers;
    neighbours.top_k = batch.top_k;
    return live_routing(neighbours);
  }

  Settings settings_;
  moelab::RunContext& context_;
  std::shared_ptr<moelab::Objective> task_;
  moelab::LinearWarmup lambda_schedule_;
  std::unordered_map<std::string, Neighbours> neighbours_;
  std::unordered_map<std::string, std::string> prompts_;
  std::unordered_map<std::string, std::map<int, std::vector<double>>> recorded_routing_;
  std::unordered_map<std::string, torch::Tensor> recorded_rows_;
};

}  // namespace

MOELAB_OBJECTIVE_PLUGIN(options, kNeeds, Roma)
