// Router-only finetuning on multiple-choice data: only the gates of the target MoE layers train
// (AdamW, linear lr warmup, optional gradient clipping); the objective plugin gives the loss. Logs
// per step the loss terms, lr, and the gradient norm that the objective's "reg" term alone puts on
// the routers. Writes routers.safetensors (a router checkpoint) and per-epoch means.
#include "moelab/moelab.h"

#include <torch/optim/adamw.h>
#include <torch/torch.h>

#include <chrono>
#include <numeric>
#include <random>

namespace {

class Finetune final : public moelab::Stage {
 public:
  Finetune(const moelab::Config& config, moelab::RunContext& context)
      : config_(config), context_(context),
        dataset_(context.make<moelab::Dataset>(config.get_string("dataset"))),
        objective_(context.make<moelab::Objective>(config.get_string("objective"))) {}

  void run(const std::filesystem::path& out_dir, nlohmann::json& summary) override {
    moelab::Model& model = context_.model();
    const moelab::Tokenizer& tokenizer = context_.tokenizer();
    std::vector<int> layers = target_layers(model);
    std::map<int, torch::Tensor> base;
    std::vector<torch::Tensor> params;
    for (auto& [name, w] : model.named_weights()) w.requires_grad_(false);
    for (int l : layers) {
      torch::Tensor gate = model.router_weight(l);
      base[l] = gate.detach().clone();
      params.push_back(gate.requires_grad_(true));
    }
    moelab::log::info("finetune: training the routers of layers {} only ({} parameters)", fmt::join(layers, ", "),
                      std::accumulate(params.begin(), params.end(), 0LL, [](long long a, const torch::Tensor& t) { return a + t.numel(); }));

    moelab::PromptFormat format = moelab::prompt_format(config_);
    std::vector<moelab::McItem> items;
    for (std::size_t i = 0; i < dataset_->size(); ++i)
      items.push_back(moelab::prepare_item(dataset_->at(i), tokenizer, format, config_.get_int("max_len")));
    const double lr = config_.get_real("lr");
    const long long warmup = std::max<long long>(config_.get_int("warmup_steps"), 1), epochs = config_.get_int("epochs");
    const std::size_t batch_size = config_.get_int("batch_size");
    const double clip = config_.get_real("grad_clip");
    const long long reg_grad_every = std::max<long long>(config_.get_int("reg_grad_every"), 1);
    torch::optim::AdamW optimizer(params, torch::optim::AdamWOptions(lr).weight_decay(config_.get_real("weight_decay")));
    std::mt19937_64 rng(context_.seed_for(config_.id()));
    std::vector<std::size_t> order(items.size());
    std::iota(order.begin(), order.end(), 0);
    const long long steps_per_epoch = static_cast<long long>((items.size() + batch_size - 1) / batch_size);
    long long step = 0, tokens = 0;
    const auto started = std::chrono::steady_clock::now();
    nlohmann::json epoch_means = nlohmann::json::array();
    moelab::Progress progress("finetune", steps_per_epoch * epochs, "tokens");
    for (long long epoch = 0; epoch < epochs; ++epoch) {
      std::shuffle(order.begin(), order.end(), rng);
      std::map<std::string, double> sums;
      for (std::size_t start = 0; start < order.size(); start += batch_size, ++step) {
        std::vector<const moelab::McItem*> rows;
        for (std::size_t i = start; i < std::min(order.size(), start + batch_size); ++i) rows.push_back(&items[order[i]]);
        moelab::McBatch batch = moelab::make_batch(rows, std::max<long long>(model.info().pad_token_id, 0));
        double step_lr = lr * std::min(1.0, static_cast<double>(step + 1) / static_cast<double>(warmup));
        for (auto& group : optimizer.param_groups()) static_cast<torch::optim::AdamWOptions&>(group.options()).lr(step_lr);

        moelab::ObjectiveBatch ob = moelab::objective_batch(model, batch, layers, step);
        moelab::LossTerms loss = objective_->compute(ob);
        nlohmann::json row = {{"stage", config_.id()}, {"epoch", epoch}, {"step", step}, {"lr", step_lr}, {"loss", loss.total.item<double>()}};
        for (const auto& [name, value] : loss.parts) {
          row[name] = value.item<double>();
          sums[name] += value.item<double>();
          if (name == "reg" && step % reg_grad_every == 0) row["reg_grad_norm"] = grad_norm(value, params);
        }
        sums["loss"] += loss.total.item<double>();
        optimizer.zero_grad();
        loss.total.backward();
        if (clip > 0) torch::nn::utils::clip_grad_norm_(params, clip);
        optimizer.step();
        context_.record_metrics(row);
        log_step(row, steps_per_epoch * epochs);
        tokens += batch.attention_mask.sum().item<int64_t>();
        progress.advance(batch.attention_mask.sum().item<int64_t>(), fmt::format("epoch {} loss {:.4f}{}", epoch, row["loss"].get<double>(),
                                                                                   row.contains("reg") ? fmt::format(" reg {:.5f}", row["reg"].get<double>()) : ""));
      }
      nlohmann::json means = {{"epoch", epoch}};
      for (const auto& [name, total] : sums) means[name] = total / static_cast<double>(steps_per_epoch);
      moelab::log::info("finetune epoch {}: {}", epoch, means.dump());
      epoch_means.push_back(means);
    }
    progress.finish();
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    for (auto& p : params) p.requires_grad_(false);
    std::filesystem::path checkpoint = out_dir / "routers.safetensors";
    moelab::save_router_checkpoint(checkpoint, model, layers, base,
                                   {{"steps", std::to_string(step)}, {"epochs", std::to_string(epochs)}, {"lr", std::to_string(lr)},
                                    {"objective", config_.get_string("objective")}, {"seed", std::to_string(context_.seed())}});
    nlohmann::json moved = nlohmann::json::object();
    {
      torch::NoGradGuard no_grad;
      for (int l : layers) moved[std::to_string(l)] = ((model.router_weight(l) - base[l]).norm() / base[l].norm()).item<double>();
      // Leave the shared model at its base routers: the evaluate stage applies the checkpoint itself.
      for (int l : layers) model.router_weight(l).copy_(base[l]);
    }
    summary = {{"steps", step}, {"seconds", seconds}, {"steps_per_second", step / seconds}, {"tokens_per_second", tokens / seconds},
               {"epochs", epoch_means}, {"target_layers", layers}, {"relative_router_change", moved},
               {"checkpoint", checkpoint.string()}};
  }

