// Router-only finetuning on multiple-choice data with an objective plugin's loss (task_ce, roma, ...),
// by the shared RouterTrainer: routers.safetensors, per-step metrics and per-epoch means. Its batches
// (left-padded prompts) can give an objective everything it may ask for.
#include "moelab/moelab.h"
#include "moelab/router_trainer.h"

namespace {

struct Settings {
  std::string dataset;
  moelab::RouterTraining training;
  moelab::PromptOptions prompt;
};

const moelab::Options<Settings>& options() {
  static const auto o = moelab::Options<Settings>("finetune", moelab::Kind::stage, "0.2.0", "router-only finetuning with an objective plugin")
                            .component("dataset", &Settings::dataset, moelab::Kind::dataset, "training questions")
                            .include(&Settings::training, moelab::router_training_options({/*last_layers=*/5, /*epochs=*/3, /*batch_size=*/32,
                                                                                            /*warmup_steps=*/2000, /*lr=*/7e-5, /*weight_decay=*/0.01}))
                            .include(&Settings::prompt, moelab::prompt_options());
  return o;
}

moelab::ObjectiveNeeds batches_hold() {
  moelab::ObjectiveNeeds all;
  all.choices = all.token_logits = all.token_loss = all.router_logits = all.hidden_states = true;
  return all;
}

class Finetune final : public moelab::Stage {
 public:
  Finetune(const moelab::Config& config, moelab::RunContext& context)
      : id_(config.id()), settings_(options().read(config)), context_(context), dataset_(context.make<moelab::Dataset>(settings_.dataset)) {}

  void run(const std::filesystem::path& out_dir, nlohmann::json& summary) override {
    // The shuffles' seed stream is the stage's table name.
    moelab::RouterTrainer trainer(settings_.training, context_, id_, batches_hold(), id_);
    std::vector<moelab::McItem> items;
    for (std::size_t i = 0; i < dataset_->size(); ++i)
      items.push_back(moelab::prepare_item(dataset_->at(i), context_.tokenizer(), settings_.prompt, settings_.prompt.max_len));
    const auto pad = std::max<long long>(context_.model().info().pad_token_id, 0);
    auto batch = [&](const std::vector<std::size_t>& rows, const moelab::ObjectiveNeeds& needs) {
      std::vector<const moelab::McItem*> chosen;
      for (std::size_t r : rows) chosen.push_back(&items[r]);
      return moelab::objective_batch(context_.model(), moelab::make_batch(chosen, pad), needs);
    };
    summary = trainer.train({items.size(), batch}, out_dir, nlohmann::json::object());
  }

 private:
  std::string id_;
  Settings settings_;
  moelab::RunContext& context_;
  std::shared_ptr<moelab::Dataset> dataset_;
};

}  // namespace

MOELAB_PLUGIN(options, Finetune)
MOELAB_OBJECTIVE_INPUTS(batches_hold)
