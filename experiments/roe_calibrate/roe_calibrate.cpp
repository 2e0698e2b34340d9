// RoE's tau per MoE layer from the user's model and text: for each layer l and each tau of tau_grid the
// model runs the calibration windows with tau * g (g ~ Gumbel(0, 1), as the roe sampler adds it) on
// layer l's router logits only, so layer l sees the clean model's inputs, and the top-k change rate is
// the share of (token, draw) whose chosen expert set differs from the clean forward's. The same draws
// serve every tau, so for a top-k of the router's scores the rate never falls along the grid (a selection
// bias, as DeepSeek-V3's, can bend it). Each layer gets the tau whose rate is nearest
// target_change_rate; tau.json (the roe sampler's tau_mode = "file") and report.md hold the map and curves.
#include "moelab/moelab.h"
#include "moelab/lib/calibration.h"
#include "moelab/lib/files.h"
#include "moelab/lib/log.h"
#include "moelab/lib/router_noise.h"

#include <cmath>

namespace {

using torch::Tensor;

struct Settings {
  std::string dataset;
  double target_change_rate;
  std::vector<double> tau_grid;
  long long draws, seqlen, max_windows, batch_size;
  bool calibrate_edges, add_special_tokens;
};

const moelab::Options<Settings>& options() {
  static const auto o =
      moelab::Options<Settings>("roe_calibrate", moelab::Kind::stage, "0.1.0",
                                "RoE tau per MoE layer: the grid value whose top-k change rate is nearest a target")
          .component("dataset", &Settings::dataset, moelab::Kind::dataset, "text whose tokens are routed (prompts of the kind RoE will decode)")
          .real("target_change_rate", &Settings::target_change_rate, 0.10, "wanted share of tokens whose noisy top-k set differs from the clean one")
          .within(0, 1)
          .reals("tau_grid", &Settings::tau_grid, {0.0, 0.001, 0.002, 0.003, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 3.0, 5.0},
                 "tau values tried, ascending")
          .at_least(0)
          .integer("draws", &Settings::draws, 4, "Gumbel draws per token and tau").at_least(1)
          .integer("seqlen", &Settings::seqlen, 256, "tokens per window of the text's token stream").at_least(1)
          .integer("max_windows", &Settings::max_windows, 16, "windows routed at most (0: all)").at_least(0)
          .integer("batch_size", &Settings::batch_size, 8, "windows per forward, each repeated `draws` times in it").at_least(1)
          .flag("calibrate_edges", &Settings::calibrate_edges, false,
                "also calibrate the first and last MoE layers (default: tau 0 there, as the seed's maps)")
          .flag("add_special_tokens", &Settings::add_special_tokens, true,
                "the stream starts with tokenizer.json's post_processor tokens, as HF's tokenizer(text) of the joined text");
  return o;
}

// One calibrated layer: the change rate at every grid tau and the pick.
struct Curve {
  int layer = 0;
  bool edge = false;  // kept at tau 0, not measured
  std::vector<double> rate;
  std::size_t pick = 0;
};

// Undoes the router transform however the measurement ends.
struct ClearTransformOnExit {
  moelab::Model& model;
  ~ClearTransformOnExit() { model.set_router_transform({}); }
};

class RoeCalibrate final : public moelab::Stage {
 public:
  RoeCalibrate(const moelab::Config& config, moelab::RunContext& context)
      : config_(config), settings_(options().read(config)), context_(context), dataset_(context.make<moelab::Dataset>(settings_.dataset)) {
    const auto& grid = settings_.tau_grid;
    if (grid.empty()) throw std::runtime_error(fmt::format("[{}] tau_grid ({}) is empty", config.id(), config.where("tau_grid")));
    for (std::size_t i = 1; i < grid.size(); ++i)
      if (grid[i] <= grid[i - 1])
        throw std::runtime_error(fmt::format("[{}] tau_grid ({}) must be strictly ascending: {} follows {}", config.id(), config.where("tau_grid"),
                                             grid[i], grid[i - 1]));
  }

