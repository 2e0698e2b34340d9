// RoE (Repetition of Experts) decoding. Each step runs ONE forward of 1 + K rows per sequence over
// the shared prefix cache (KVCache::replicas, no copy): row 0 routes cleanly and is the only row whose
// keys and values are appended, so exploration never enters the history; rows 1..K select their top-k
// experts from logits + tau_l * g, g ~ Gumbel(0, 1) i.i.d. per sample, token, layer and expert. The
// step's distribution is the mean of the K rows' next-token probabilities; the pick chain picks from it.
// Routing weights come from the perturbed logits by default, as in the public RoE code.
// history = "exact" recomputes the clean row alone after the shared forward (one more forward per step),
// so the cache is bit for bit greedy's even where BLAS rounds a 1-row batch differently from K+1 rows.
// By default tau per layer comes from roe_calibrate's tau.json (tau_mode = "file"): the seed's 0.01 was
// tuned with the noise on the experts' gate_proj, not on the router logits, so it says nothing about this noise.
#include "moelab/moelab.h"
#include "moelab/lib/files.h"
#include "moelab/lib/log.h"
#include "moelab/lib/pickers.h"
#include "moelab/lib/router_noise.h"

#include <fmt/ranges.h>

#include <algorithm>
#include <cctype>

namespace {

enum class TauMode { file, fixed, range, list };
enum class WeightsFrom { perturbed, clean };
enum class History { shared, exact };

struct Settings {
  long long k;
  TauMode tau_mode;
  double tau_middle;
  std::vector<double> tau_range, tau_list;
  std::filesystem::path tau_file;
  WeightsFrom weights_from;
  History history;
  moelab::PickOptions picking;
};

const moelab::Options<Settings>& options() {
  static const auto o =
      moelab::Options<Settings>("roe", moelab::Kind::sampler, "0.3.0", "RoE: K Gumbel-routed samples averaged, clean shared KV cache, then the pick chain")
          .integer("k", &Settings::k, 8, "noisy samples per step")
          .at_least(1)
          .choice("tau_mode", &Settings::tau_mode, TauMode::file,
                  {{"file", TauMode::file}, {"fixed", TauMode::fixed}, {"range", TauMode::range}, {"list", TauMode::list}},
                  "file: the per-layer map in tau_file (roe_calibrate's tau.json); fixed: tau_middle on every MoE layer but the first "
                  "and last; range: uniform in tau_range per layer (seeded), first and last 0; list: tau_list, one per MoE layer")
          .path("tau_file", &Settings::tau_file, "",
                "{\"tau\": {\"<decoder layer>\": tau}} for every MoE layer (tau_mode = file), as roe_calibrate writes it: "
                "\"@<its stage>/tau.json\"")
          .real("tau_middle", &Settings::tau_middle, 0.01,
                "tau of the middle layers (tau_mode = fixed); 0.01 is the seed's, tuned with noise on the wrong tensor")
          .at_least(0)
          .reals("tau_range", &Settings::tau_range, {0.0, 0.01}, "[low, high] (tau_mode = range; the seed's)")
          .at_least(0)
          .reals("tau_list", &Settings::tau_list, {}, "tau per MoE layer (tau_mode = list)")
          .at_least(0)
          .choice("weights_from", &Settings::weights_from, WeightsFrom::perturbed,
                  {{"perturbed", WeightsFrom::perturbed}, {"clean", WeightsFrom::clean}},
                  "routing weights of the selected experts: from the noisy or the clean logits")
          .choice("history", &Settings::history, History::shared, {{"shared", History::shared}, {"exact", History::exact}},
                  "shared: the clean row's keys/values come from the one batched forward; exact: recomputed alone, bit-identical to greedy")
          .include(&Settings::picking, moelab::pick_options());
  return o;
}

class RoeSampler final : public moelab::Sampler {
 public:
  RoeSampler(const moelab::Config& config, moelab::RunContext& context) : RoeSampler(options().read(config), config, context) {}
  RoeSampler(const Settings& settings, const moelab::Config& config, moelab::RunContext& context)
      : Sampler(moelab::pick_chain(settings.picking, config, context.seed_for(config.id()) ^ 0x5A5A5A5Aull)),
        id_(config.id()),
        k_(settings.k),
        tau_mode_(settings.tau_mode),
        tau_middle_(settings.tau_middle),
        tau_range_(settings.tau_range),
        tau_list_(settings.tau_list),
        weights_from_clean_(settings.weights_from == WeightsFrom::clean),
        exact_history_(settings.history == History::exact),
        seed_(context.seed_for(config.id())) {
    if (tau_range_.size() != 2 || tau_range_[0] > tau_range_[1])
      throw std::runtime_error(fmt::format("[{}] tau_range ({}) must be [low, high]", id_, config.where("tau_range")));
    if (tau_mode_ == TauMode::file) file_tau_ = read_tau_file(settings.tau_file, context, config);
    else if (config.where("tau_file") != "default")
      throw std::runtime_error(fmt::format("[{}] tau_file ({}) is read only with tau_mode = \"file\"", id_, config.where("tau_file")));
  }

