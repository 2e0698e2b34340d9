#include "moelab/lib/router_trainer.h"

#include "moelab/lib/log.h"
#include "moelab/lib/router_checkpoint.h"
#include "moelab/lib/schedule.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <torch/optim/adamw.h>
#include <torch/torch.h>

#include <chrono>
#include <numeric>
#include <random>
#include <stdexcept>

namespace moelab {

namespace fs = std::filesystem;

namespace {

// One rule for every stage: an explicit `layers` list wins, else the last `last_layers` MoE layers (0: all).
std::vector<int> select_layers(const RouterTraining& settings, const ModelInfo& info, const std::string& stage) {
  if (!settings.layers.empty()) return std::vector<int>(settings.layers.begin(), settings.layers.end());
  const auto& moe = info.moe_layers;
  const long long last = settings.last_layers == 0 ? static_cast<long long>(moe.size()) : settings.last_layers;
  if (last > static_cast<long long>(moe.size()))
    throw std::runtime_error(fmt::format("[{}] last_layers = {}, but the model has {} MoE layers", stage, last, moe.size()));
  return std::vector<int>(moe.end() - last, moe.end());
}

// The gradient norm that `term` alone puts on `params` (the graph is kept for the full backward).
double grad_norm(const torch::Tensor& term, const std::vector<torch::Tensor>& params) {
  if (!term.requires_grad()) return 0.0;
  auto grads = torch::autograd::grad({term}, params, {}, /*retain_graph=*/true, false, /*allow_unused=*/true);
  double sq = 0;
  for (const auto& g : grads)
    if (g.defined()) sq += g.pow(2).sum().item<double>();
  return std::sqrt(sq);
}

// One line per step: every loss term, lambda(t), lr and the routers' gradient norm from "reg" alone.
// A regularizer without gradient is exactly the public RoMA script's failure, so it is shouted.
void log_step(const std::string& stage, const nlohmann::json& row, long long total_steps) {
  std::string terms;
  for (const auto& [name, value] : row.items())
    if (name != "stage" && name != "epoch" && name != "step" && value.is_number()) terms += fmt::format(" {} {:.5g}", name, value.get<double>());
  log::info("[{}] step {}/{} epoch {}:{}", stage, row["step"].get<long long>() + 1, total_steps, row["epoch"].get<long long>(), terms);
  if (row.contains("reg_grad_norm") && row.contains("lambda") && row["lambda"].get<double>() > 0 && row["reg_grad_norm"].get<double>() == 0.0)
    log::warn("!!! step {}: the regularizer has no gradient on the routers (reg {:.5g} is a constant); it is not training anything",
              row["step"].get<long long>(), row["reg"].get<double>());
}

// Safetensors metadata holds strings: text as is, everything else as JSON.
std::map<std::string, std::string> as_metadata(const nlohmann::json& hyper) {
  std::map<std::string, std::string> meta;
  for (const auto& [key, value] : hyper.items()) meta[key] = value.is_string() ? value.get<std::string>() : value.dump();
  return meta;
}

}  // namespace

Options<RouterTraining> router_training_options(const RouterTrainingDefaults& d) {
  return Options<RouterTraining>()
      .component("objective", &RouterTraining::objective, Kind::objective, "the loss (an objective plugin)")
      .integers("layers", &RouterTraining::layers, {}, "decoder layers whose routers train (overrides last_layers)")
      .integer("last_layers", &RouterTraining::last_layers, d.last_layers, "train the routers of the last N MoE layers (0: every MoE layer)")
      .at_least(0)
      .integer("epochs", &RouterTraining::epochs, d.epochs, "passes over the data").at_least(1)
      .integer("batch_size", &RouterTraining::batch_size, d.batch_size, "examples per step").at_least(1)
      .real("lr", &RouterTraining::lr, d.lr, "AdamW learning rate after warmup").positive()
      .real("weight_decay", &RouterTraining::weight_decay, d.weight_decay, "AdamW weight decay").at_least(0)
      .integer("warmup_steps", &RouterTraining::warmup_steps, d.warmup_steps, "linear lr warmup steps (0 or 1: none)").at_least(0)
      .real("grad_clip", &RouterTraining::grad_clip, 0.0, "clip the routers' gradient norm to this (0: off)").at_least(0)
      .integer("reg_grad_every", &RouterTraining::reg_grad_every, 1,
               "log the routers' gradient norm from the objective's reg term alone every N steps (it costs a partial backward)")
      .at_least(1);
}

RouterTrainer::RouterTrainer(const RouterTraining& settings, RunContext& context, std::string stage, const ObjectiveNeeds& stage_gives,
                             const std::string& order_stream)
    : settings_(settings), context_(context), stage_(std::move(stage)), order_stream_(order_stream),
      objective_(context.make<Objective>(settings.objective)) {
  require_needs(objective_->needs(), stage_gives, "[" + settings_.objective + "]", "[" + stage_ + "]");
  Model& model = context_.model();
  layers_ = select_layers(settings_, model.info(), stage_);
  for (auto& [name, w] : model.named_weights()) w.requires_grad_(false);
  for (int l : layers_) {
    torch::Tensor gate = model.router_weight(l);
    base_[l] = gate.detach().clone();
    params_.push_back(gate.requires_grad_(true));
  }
  log::info("[{}] training the routers of layers {} only ({} parameters) with objective [{}]", stage_, fmt::join(layers_, ", "),
            std::accumulate(params_.begin(), params_.end(), 0LL, [](long long a, const torch::Tensor& t) { return a + t.numel(); }),
            settings_.objective);
}

RouterTrainer::~RouterTrainer() {
  torch::NoGradGuard no_grad;
  for (auto& p : params_) p.requires_grad_(false);
  for (const auto& [layer, base] : base_) context_.model().router_weight(layer).copy_(base);
}

nlohmann::json RouterTrainer::train(const TrainingData& data, const fs::path& out_dir, const nlohmann::json& stage_settings) {
  Model& model = context_.model();
  const auto batch_size = static_cast<std::size_t>(settings_.batch_size);
  const long long steps_per_epoch = static_cast<long long>((data.size + batch_size - 1) / batch_size);
  const long long total_steps = steps_per_epoch * settings_.epochs;
  const LinearWarmup lr_schedule(settings_.lr, settings_.warmup_steps);
  torch::optim::AdamW optimizer(params_, torch::optim::AdamWOptions(settings_.lr).weight_decay(settings_.weight_decay));
  std::mt19937_64 rng(context_.seed_for(order_stream_));
  std::vector<std::size_t> order(data.size);
  std::iota(order.begin(), order.end(), 0);
  long long step_index = 0, tokens = 0;
  nlohmann::json epoch_means = nlohmann::json::array();
  Progress progress(stage_, total_steps, "tokens");
  const auto started = std::chrono::steady_clock::now();
  for (long long epoch = 0; epoch < settings_.epochs; ++epoch) {
    std::shuffle(order.begin(), order.end(), rng);
    std::map<std::string, double> sums;
    for (std::size_t start = 0; start < order.size(); start += batch_size, ++step_index) {
      std::vector<std::size_t> rows(order.begin() + start, order.begin() + std::min(order.size(), start + batch_size));
      ObjectiveBatch batch = data.batch(rows, objective_->needs());
      const long long batch_tokens = batch.attention_mask.sum().item<int64_t>();
      nlohmann::json row = step(std::move(batch), optimizer, lr_schedule.at(step_index), epoch, step_index, total_steps);
      for (const auto& [name, value] : row.items())
        if (name != "stage" && name != "epoch" && name != "step" && name != "lr" && name != "reg_grad_norm") sums[name] += value.get<double>();
      tokens += batch_tokens;
      progress.advance(batch_tokens, fmt::format("epoch {} loss {:.4f}{}", epoch, row["loss"].get<double>(),
                                                 row.contains("reg") ? fmt::format(" reg {:.5f}", row["reg"].get<double>()) : ""));
    }
    nlohmann::json means = {{"epoch", epoch}};
    for (const auto& [name, total] : sums) means[name] = total / static_cast<double>(steps_per_epoch);
    log::info("[{}] epoch {}: {}", stage_, epoch, means.dump());
    epoch_means.push_back(means);
  }
  progress.finish();
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();

  nlohmann::json hyper = {{"objective", settings_.objective}, {"layers", layers_},          {"epochs", settings_.epochs},
                          {"batch_size", settings_.batch_size}, {"lr", settings_.lr},       {"weight_decay", settings_.weight_decay},
                          {"warmup_steps", settings_.warmup_steps}, {"grad_clip", settings_.grad_clip}, {"steps", step_index},
                          {"seed", context_.seed()}};
  hyper.update(stage_settings);
  const fs::path checkpoint = out_dir / "routers.safetensors";
  save_router_checkpoint(checkpoint, model, layers_, base_, as_metadata(hyper));
  nlohmann::json moved = nlohmann::json::object();
  torch::NoGradGuard no_grad;
  for (int l : layers_) moved[std::to_string(l)] = ((model.router_weight(l) - base_[l]).norm() / base_[l].norm()).item<double>();
  return {{"steps", step_index},         {"seconds", seconds},           {"steps_per_second", step_index / seconds},
          {"tokens_per_second", tokens / seconds}, {"epochs", epoch_means}, {"target_layers", layers_},
          {"relative_router_change", moved},       {"checkpoint", checkpoint.string()}, {"router_finetuning", hyper}};
}

nlohmann::json RouterTrainer::step(ObjectiveBatch batch, torch::optim::Optimizer& optimizer, double lr, long long epoch, long long index,
                                   long long total_steps) {
  for (auto& group : optimizer.param_groups()) static_cast<torch::optim::AdamWOptions&>(group.options()).lr(lr);
  batch.trained_layers = layers_;
  batch.top_k = context_.model().info().top_k;
  batch.step = index;
  LossTerms loss = objective_->compute(batch);
  nlohmann::json row = {{"stage", stage_}, {"epoch", epoch}, {"step", index}, {"lr", lr}, {"loss", loss.total.item<double>()}};
  for (const auto& [name, value] : loss.parts) {
    row[name] = value.item<double>();
    if (name == "reg" && index % settings_.reg_grad_every == 0) row["reg_grad_norm"] = grad_norm(value, params_);
  }
  optimizer.zero_grad();
  loss.total.backward();
  if (settings_.grad_clip > 0) torch::nn::utils::clip_grad_norm_(params_, settings_.grad_clip);
  optimizer.step();
  context_.record_metrics(row);
  log_step(stage_, row, total_steps);
  return row;
}

}  // namespace moelab