  void run(const std::filesystem::path& out_dir, nlohmann::json& summary) override {
    moelab::Model& model = context_.model();
    Tensor windows = calibration_windows();
    const std::vector<int>& moe = model.info().moe_layers;
    std::vector<Curve> curves;
    const double target = settings_.target_change_rate;
    torch::NoGradGuard no_grad;
    std::vector<std::map<int, Tensor>> clean = clean_choices(model, windows);
    moelab::Progress progress("roe_calibrate", static_cast<long long>(moe.size()), "layers");
    for (std::size_t i = 0; i < moe.size(); ++i) {
      Curve c;
      c.layer = moe[i];
      c.edge = !settings_.calibrate_edges && (i == 0 || i + 1 == moe.size());
      if (!c.edge) {
        c.rate = change_rates(model, windows, clean, moe[i]);
        for (std::size_t g = 1; g < c.rate.size(); ++g)
          if (std::abs(c.rate[g] - target) < std::abs(c.rate[c.pick] - target)) c.pick = g;
        if (c.rate.back() < target)
          moelab::log::warn("[{}] layer {}: the largest tau of tau_grid ({}) changes {:.3f} of the top-k sets, below target_change_rate {}: "
                            "extend tau_grid", config_.id(), c.layer, settings_.tau_grid.back(), c.rate.back(), target);
        context_.record_metrics({{"stage", config_.id()}, {"layer", c.layer}, {"tau_grid", settings_.tau_grid}, {"change_rate", c.rate}});
      }
      curves.push_back(std::move(c));
      progress.advance(1);
    }
    progress.finish();
    write_outputs(out_dir, curves, windows.numel(), model.info(), summary);
  }

 private:
  // Consecutive windows of seqlen tokens from the dataset's token stream (as perplexity cuts them).
  Tensor calibration_windows() {
    Tensor stream = moelab::token_stream(*dataset_, context_.tokenizer(), settings_.add_special_tokens);
    long long count = stream.numel() / settings_.seqlen;
    if (settings_.max_windows > 0) count = std::min(count, settings_.max_windows);
    if (count == 0)
      throw std::runtime_error(fmt::format("[{}] the text has {} tokens, fewer than one window of seqlen = {} ({})", config_.id(), stream.numel(),
                                           settings_.seqlen, config_.where("seqlen")));
    return stream.narrow(0, 0, count * settings_.seqlen).view({count, settings_.seqlen});
  }

  // Batch b: its windows, each repeated `draws` times (the noisy and the clean forwards see the same rows).
  Tensor batch(moelab::Model& model, const Tensor& windows, long long b) const {
    const long long start = b * settings_.batch_size;
    return windows.narrow(0, start, std::min(settings_.batch_size, windows.size(0) - start)).repeat({settings_.draws, 1}).to(model.device());
  }
  long long batches(const Tensor& windows) const { return (windows.size(0) + settings_.batch_size - 1) / settings_.batch_size; }

  // Every MoE layer's chosen experts [N, k] per batch, without noise. The same batches, forwarded again with
  // noise on one layer, give that layer bit for bit the same logits on a deterministic backend.
  std::vector<std::map<int, Tensor>> clean_choices(moelab::Model& model, const Tensor& windows) const {
    std::vector<std::map<int, Tensor>> clean;
    for (long long b = 0; b < batches(windows); ++b) {
      model.forward(batch(model, windows, b), {}, nullptr, /*last_only=*/true);  // only the routing is read
      std::map<int, Tensor> ids;
      for (const auto& trace : model.routing()) ids[trace.layer] = trace.topk_ids;
      clean.push_back(std::move(ids));
    }
    return clean;
  }