  // The log of the mean of the K noisy rows' next-token probabilities [B, V], float64.
  torch::Tensor next_scores(moelab::Model& model, const torch::Tensor& tokens, moelab::KVCache& cache, std::int64_t step) override {
    if (tau_.empty()) tau_ = tau_map(model.info());
    const std::int64_t rows = tokens.size(0), replicas = k_ + 1;
    model.set_router_transform({[&](int layer, const torch::Tensor& logits) { return perturb(layer, logits, replicas, step); },
                                weights_from_clean_});
    cache.replicas = replicas;
    torch::Tensor logits;
    try {
      logits = model.forward(tokens.repeat_interleave(replicas, 0), {}, &cache, /*last_only=*/true);
    } catch (...) {
      cache.replicas = 1;
      model.set_router_transform({});
      throw;
    }
    cache.replicas = 1;
    model.set_router_transform({});
    if (exact_history_) {  // drop the shared forward's clean keys and values, then append greedy's own
      cache.drop_newest(tokens.size(1));
      model.forward(tokens, {}, &cache, /*last_only=*/true);
    }
    return logits.select(1, 0).view({rows, replicas, -1}).narrow(1, 1, k_).softmax(-1).mean(1).to(torch::kFloat64).log();
  }

  // tau per decoder layer (0 for dense layers).
  const std::map<int, double>& tau() const { return tau_; }

 private:
  std::map<int, double> tau_map(const moelab::ModelInfo& info) const {
    const auto& moe = info.moe_layers;
    std::map<int, double> tau;
    if (tau_mode_ == TauMode::list) {
      if (tau_list_.size() != moe.size())
        throw std::runtime_error(fmt::format("[{}] tau_list has {} values, but the model has {} MoE layers", id_, tau_list_.size(), moe.size()));
      for (std::size_t i = 0; i < moe.size(); ++i) tau[moe[i]] = tau_list_[i];
    } else if (tau_mode_ == TauMode::file) {
      for (int layer : moe)
        if (!file_tau_.second.count(layer))
          throw std::runtime_error(fmt::format("[{}] {} has no tau for MoE layer {} (the model's MoE layers: {})", id_, file_tau_.first.string(),
                                               layer, fmt::join(moe, ", ")));
      for (const auto& [layer, t] : file_tau_.second)
        if (std::find(moe.begin(), moe.end(), layer) == moe.end())
          throw std::runtime_error(fmt::format("[{}] {} sets tau for layer {}, which is not a MoE layer of the model ({})", id_,
                                               file_tau_.first.string(), layer, fmt::join(moe, ", ")));
      tau = file_tau_.second;
    } else {
      torch::Tensor u = moelab::counter_uniform(seed_, 0, {static_cast<std::int64_t>(moe.size())}, torch::kCPU);
      for (std::size_t i = 0; i < moe.size(); ++i) {
        bool edge = i == 0 || i + 1 == moe.size();  // first and last MoE layers stay deterministic
        double random = tau_range_[0] + (tau_range_[1] - tau_range_[0]) * u[static_cast<std::int64_t>(i)].item<double>();
        tau[moe[i]] = edge ? 0.0 : tau_mode_ == TauMode::fixed ? tau_middle_ : random;
      }
    }
    std::string shown;
    for (const auto& [layer, t] : tau) shown += fmt::format("{}{}: {:.4g}", shown.empty() ? "" : ", ", layer, t);
    moelab::log::info("roe [{}]: K = {}, tau per MoE layer{}: {}", id_, k_, tau_mode_ == TauMode::file ? " from " + file_tau_.first.string() : "",
                      shown);
    return tau;
  }

