// Router-only finetuning on multiple-choice data with an objective plugin's loss (task_ce, roma, ...),
// by the shared RouterTrainer: routers.safetensors, per-step metrics and per-epoch means, the NaN guard
// and resume/ after an interrupt. Its batches (left-padded prompts) can give an objective everything it
// may ask for.
#include "moelab/moelab.h"
#include "moelab/lib/multiple_choice.h"
#include "moelab/lib/router_trainer.h"

namespace {

struct Settings {
  std::string dataset;
  moelab::RouterTraining training;
  moelab::PromptOptions prompt;
};

const moelab::Options<Settings>& options() {
  static const auto o = moelab::Options<Settings>("finetune", moelab::Kind::stage, "0.3.0", "router-only finetuning with an objective plugin")
                            .component("dataset", &Settings::dataset, moelab::Kind::dataset, "training questions")
                            .include(&Settings::training, moelab::router_training_options({/*last_layers=*/5, /*epochs=*/3, /*batch_size=*/32,
                                                                                            /*warmup_steps=*/2000, /*lr=*/7e-5, /*weight_decay=*/0.01}))
                            .include(&Settings::prompt, moelab::prompt_options());
  return o;
}

// Left-padded prompts: they can give an objective everything it may ask for.
constexpr moelab::ObjectiveNeeds kBatchesHold = moelab::need::choices | moelab::need::token_logits | moelab::need::token_loss |
                                                moelab::need::router_logits | moelab::need::hidden_states;

class Finetune final : public moelab::Stage {
 public:
  Finetune(const moelab::Config& config, moelab::RunContext& context) : id_(config.id()), settings_(options().read(config)), context_(context) {
    std::shared_ptr<moelab::Dataset> questions = context.make<moelab::Dataset>(settings_.dataset);
    for (std::size_t i = 0; i < questions->size(); ++i)
      items_.push_back(moelab::prepare_item(questions->at(i), context.tokenizer(), settings_.prompt, settings_.prompt.max_len));
  }

  void run(const std::filesystem::path& out_dir, nlohmann::json& summary) override {
    // The shuffles' seed stream is the stage's table name.
    moelab::RouterTrainer trainer(settings_.training, context_, id_, kBatchesHold, id_);
    const auto pad = std::max<long long>(context_.model().info().pad_token_id, 0);
    auto batch = [&](const std::vector<std::size_t>& rows, const moelab::ObjectiveNeeds& needs) {
      std::vector<const moelab::McItem*> chosen;
      for (std::size_t r : rows) chosen.push_back(&items_[r]);
      return moelab::objective_batch(context_.model(), moelab::make_batch(chosen, pad), needs);
    };
    summary = trainer.train({items_.size(), batch}, out_dir, nlohmann::json::object());
  }

 private:
  std::string id_;
  Settings settings_;
  moelab::RunContext& context_;
  std::vector<moelab::McItem> items_;
};

}  // namespace

MOELAB_PLUGIN(options, Finetune)
MOELAB_OBJECTIVE_INPUTS(kBatchesHold)