  // The change rate of `layer` at every tau of the grid: noise on that layer alone, the same draws (one
  // per token of every repeated row) for every tau.
  std::vector<double> change_rates(moelab::Model& model, const Tensor& windows, const std::vector<std::map<int, Tensor>>& clean, int layer) const {
    const std::uint64_t seed = context_.seed_for(config_.id());
    const long long tokens = windows.numel(), experts = model.info().num_experts;
    const auto noisy_tokens = static_cast<std::uint64_t>(tokens * settings_.draws);  // counter space of one layer
    std::vector<double> rates;
    ClearTransformOnExit clear{model};
    for (double tau : settings_.tau_grid) {
      Tensor changed = torch::zeros({}, torch::dtype(torch::kFloat64).device(model.device()));
      for (long long b = 0; b < batches(windows); ++b) {
        const std::uint64_t first_token = static_cast<std::uint64_t>(b * settings_.batch_size * settings_.draws * settings_.seqlen);
        const std::uint64_t counter = (static_cast<std::uint64_t>(layer) * noisy_tokens + first_token) * static_cast<std::uint64_t>(experts);
        model.set_router_transform({[&](int l, const Tensor& logits) {
                                      if (l != layer || tau == 0) return logits;
                                      Tensor g = moelab::gumbel_noise(seed, counter, logits.size(0), logits.size(1), logits.device());
                                      return logits + (tau * g).to(logits.scalar_type());
                                    },
                                    false});
        model.forward(batch(model, windows, b), {}, nullptr, /*last_only=*/true);  // only the routing is read
        for (const auto& trace : model.routing())
          if (trace.layer == layer) changed += moelab::topk_set_changed(trace.topk_ids, clean[b].at(layer)).sum().to(torch::kFloat64);
      }
      rates.push_back(changed.item<double>() / static_cast<double>(tokens * settings_.draws));
    }
    return rates;
  }

  void write_outputs(const std::filesystem::path& out_dir, const std::vector<Curve>& curves, long long tokens, const moelab::ModelInfo& info,
                     nlohmann::json& summary) const {
    const auto& grid = settings_.tau_grid;
    nlohmann::json tau = nlohmann::json::object(), picked = nlohmann::json::object(), rates = nlohmann::json::object();
    std::string table = "| MoE layer | tau | change rate at tau | change rate along tau_grid |\n| --- | --- | --- | --- |\n", shown;
    for (const Curve& c : curves) {
      const std::string key = std::to_string(c.layer);
      tau[key] = c.edge ? 0.0 : grid[c.pick];
      if (c.edge) {
        table += fmt::format("| {} | 0 | - | first/last MoE layer, kept at 0 |\n", c.layer);
      } else {
        picked[key] = c.rate[c.pick];
        rates[key] = c.rate;
        std::string curve;
        for (std::size_t g = 0; g < grid.size(); ++g) curve += fmt::format("{}{:g}: {:.3f}", g ? ", " : "", grid[g], c.rate[g]);
        table += fmt::format("| {} | {:g} | {:.4f} | {} |\n", c.layer, grid[c.pick], c.rate[c.pick], curve);
      }
      shown += fmt::format("{}{}: {:g}", shown.empty() ? "" : ", ", c.layer, tau[key].get<double>());
    }
    nlohmann::json file = {{"tau", tau},
                           {"target_change_rate", settings_.target_change_rate},
                           {"tau_grid", grid},
                           {"change_rate", rates},
                           {"picked_change_rate", picked},
                           {"tokens", tokens},
                           {"draws", settings_.draws},
                           {"model", {{"model_type", info.model_type}, {"moe_layers", info.moe_layers}, {"num_experts", info.num_experts},
                                      {"top_k", info.top_k}}}};
    moelab::write_file_atomic(out_dir / "tau.json", file.dump(1) + "\n");
    const std::string report = fmt::format(
        "# RoE tau calibration\n\nPer MoE layer, the tau of tau_grid whose top-k change rate (share of tokens x draws whose expert set "
        "under logits + tau * Gumbel differs from the clean set; noise on that layer only) is nearest {} over {} tokens x {} draws.\n\n{}\n"
        "Use it with the roe sampler: tau_mode = \"file\", tau_file = \"@{}/tau.json\".\n",
        settings_.target_change_rate, tokens, settings_.draws, table, config_.id());
    moelab::write_file_atomic(out_dir / "report.md", report);
    moelab::log::info("[{}] tau per MoE layer for a top-k change rate near {}: {} ({})", config_.id(), settings_.target_change_rate, shown,
                      (out_dir / "tau.json").string());
    summary = {{"tau", tau},
               {"picked_change_rate", picked},
               {"target_change_rate", settings_.target_change_rate},
               {"tokens", tokens},
               {"draws", settings_.draws},
               {"tau_json", (out_dir / "tau.json").string()}};
  }

  moelab::Config config_;  // for id() and where() in messages
  Settings settings_;
  moelab::RunContext& context_;
  std::shared_ptr<moelab::Dataset> dataset_;
};

}  // namespace

MOELAB_PLUGIN(options, RoeCalibrate)