  // Gumbel noise on rows r % replicas != 0; the counter makes every (step, layer) draw distinct.
  torch::Tensor perturb(int layer, const torch::Tensor& logits, std::int64_t replicas, std::int64_t step) const {
    double tau = tau_.count(layer) ? tau_.at(layer) : 0.0;
    if (tau == 0) return logits;
    const std::int64_t n = logits.size(0), e = logits.size(1);
    std::uint64_t counter = (static_cast<std::uint64_t>(step) * 1024 + static_cast<std::uint64_t>(layer)) * static_cast<std::uint64_t>(n * e);
    torch::Tensor gumbel = moelab::gumbel_noise(seed_, counter, n, e, logits.device());
    torch::Tensor noisy = (torch::arange(n, torch::dtype(torch::kInt64).device(logits.device())) % replicas).ne(0).unsqueeze(1);
    return logits + (tau * gumbel * noisy).to(logits.scalar_type());
  }

  // {"tau": {"<decoder layer>": tau}}: the layer -> tau map, checked against the model in tau_map().
  std::pair<std::filesystem::path, std::map<int, double>> read_tau_file(const std::filesystem::path& given, const moelab::RunContext& context,
                                                                        const moelab::Config& config) const {
    if (given.empty())
      throw std::runtime_error(fmt::format("[{}] tau_mode = \"file\" ({}) needs tau_file: the tau.json of a roe_calibrate stage that runs "
                                           "before this sampler decodes (tau_file = \"@calibrate/tau.json\"), or set tau_mode = \"fixed\" / \"list\"",
                                           id_, config.where("tau_mode")));
    const std::filesystem::path file = context.run_path(given);
    if (!std::filesystem::exists(file))
      throw std::runtime_error(fmt::format("[{}] tau_file = {} ({}) does not exist: it is the tau.json of a roe_calibrate stage, which must run "
                                           "before the stage that decodes with this sampler", id_, file.string(), config.where("tau_file")));
    nlohmann::json j = moelab::read_json(file);
    if (!j.is_object() || !j.contains("tau") || !j["tau"].is_object())
      throw std::runtime_error(fmt::format("[{}] {}: expected {{\"tau\": {{\"<decoder layer>\": tau}}}}", id_, file.string()));
    std::map<int, double> tau;
    for (const auto& [key, value] : j["tau"].items()) {
      const bool index = !key.empty() && key.size() <= 6 && std::all_of(key.begin(), key.end(), [](unsigned char c) { return std::isdigit(c); });
      if (!index) throw std::runtime_error(fmt::format("[{}] {}: tau key \"{}\" is not a decoder layer index", id_, file.string(), key));
      if (!value.is_number() || value.get<double>() < 0)
        throw std::runtime_error(fmt::format("[{}] {}: tau of layer {} is {}, expected a number >= 0", id_, file.string(), key, value.dump()));
      tau[std::stoi(key)] = value.get<double>();
    }
    return {file, tau};
  }

  std::string id_;
  std::int64_t k_;
  TauMode tau_mode_;
  double tau_middle_;
  std::vector<double> tau_range_, tau_list_;
  bool weights_from_clean_, exact_history_;
  std::uint64_t seed_;
  std::pair<std::filesystem::path, std::map<int, double>> file_tau_;  // tau_mode = file: the file and its map
  std::map<int, double> tau_;
};

}  // namespace

MOELAB_PLUGIN(options, RoeSampler)
