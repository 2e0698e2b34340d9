// Router-only finetuning on raw calibration text (recovery after quantization): next-token loss from an
// objective plugin (lm_ce) on `nsamples` seeded random windows of `seqlen` tokens, AdamW. Only the
// routers train, found through the architecture's router module (Model::router_weight), never by a
// name match: an expert's gate_proj is not a router. Writes routers.safetensors (a router checkpoint,
// for evaluate and perplexity) and, given the quantize stage's checkpoint, recovered.safetensors: the
// packed experts, plan and config plus the finetuned routers and these hyper-parameters.
#include "moelab/moelab.h"

#include <torch/optim/adamw.h>
#include <torch/torch.h>

#include <chrono>
#include <numeric>
#include <random>

namespace {

using torch::Tensor;

class FinetuneLm final : public moelab::Stage {
 public:
  FinetuneLm(const moelab::Config& config, moelab::RunContext& context)
      : config_(config), context_(context), dataset_(context.make<moelab::Dataset>(config.get_string("dataset"))),
        objective_(context.make<moelab::Objective>(config.get_string("objective"))) {}

  void run(const std::filesystem::path& out_dir, nlohmann::json& summary) override {
    moelab::Model& model = context_.model();
    std::vector<int> layers;
    for (long long l : config_.get_ints("layers")) layers.push_back(static_cast<int>(l));
    if (layers.empty()) layers = model.info().moe_layers;
    for (auto& [name, w] : model.named_weights()) w.requires_grad_(false);
    std::map<int, Tensor> base;
    std::vector<Tensor> params;
    for (int l : layers) {
      Tensor gate = model.router_weight(l);
      base[l] = gate.detach().clone();
      params.push_back(gate.requires_grad_(true));
    }
    Tensor windows = moelab::random_windows(moelab::token_stream(*dataset_, context_.tokenizer()), config_.get_int("nsamples"),
                                            config_.get_int("seqlen"), context_.seed_for(config_.id() + ".windows"),
                                            fmt::format("[{}] dataset", config_.id()));
    moelab::log::info("finetune_lm: training the routers of layers {} only, on {} windows of {} tokens", fmt::join(layers, ", "), windows.size(0),
                      windows.size(1));
    const double lr = config_.get_real("lr");
    const long long epochs = config_.get_int("epochs"), batch_size = config_.get_int("batch_size"), warmup = config_.get_int("warmup_steps");
    const double clip = config_.get_real("grad_clip");
    torch::optim::AdamW optimizer(params, torch::optim::AdamWOptions(lr).weight_decay(config_.get_real("weight_decay")));
    std::mt19937_64 rng(context_.seed_for(config_.id() + ".order"));
    std::vector<int64_t> order(windows.size(0));
    std::iota(order.begin(), order.end(), 0);
    const long long steps_per_epoch = (windows.size(0) + batch_size - 1) / batch_size;
    moelab::Progress progress("finetune_lm", steps_per_epoch * epochs, "tokens");
    long long step = 0;
    nlohmann::json epoch_means = nlohmann::json::array();
    const auto started = std::chrono::steady_clock::now();
    for (long long epoch = 0; epoch < epochs; ++epoch) {
      std::shuffle(order.begin(), order.end(), rng);
      double sum = 0;
      for (long long start = 0; start < windows.size(0); start += batch_size, ++step) {
        const long long rows = std::min<long long>(batch_size, windows.size(0) - start);
        Tensor ids = windows.index_select(0, torch::tensor(std::vector<int64_t>(order.begin() + start, order.begin() + start + rows)));
        const double step_lr = warmup > 0 ? lr * std::min(1.0, static_cast<double>(step + 1) / static_cast<double>(warmup)) : lr;
        for (auto& group : optimizer.param_groups()) static_cast<torch::optim::AdamWOptions&>(group.options()).lr(step_lr);
        moelab::ObjectiveBatch batch;
        batch.logits = model.forward(ids, {});
        batch.target_ids = torch::cat({ids.narrow(1, 1, ids.size(1) - 1), torch::full({rows, 1}, -100, torch::kInt64)}, 1);
        batch.routing_layers = layers;
        batch.step = step;
        moelab::LossTerms loss = objective_->compute(batch);
        optimizer.zero_grad();
        loss.total.backward();
        if (clip > 0) torch::nn::utils::clip_grad_norm_(params, clip);
        optimizer.step();
        const double value = loss.total.item<double>();
        sum += value;
        nlohmann::json row = {{"stage", config_.id()}, {"epoch", epoch}, {"step", step}, {"lr", step_lr}, {"loss", value}};
        for (const auto& [name, v] : loss.parts) row[name] = v.item<double>();
        context_.record_metrics(row);
        progress.advance(ids.numel(), fmt::format("epoch {} loss {:.4f}", epoch, value));
      }
      epoch_means.push_back({{"epoch", epoch}, {"loss", sum / static_cast<double>(steps_per_epoch)}});
      moelab::log::info("finetune_lm epoch {}: mean loss {:.5f}", epoch, sum / static_cast<double>(steps_per_epoch));
    }
    progress.finish();
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    for (auto& p : params) p.requires_grad_(false);
    nlohmann::json hyper = {{"lr", lr}, {"weight_decay", config_.get_real("weight_decay")}, {"epochs", epochs}, {"batch_size", batch_size},
                            {"nsamples", config_.get_int("nsamples")}, {"seqlen", config_.get_int("seqlen")}, {"warmup_steps", warmup},
                            {"layers", layers}, {"objective", config_.get_string("objective")}, {"steps", step}, {"seed", context_.seed()}};
    std::map<std::string, std::string> meta;
    for (const auto& [key, value] : hyper.items()) meta[key] = value.dump();
    const std::filesystem::path routers = out_dir / "routers.safetensors";
    moelab::save_router_checkpoint(routers, model, layers, base, meta);
    summary = {{"steps", step}, {"seconds", seconds}, {"epochs", epoch_means}, {"router_finetuning", hyper}, {"routers", routers.string()}};
    const std::string quantized = config_.get_string("quantized");
    if (!quantized.empty()) {
      moelab::QuantizedCheckpoint ckpt = moelab::read_quantized_checkpoint(context_.run_path(quantized));
      for (int l : layers) ckpt.routers[l] = model.router_weight(l).detach();
      ckpt.metadata["router_finetuning"] = hyper;
      moelab::save_quantized_checkpoint(out_dir / "recovered.safetensors", model, ckpt);
      summary["recovered"] = (out_dir / "recovered.safetensors").string();
    }
    nlohmann::json moved = nlohmann::json::object();
    torch::NoGradGuard no_grad;
    for (int l : layers) {
      moved[std::to_string(l)] = ((model.router_weight(l) - base[l]).norm() / base[l].norm()).item<double>();
      model.router_weight(l).copy_(base[l]);  // later stages apply the checkpoint themselves
    }
    summary["relative_router_change"] = moved;
  }