 private:
  std::vector<int> target_layers(const moelab::Model& model) const {
    std::vector<long long> explicit_layers = config_.get_ints("layers");
    const auto& moe = model.info().moe_layers;
    if (!explicit_layers.empty()) return std::vector<int>(explicit_layers.begin(), explicit_layers.end());
    long long last = config_.get_int("last_layers");
    if (last < 1 || last > static_cast<long long>(moe.size()))
      throw std::runtime_error(fmt::format("[{}] last_layers = {} ({}), but the model has {} MoE layers", config_.id(), last,
                                           config_.where("last_layers"), moe.size()));
    return std::vector<int>(moe.end() - last, moe.end());
  }

  // One line per step: every loss term, lambda(t), lr and the routers' gradient norm from "reg" alone.
  // A manifold term without gradient is exactly the public script's failure, so it is shouted.
  void log_step(const nlohmann::json& row, long long total_steps) {
    std::string terms;
    for (const auto& [name, value] : row.items())
      if (name != "stage" && name != "epoch" && name != "step" && value.is_number()) terms += fmt::format(" {} {:.5g}", name, value.get<double>());
    moelab::log::info("finetune step {}/{} epoch {}:{}", row["step"].get<long long>() + 1, total_steps, row["epoch"].get<long long>(), terms);
    if (row.contains("reg_grad_norm") && row.contains("lambda") && row["lambda"].get<double>() > 0 && row["reg_grad_norm"].get<double>() == 0.0)
      moelab::log::warn("!!! step {}: the regularizer has no gradient on the routers (reg {:.5g} is a constant); it is not training anything",
                        row["step"].get<long long>(), row["reg"].get<double>());
  }

  static double grad_norm(const torch::Tensor& term, const std::vector<torch::Tensor>& params) {
    if (!term.requires_grad()) return 0.0;
    auto grads = torch::autograd::grad({term}, params, {}, /*retain_graph=*/true, false, /*allow_unused=*/true);
    double sq = 0;
    for (const auto& g : grads)
      if (g.defined()) sq += g.pow(2).sum().item<double>();
    return std::sqrt(sq);
  }

  moelab::Config config_;
  moelab::RunContext& context_;
  std::shared_ptr<moelab::Dataset> dataset_;
  std::shared_ptr<moelab::Objective> objective_;
};

moelab::Descriptor describe() {
  moelab::Descriptor d("finetune", moelab::Kind::stage, "0.1.0", "router-only finetuning with an objective plugin");
  d.component("dataset", moelab::Kind::dataset, "", "training questions")
      .component("objective", moelab::Kind::objective, "", "the loss (task_ce, roma, ...)")
      .integer("last_layers", 5, "train the routers of the last N MoE layers")
      .integers("layers", {}, "or exactly these decoder layers (overrides last_layers)")
      .integer("epochs", 3, "passes over the data")
      .integer("batch_size", 32, "questions per step")
      .real("lr", 7e-5, "AdamW learning rate after warmup")
      .real("weight_decay", 0.01, "AdamW weight decay")
      .integer("warmup_steps", 2000, "linear lr warmup steps")
      .real("grad_clip", 0.0, "clip the routers' gradient norm to this (0: off)")
      .integer("reg_grad_every", 1, "log the routers' gradient norm from the reg term alone every N steps (it costs a partial backward)");
  return moelab::add_prompt_keys(d);
}

}  // namespace

MOELAB_PLUGIN(describe, Finetune)