 private:
  moelab::Config config_;
  moelab::RunContext& context_;
  std::shared_ptr<moelab::Dataset> dataset_;
  std::shared_ptr<moelab::Objective> objective_;
};

moelab::Descriptor describe() {
  return moelab::Descriptor("finetune_lm", moelab::Kind::stage, "0.1.0", "router-only finetuning with a next-token loss on calibration text")
      .component("dataset", moelab::Kind::dataset, "", "raw calibration text")
      .component("objective", moelab::Kind::objective, "", "the loss (lm_ce)")
      .integers("layers", {}, "decoder layers whose routers train (default: every MoE layer)")
      .integer("nsamples", 128, "random windows drawn from the text")
      .integer("seqlen", 2048, "tokens per window")
      .integer("epochs", 1, "passes over the windows")
      .integer("batch_size", 1, "windows per step")
      .real("lr", 1e-4, "AdamW learning rate")
      .real("weight_decay", 1e-4, "AdamW weight decay")
      .integer("warmup_steps", 0, "linear lr warmup steps (0: none)")
      .real("grad_clip", 0.0, "clip the routers' gradient norm to this (0: off)")
      .path("quantized", "", "the quantize stage's checkpoint: also write recovered.safetensors (packed experts + finetuned routers)");
}

}  // namespace

MOELAB_PLUGIN(describe, FinetuneLm)
